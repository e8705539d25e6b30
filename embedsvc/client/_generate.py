"""Write ``_async.py`` from ``_sync.py``: the asyncio client is generated, never edited.

As qdrant-client does, the blocking client is the one source of the endpoint logic and a
token rewrite turns it into the async one, so the two cannot drift and each has honest types
(``AsyncClient.search`` is a coroutine function returning a ``SearchResult`` when awaited).
The rewrite works on Python tokens, not text, so names inside strings and comments are left
alone, and it keeps every other character as it was::

    python embedsvc/client/_generate.py          # rewrite _async.py
    python embedsvc/client/_generate.py --check  # exit 1 if _async.py is stale

Rules: every method of the class except those in ``SYNC_METHODS`` becomes ``async def``; a
call to one of them, to ``self._http.request`` / ``self._http.close`` or to ``time.sleep``
is awaited; the names in ``RENAMES`` are renamed (also inside ```backquotes``` in
docstrings); the module docstring is replaced and a do-not-edit header is added.
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_sync.py"
TARGET = HERE / "_async.py"

HEADER = "# Generated from embedsvc/client/_sync.py by embedsvc/client/_generate.py: do not edit.\n"
DOCSTRING = ('"""The asyncio client: the same methods as :class:`~embedsvc.client.Client`, each a '
             'coroutine.\n\nGenerated from ``_sync.py``; edit that file and run '
             '``python embedsvc/client/_generate.py``.\n"""')

RENAMES = {
    "Client": "AsyncClient",
    "BaseTransport": "AsyncBaseTransport",
    "close": "aclose",
    "__enter__": "__aenter__",
    "__exit__": "__aexit__",
    "time": "asyncio",
}
SYNC_METHODS = {"__init__", "__repr__"}
_ANY_ASYNC = object()  # stands for "a method that became async" in AWAITED
AWAITED = [
    ("self", ".", _ANY_ASYNC, "("),
    ("self", ".", "_http", ".", {"request", "close"}, "("),
    ("time", ".", "sleep", "("),
]
_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT,
         tokenize.ENDMARKER}


class GenerationError(ValueError):
    """The sync source uses something the rewrite rules cannot translate faithfully."""


def _matches(tokens: list[tokenize.TokenInfo], i: int, pattern: tuple, async_names: set[str]) -> bool:
    if i + len(pattern) > len(tokens):
        return False
    for token, want in zip(tokens[i:i + len(pattern)], pattern):
        if want is _ANY_ASYNC:
            ok = token.type == tokenize.NAME and token.string in async_names
        elif isinstance(want, set):
            ok = token.string in want
        else:
            ok = token.string == want
        if not ok:
            return False
    return True


def _async_names(tokens: list[tokenize.TokenInfo]) -> set[str]:
    names = {b.string for a, b in zip(tokens, tokens[1:]) if a.string == "def"}
    return names - SYNC_METHODS


def _check(tokens: list[tokenize.TokenInfo]) -> None:
    for i, token in enumerate(tokens):
        if token.type == tokenize.NAME and token.string == "asyncio":
            raise GenerationError(f"line {token.start[0]}: the sync source must not use asyncio")
        if token.type == tokenize.NAME and token.string == "time":
            before, after = tokens[i - 1].string, [t.string for t in tokens[i + 1:i + 3]]
            if before != "import" and after != [".", "sleep"]:
                raise GenerationError(f"line {token.start[0]}: only time.sleep can be translated")


def _rename_in_string(text: str) -> str:
    return re.sub(r"`(\w+)`", lambda m: f"`{RENAMES.get(m.group(1), m.group(1))}`", text)


def _rewrite(tokens: list[tokenize.TokenInfo], i: int, async_names: set[str]) -> str:
    """The new text of significant token ``i``."""
    token = tokens[i]
    if i == 0 and token.type == tokenize.STRING:
        return DOCSTRING
    if token.type == tokenize.STRING:
        return _rename_in_string(token.string)
    text = RENAMES.get(token.string, token.string) if token.type == tokenize.NAME else token.string
    if token.string == "def" and i + 1 < len(tokens) and tokens[i + 1].string in async_names:
        text = "async def"
    if any(_matches(tokens, i, pattern, async_names) for pattern in AWAITED):
        if i == 0 or tokens[i - 1].string != ".":
            text = "await " + text
    return text


def generate(source: str) -> str:
    """The async module for the sync module ``source``; the same input gives the same output."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in _SKIP]
    _check(tokens)
    async_names = _async_names(tokens)
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    out = source
    for i in reversed(range(len(tokens))):  # from the end, so earlier offsets stay valid
        new = _rewrite(tokens, i, async_names)
        if new != tokens[i].string:
            (srow, scol), (erow, ecol) = tokens[i].start, tokens[i].end
            out = out[:starts[srow - 1] + scol] + new + out[starts[erow - 1] + ecol:]
    return HEADER + out


def main(argv: list[str]) -> int:
    expected = generate(SOURCE.read_text(encoding="utf-8"))
    if "--check" in argv:
        stale = not TARGET.exists() or TARGET.read_text(encoding="utf-8") != expected
        if stale:
            sys.stderr.write(f"{TARGET} is stale: run python embedsvc/client/_generate.py\n")
        return int(stale)
    TARGET.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
