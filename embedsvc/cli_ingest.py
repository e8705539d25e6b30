"""``embedsvc ingest COLLECTION --from redis://HOST:PORT/STREAM``: a stream into live upserts.

The options come from :class:`embedsvc.ingest.options.IngestOptions`; the consumer is
:mod:`embedsvc.ingest.redis_stream` (imported inside the command: redis-py and the
collection code cost nothing until an ingest runs).
"""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from embedsvc.cli_common import console, err_console, fail, settings_of, user_errors
from embedsvc.ingest.options import IngestOptions
from embedsvc.options import typer_command

_ARGS = [
    inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter("collection", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        str, typer.Argument(help="Collection to write into (it must exist).")]),
]


@typer_command(IngestOptions, leading=_ARGS)
def ingest_command(options: IngestOptions, ctx: typer.Context, collection: str) -> None:
    """Consume a Redis stream into live upserts of a collection.

    Each entry holds one field, 'doc': a JSON document {"id", "text", "title"?, "metadata"?}.

    A batch is one write, acknowledged after it commits (at least once, idempotent by id).

    Malformed entries go to the dead-letter stream (STREAM:dead) with their reason."""
    from embedsvc.ingest.redis_stream import IngestError, ingest, summary_line

    settings = settings_of(ctx)
    with user_errors(), err_console.status(f"ingesting into {collection}…") as status:
        try:
            final = ingest(settings, collection, options,
                           on_progress=lambda s: status.update(f"{collection}: {summary_line(s)}"))
        except IngestError as exc:
            raise fail(str(exc)) from exc
    console.print(f"[green]{collection}[/]: {summary_line(final)}", highlight=False)
