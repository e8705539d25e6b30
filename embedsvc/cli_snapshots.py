"""``embedsvc snapshot`` and ``embedsvc restore``: a collection to one file and back.

Both act on the home folder directly, so they work while a server serves and writes to the
collection (the snapshot is one committed state; see :mod:`embedsvc.snapshots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from embedsvc.cli_common import console, settings_of, user_errors


def _summary(manifest: dict[str, Any]) -> str:
    size = sum(f["bytes"] for f in manifest["files"].values())
    version = manifest["current_version"]
    return (f"{manifest['documents']} documents, index version {version if version is not None else '-'}, "
            f"write #{manifest['seq']}, {len(manifest['files'])} files, {size / 1e6:.1f} MB")


def snapshot_command(
    ctx: typer.Context,
    collection: Annotated[str, typer.Argument(help="The collection to copy.")],
    path: Annotated[Path, typer.Argument(help="Where to write it: PATH.tar (one file) or a new folder.")],
) -> None:
    """Write a consistent snapshot of a collection, even while it serves and takes writes."""
    from embedsvc.snapshots import take_snapshot

    with user_errors():
        manifest = take_snapshot(settings_of(ctx).collections_dir, collection, path)
    console.print(Text(f"snapshot of {collection} written to {path}: {_summary(manifest)}"))


def restore_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A snapshot: PATH.tar or its folder.")],
    as_name: Annotated[str | None, typer.Option(
        "--as", help="Restore under this name (default: the collection it was taken from).")] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace an existing collection of that name.")] = False,
) -> None:
    """Verify a snapshot (checksums, schema version, SQLite integrity) and restore it."""
    from embedsvc.snapshots import restore_snapshot

    with user_errors():
        manifest = restore_snapshot(settings_of(ctx).collections_dir, path, as_name, replace)
    console.print(Text(f"restored {manifest['restored_as']} from {path}: {_summary(manifest)}"))
