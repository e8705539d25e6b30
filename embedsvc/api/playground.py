"""The search playground: a page at ``/`` to search and inspect collections from a browser.

It is static HTML, CSS and plain JavaScript shipped in the package (no build step, nothing
loaded from another origin, so it works offline like ``/docs``). The page calls the public
API with the key the user types, so it shows nothing a caller could not already read; the
files themselves are open, as ``/docs`` is.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import FileResponse

STATIC = Path(__file__).parent / "static" / "playground"
PAGE_URL = "/"
ASSETS_URL = "/playground"

# The page builds every element from DOM nodes, never from HTML strings; this policy is the
# second line of defence against document text holding markup: no inline script or style,
# nothing fetched from or sent to another origin, no framing.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and style under ``/playground``.

    A plain route and a mount below ``/playground``, not a mount at ``/``: a mount at the root
    would match every path and answer the API's unknown paths and wrong methods itself."""
    app.mount(ASSETS_URL, StaticFiles(directory=STATIC), name="playground-assets")

    async def page(_: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        })

    app.router.add_route(PAGE_URL, page, methods=["GET"], include_in_schema=False)
