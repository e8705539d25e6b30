"""What every command of the CLI shares: the consoles, settings and how errors are shown."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.text import Text

from embedsvc.settings import Backend, Settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the top-level callback made (with ``--home`` applied)."""
    return ctx.find_root().obj


BackendChoice = StrEnum("BackendChoice", {name: name for name in get_args(Backend)})
BackendOption = Annotated[BackendChoice | None, typer.Option(
    help="How the model runs: torch, torch-bf16, onnx, onnx-int8 (EMBEDSVC_BACKEND).",
    show_default=False)]


def with_backend(settings: Settings, backend: BackendChoice | None) -> Settings:
    """The settings with ``--backend`` applied, when it was given."""
    return settings.model_copy(update={"backend": backend.value}) if backend else settings


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a user's error (never read as markup: messages hold brackets) and exit 1."""
    err_console.print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one red line and exit code 1, not a traceback."""
    from embedsvc.collection import CollectionError
    from embedsvc.encoders import ModelError
    from embedsvc.search.dense import IndexLoadError
    from embedsvc.search.searcher import SearchConflict
    from indexing.errors import BuildError
    from indexing.sources import SourceError
    from indexing.vector_sources import VectorSourceError

    try:
        yield
    except (BuildError, SourceError, VectorSourceError, ModelError, CollectionError,
            SearchConflict, IndexLoadError, FileNotFoundError, ValueError) as exc:  # LayoutError too
        raise fail(str(exc)) from exc
