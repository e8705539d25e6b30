"""The model registry: trained models as numbered, immutable versions under the home folder.

``<models_dir>/<name>/<version>/`` holds a sentence-transformers model (so
``embedsvc.encoders.resolve_model("name/version", models_dir)`` loads it), a ``card.json``
(base model, data fingerprint, arguments, metrics, library versions) and a README model card
written from it. ``<models_dir>/<name>/promoted.json`` names the version that is served by
default. A version folder appears complete or not at all (copied beside, then renamed), and a
version is never rewritten except for its card's metrics and the plot.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedsvc.files import atomic_write, read_json, write_json

CARD = "card.json"
README = "README.md"
PROMOTED = "promoted.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A model name or version is invalid or unknown; the message says which exist."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: where it is and what its card says."""

    name: str
    version: str
    path: Path
    card: dict[str, Any]

    @property
    def ref(self) -> str:
        """``name/version``: what ``resolve_model`` and the CLI accept."""
        return f"{self.name}/{self.version}"


def check_name(name: str) -> str:
    """Return ``name`` if it can name a model folder, else raise :class:`RegistryError`."""
    if not _NAME.match(name):
        raise RegistryError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )
    return name


def _versions_of(models_dir: Path, name: str) -> list[str]:
    folder = models_dir / name
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def _load(models_dir: Path, name: str, version: str) -> ModelVersion:
    path = models_dir / name / version
    card_path = path / CARD
    if not card_path.is_file():
        known = ", ".join(_versions_of(models_dir, name)) or "none"
        raise RegistryError(f"no model version {name}/{version} (versions of {name}: {known})")
    return ModelVersion(name, version, path, read_json(card_path))


def register_model(
    models_dir: Path, name: str, model_dir: Path, card: dict[str, Any]
) -> ModelVersion:
    """Copy a trained model into the registry as the next version of ``name``.

    Args:
        models_dir: the registry root (``settings.models_dir``).
        name: model name (a folder name).
        model_dir: a sentence-transformers model folder (with ``modules.json``).
        card: what to record: base model, data, arguments, metrics...

    Returns:
        The new version.

    Raises:
        RegistryError: invalid name, or ``model_dir`` is not a sentence-transformers folder.
    """
    check_name(name)
    if not (model_dir / "modules.json").is_file():
        raise RegistryError(f"{model_dir} is not a sentence-transformers model (no modules.json)")
    parent = models_dir / name
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".register-"))
    try:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        return _publish(models_dir, name, tmp, card)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(models_dir: Path, name: str, tmp: Path, card: dict[str, Any]) -> ModelVersion:
    # Another process may take the number we picked; then take the next one.
    for _ in range(100):
        versions = _versions_of(models_dir, name)
        number = int(versions[-1][1:]) + 1 if versions else 1
        version = f"v{number:04d}"
        full = {**card, "name": name, "version": version, "registered_at": _now()}
        write_json(tmp / CARD, full)
        _write_readme(tmp / README, full)
        try:
            tmp.rename(models_dir / name / version)
        except OSError:
            continue
        return ModelVersion(name, version, models_dir / name / version, full)
    raise RegistryError(f"could not allocate a version number for {name}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def update_card(version: ModelVersion, **fields: Any) -> ModelVersion:
    """Merge ``fields`` into a version's card (e.g. metrics measured after registration).

    Args:
        version: the registered version.
        **fields: top-level card fields to set.

    Returns:
        The version with its new card.
    """
    card = {**version.card, **fields}
    write_json(version.path / CARD, card)
    _write_readme(version.path / README, card)
    return ModelVersion(version.name, version.version, version.path, card)


def list_versions(models_dir: Path, name: str | None = None) -> list[ModelVersion]:
    """Every registered version, by name then version number.

    Args:
        models_dir: the registry root.
        name: only this model's versions.

    Returns:
        The versions (folders without a card, such as unpacked bundled models, are skipped).
    """
    if not models_dir.is_dir():
        return []
    names = (
        [check_name(name)]
        if name
        else sorted(p.name for p in models_dir.iterdir() if p.is_dir() and _NAME.match(p.name))
    )
    return [
        _load(models_dir, n, v)
        for n in names
        for v in _versions_of(models_dir, n)
        if (models_dir / n / v / CARD).is_file()
    ]


def promoted_version(models_dir: Path, name: str) -> str | None:
    """The promoted version of ``name`` (e.g. ``v0003``), or None if none was promoted."""
    path = models_dir / check_name(name) / PROMOTED
    return read_json(path)["version"] if path.is_file() else None


def get_version(models_dir: Path, ref: str) -> ModelVersion:
    """Look up ``name/version``; a bare ``name`` means its promoted version, else its latest.

    Raises:
        RegistryError: the name or version does not exist.
    """
    name, _, version = ref.partition("/")
    check_name(name)
    if not version:
        version = promoted_version(models_dir, name) or ""
    if not version:
        versions = _versions_of(models_dir, name)
        if not versions:
            raise RegistryError(f"no model named {name!r} in {models_dir}")
        version = versions[-1]
    return _load(models_dir, name, version)


def promote(models_dir: Path, ref: str) -> ModelVersion:
    """Make ``name/version`` the promoted version of its name.

    Args:
        models_dir: the registry root.
        ref: ``name/version``.

    Returns:
        The promoted version.
    """
    if "/" not in ref:
        raise RegistryError(f"promote needs name/version, got {ref!r}")
    target = get_version(models_dir, ref)
    previous = promoted_version(models_dir, target.name)
    write_json(
        models_dir / target.name / PROMOTED,
        {"version": target.version, "previous": previous, "promoted_at": _now()},
    )
    return target


def _write_readme(path: Path, card: dict[str, Any]) -> None:
    with atomic_write(path) as fh:
        fh.write(render_card(card).encode())


def render_card(card: dict[str, Any]) -> str:
    """A human-readable model card (Markdown) from a card dict."""
    base = card.get("base_model", {})
    data = card.get("data", {})
    lines = [
        f"# {card.get('name', '?')}/{card.get('version', '?')}",
        "",
        "Fine-tuned by `embedsvc train` (sentence-transformers, MultipleNegativesRankingLoss "
        "with in-batch negatives gathered across ranks).",
        "",
        "## Base model",
        f"- id: `{base.get('id', '?')}`",
        f"- weights sha256: `{base.get('sha256', '?')}`",
        "",
        "## Training data",
        *[f"- {k}: `{v}`" for k, v in data.items()],
        "",
        "## Arguments",
        *[f"- {k}: `{v}`" for k, v in card.get("args", {}).items()],
    ]
    for title, key in (("Metrics", "metrics"), ("Base model metrics", "base_metrics")):
        block = card.get(key)
        if block:
            lines += ["", f"## {title} ({block.get('dataset', '?')}, {block.get('split', '?')})"]
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in block.get("metrics", {}).items()]
    if card.get("train"):
        lines += ["", "## Run", *[f"- {k}: `{v}`" for k, v in card["train"].items()]]
    return "\n".join(lines) + "\n"
