"""``embedsvc collections create|list|show|delete``: collections that live through the API.

They act on the home folder directly (a running server sees the change on its next
request); what they accept is the API's own request model, so both refuse the same input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from embedsvc.cli_common import console, fail, settings_of, user_errors

collections_app = typer.Typer(help="Create, list, show and delete collections.",
                              no_args_is_help=True)


def _service(ctx: typer.Context) -> Any:
    from embedsvc.service import Service

    return Service(settings_of(ctx))


@collections_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="1-64 letters, digits, '_', '-' or '.'.")],
    model: Annotated[str | None, typer.Option(help="Model of its vectors (default: EMBEDSVC_DEFAULT_MODEL).")] = None,
    indexed_field: Annotated[list[str] | None, typer.Option(
        "--indexed-field", "-f", help="Metadata field to index for fast filters (repeatable).")] = None,
    dimension: Annotated[int | None, typer.Option(
        help="Without --model: a collection of vectors made elsewhere, of this dimension.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's response shape.")] = False,
) -> None:
    """Create an empty collection; documents written to it through the API are embedded
    with its model (or, with --dimension alone, carry their own vectors)."""
    from pydantic import ValidationError

    from embedsvc.api.schemas import CreateCollectionRequest

    try:
        request = CreateCollectionRequest(name=name, model=model, indexed_fields=indexed_field or [],
                                          dimension=dimension)
    except ValidationError as exc:
        raise fail(str(exc)) from exc
    with user_errors():
        info = _service(ctx).create(request.name, request.model, request.indexed_fields,
                                    load_model=False, dimension=request.dimension)
    _show(info, as_json)


@collections_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the names as JSON.")] = False,
) -> None:
    """The collections under the home folder, with their documents and versions."""
    service = _service(ctx)
    names = service.collections()
    if as_json:
        console.print_json(json.dumps({"collections": names}))
        return
    table = Table(title=f"collections in {service.settings.collections_dir}")
    for column in ("name", "documents", "version", "model", "fresh", "pending"):
        table.add_column(column)
    for name in names:
        info = service.describe(name)
        table.add_row(name, str(info["documents"]), str(info["index_version"] or "-"),
                      str(info["model"] or "-"), str(info["fresh_vectors"]), str(info["pending"]))
    console.print(table)


@collections_app.command("show")
def show(
    ctx: typer.Context,
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's response shape.")] = False,
) -> None:
    """Documents, vectors indexed, fresh, deleted and pending, and the version served."""
    with user_errors():
        info = _service(ctx).describe(name)
    _show(info, as_json)


@collections_app.command("upsert")
def upsert(
    ctx: typer.Context,
    name: str,
    path: Annotated[Path, typer.Argument(help="JSONL, one document a line: id, text, title?, metadata?, "
                                              "vector? (as PUT /v1/collections/NAME/documents takes them).")],
    batch: Annotated[int | None, typer.Option(
        min=1, help="Documents per write transaction (default and most: EMBEDSVC_MAX_BATCH_DOCUMENTS).")] = None,
) -> None:
    """Insert or replace documents from a file, vectors made elsewhere included. The whole file
    is checked before anything is written; a running server sees the documents at once."""
    from embedsvc.api.checks import documents_to_write
    from embedsvc.api.errors import ApiError

    bodies = _read_documents(path)
    service = _service(ctx)
    batch = min(batch or service.settings.max_batch_documents, service.settings.max_batch_documents)
    totals = {"created": 0, "updated": 0, "unchanged": 0}
    with user_errors():
        try:
            checked = [documents_to_write(service, name, bodies[i:i + batch], service.settings)
                       for i in range(0, len(bodies), batch)]
        except ApiError as exc:
            raise fail(exc.message) from exc
        for docs in checked:
            result = service.upsert(name, docs)
            for key in totals:
                totals[key] += getattr(result, key)
    console.print(f"[green]{name}[/]: {len(bodies)} documents written ({totals['created']} new, "
                  f"{totals['updated']} changed, {totals['unchanged']} unchanged)", highlight=False)


def _read_documents(path: Path) -> list[Any]:
    """Every line of a JSONL file as the API's document, or one error naming the line."""
    from pydantic import ValidationError

    from embedsvc.api.schemas import DocumentIn

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {exc}") from exc
    docs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            docs.append(DocumentIn.model_validate_json(line))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "the line"
            raise fail(f"{path}:{number}: {where}: {problem['msg']}") from exc
    if not docs:
        raise fail(f"{path} holds no documents")
    return docs


@collections_app.command("delete")
def delete(
    ctx: typer.Context,
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a collection and every file of it."""
    if not yes and not typer.confirm(f"delete collection '{name}' and all its files?"):
        raise typer.Exit(1)
    with user_errors():
        _service(ctx).delete(name)
    console.print(f"[green]deleted {name}[/]")


def _show(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(info))
        return
    table = Table(title=f"collection {info['name']}", show_header=False)
    for key, value in info.items():
        if key == "index" and value:
            value = ", ".join(f"{k}={v}" for k, v in value.items() if k in (
                "version", "layout", "count", "recall_at_10", "search_params", "shards"))
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
