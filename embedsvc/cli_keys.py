"""``embedsvc keys create|list|revoke``: the API keys a server accepts.

Keys are written to the key file as hashes (``EMBEDSVC_API_KEYS_FILE``, by default
``<home>/api-keys``); a running server picks up a change within a second.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from embedsvc.cli_common import console, err_console, settings_of, user_errors

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


class ScopeChoice(StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


@keys_app.command("create")
def create(
    ctx: typer.Context,
    scope: Annotated[ScopeChoice, typer.Option(
        help="read: search, get, embed; write: also documents; admin: also collections, jobs.")],
    name: Annotated[str, typer.Option(help="Who the key is for; shown in the access log.")],
) -> None:
    """Make a new key and print it once: only its SHA-256 is stored."""
    from embedsvc.keys import Scope, create_key

    settings = settings_of(ctx)
    with user_errors():
        key = create_key(settings, Scope[scope.value], name)
    err_console.print(f"key '{name}' ({scope.value}) added to {settings.keys_path}; "
                      "it is shown only now:")
    console.print(key, markup=False, highlight=False)


@keys_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Names, scopes and hash prefixes of the keys (never the keys: they are not stored)."""
    from embedsvc.keys import read_keys

    with user_errors():
        keys = read_keys(settings_of(ctx))
    rows = [{"name": k.name, "scope": k.scope.name, "sha256": k.sha256[:12]} for k in keys]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} API keys")
    for column in ("name", "scope", "sha256"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@keys_app.command("revoke")
def revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Remove a key; servers refuse it within a second."""
    from embedsvc.keys import revoke_key

    with user_errors():
        revoke_key(settings_of(ctx), name)
    err_console.print(f"key '{name}' revoked")
