"""One typed model per operation; the CLI, subprocess arguments and pipeline stages derive from it.

A default written in two places drifts (``max_seq_length`` was 256 on the CLI and ``None``
for the ranks). So each job (``index build``, ``train``) has one pydantic model, and this
module turns it into:

- typer parameters (:func:`typer_command`): one ``--option`` per field, the help from the
  field's description, the choices from its ``Literal`` type, the default from the model;
- ``argparse`` arguments and the matching argv (:func:`add_arguments`, :func:`to_argv`) for
  the processes a job launches (the torchrun ranks), whose own defaults are the model's;
- a checked instance from a flat mapping (:func:`from_flat`): a pipeline stage's table or the
  CLI's values, where an unknown or mistyped key is an error that names it.

Nested models (a training job's launch settings, say) are flattened: their fields are
options of the same command, so a user never spells the nesting. What a field needs beyond
its type goes in ``json_schema_extra`` (see :class:`CliMeta`).
"""

from __future__ import annotations

import argparse
import difflib
import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypedDict, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)


class CliMeta(TypedDict, total=False):
    """Keys a field's ``json_schema_extra`` may hold for the CLI.

    Attributes:
        internal: the field is set by code, never by users: it is no CLI option, and a
            pipeline table or other flat input naming it is refused.
        argument: the field is a positional argument, not an ``--option``.
        flags: the option's spellings, e.g. ``["--input", "-i"]`` or ``["--eval/--no-eval"]``.
        cli_type: the type typer parses (e.g. ``str`` for a byte size written ``4GB``).
    """

    internal: bool
    argument: bool
    flags: list[str]
    cli_type: Any


class OptionsError(ValueError):
    """Unknown or invalid options; the message names each key and what is wrong with it.

    Attributes:
        problems: (key as the user spells it, what is wrong), one per problem.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {what}" for key, what in self.problems))


# --- the flat view of a (nested) model ---------------------------------------------------------
def flat_fields(model: type[BaseModel]) -> dict[str, tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf field by its flat name, with its path through nested models."""
    out: dict[str, tuple[tuple[str, ...], FieldInfo]] = {}
    for name, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is None:
            out[name] = ((name,), info)
            continue
        for key, (path, leaf) in flat_fields(nested).items():
            if key in out:
                raise TypeError(f"{model.__name__}: option {key!r} is defined twice")
            out[key] = ((name, *path), leaf)
    return out


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def from_flat(
    model: type[M],
    values: Mapping[str, Any],
    spell: Callable[[str], str] = str,
    exclude: Sequence[str] = (),
) -> M:
    """A checked instance of ``model`` from flat keys (nested fields by their own names).

    Args:
        model: the operation's options model.
        values: flat key → value; keys left out take the model's defaults.
        spell: how a key is written in messages (``--max-seq-length`` on the CLI).
        exclude: keys this caller may not set (they are reported as unknown).

    Raises:
        OptionsError: a key the model does not have (with the closest known one), or values
            that do not validate (each named, with what was given).
    """
    fields = {k: v for k, v in flat_fields(model).items()
              if k not in exclude and not _meta(v[1]).get("internal")}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OptionsError([(spell(key), _unknown(key, fields, spell)) for key in unknown])
    nested: dict[str, Any] = {}
    for key, value in values.items():
        path = fields[key][0]
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    try:
        return model.model_validate(nested)
    except ValidationError as exc:
        raise OptionsError(describe(exc, spell)) from exc


def to_flat(options: BaseModel) -> dict[str, Any]:
    """The instance's values by flat key (the inverse of :func:`from_flat`)."""
    out = {}
    for key, (path, _) in flat_fields(type(options)).items():
        value: Any = options
        for part in path:
            value = getattr(value, part)
        out[key] = value
    return out


def _unknown(key: str, fields: Mapping[str, Any], spell: Callable[[str], str]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"; did you mean {spell(close[0])}?" if close else ""
    return f"unknown option{hint}"


def describe(exc: ValidationError, spell: Callable[[str], str] = str) -> list[tuple[str, str]]:
    """(key as the user wrote it, the problem and the value given) per invalid value."""
    problems = []
    for error in exc.errors():
        names = [str(part) for part in error["loc"] if isinstance(part, str)]
        given = "" if error["type"] == "missing" else f" (got {error.get('input')!r})"
        problems.append((spell(names[-1]) if names else "options", f"{error['msg']}{given}"))
    return problems


def option_flag(key: str) -> str:
    """``max_seq_length`` → ``--max-seq-length``: how a CLI user spells a key."""
    return "--" + key.replace("_", "-")


# --- typer --------------------------------------------------------------------------------------
def _meta(info: FieldInfo) -> CliMeta:
    extra = info.json_schema_extra
    return typing.cast(CliMeta, extra if isinstance(extra, dict) else {})


def _literal_values(annotation: Any) -> tuple[Any, ...] | None:
    """The choices of ``Literal[...]`` or ``Literal[...] | None``."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def _is_optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


@functools.cache
def _choice_enum(name: str, values: tuple[str, ...]) -> type[enum.StrEnum]:
    return enum.StrEnum(name, {value: value for value in values})


def _cli_annotation(key: str, info: FieldInfo) -> tuple[Any, Any]:
    """(type typer parses, its default) for a field: ``Literal`` choices become an enum."""
    meta = _meta(info)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if "cli_type" in meta:
        return meta["cli_type"], default
    choices = _literal_values(info.annotation)
    if choices is None:
        return info.annotation, default
    choice = _choice_enum(f"{key.title().replace('_', '')}Choice", tuple(map(str, choices)))
    typed = choice | None if _is_optional(info.annotation) else choice
    return typed, choice(default) if default is not None else None


def typer_parameters(model: type[BaseModel], exclude: Sequence[str] = ()) -> list[inspect.Parameter]:
    """The model's fields as typer parameters, in the model's order."""
    import typer

    params = []
    for key, (_, info) in flat_fields(model).items():
        meta = _meta(info)
        if key in exclude or meta.get("internal"):
            continue
        annotation, default = _cli_annotation(key, info)
        help_text = info.description
        if meta.get("argument"):
            marker = typer.Argument(help=help_text, show_default=False)
            default = inspect.Parameter.empty if info.is_required() else default
        else:
            marker = typer.Option(*_flags(key, info), help=help_text)
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[annotation, marker]))
    return params


def _flags(key: str, info: FieldInfo) -> list[str]:
    meta = _meta(info)
    if "flags" in meta:
        return list(meta["flags"])
    flag = option_flag(key)
    if info.annotation is bool and info.default is True:
        return [f"{flag}/--no-{flag[2:]}"]
    return [flag]


def typer_command(
    model: type[BaseModel],
    leading: Sequence[inspect.Parameter] = (),
    exclude: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``body(options, **leading)`` a typer command whose options are the model's fields.

    Args:
        model: the operation's options model (nested models are flattened).
        leading: parameters that are not options of the model (``ctx``, a collection name),
            handed to the body by name.
        exclude: fields left off this command (the body fills them in).

    Returns:
        A decorator; the command it makes validates through the model, so a bad value is a
        usage error (exit 2) naming the option, with the same rules as every other caller.
    """
    import typer

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        params = [*leading, *typer_parameters(model, exclude)]
        names = {p.name for p in leading}

        @functools.wraps(body)
        def command(**kwargs: Any) -> Any:
            given = {k: _plain(v) for k, v in kwargs.items() if k not in names}
            try:
                options = from_flat(model, given, option_flag)
            except OptionsError as exc:
                raise typer.BadParameter(str(exc)) from None
            return body(options, **{k: kwargs[k] for k in names})

        command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


# --- argparse, for the processes a job starts ---------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One ``--option`` per field, defaulting to None so that the model's default applies."""
    for key, (_, info) in flat_fields(model).items():
        if info.annotation is bool:
            parser.add_argument(option_flag(key), action=argparse.BooleanOptionalAction,
                                default=None, help=info.description)
        else:
            parser.add_argument(option_flag(key), default=None, help=info.description)


def from_namespace(model: type[M], namespace: argparse.Namespace) -> M:
    """The model from arguments added by :func:`add_arguments` (those given, the rest default)."""
    given = {key: getattr(namespace, key) for key in flat_fields(model)
             if getattr(namespace, key, None) is not None}
    return from_flat(model, given, option_flag)


def to_argv(options: BaseModel) -> list[str]:
    """The instance as the arguments :func:`add_arguments` reads back into an equal instance."""
    fields = flat_fields(type(options))
    argv: list[str] = []
    for key, value in to_flat(options).items():
        flag = option_flag(key)
        if value is None:
            if fields[key][1].get_default(call_default_factory=True) is not None:
                raise OptionsError([(flag, "None cannot be passed on a command line")])
            continue
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    return argv
