"""embedsvc in process (project venv): the Searcher the CLI and the API use, on a home
folder that ``embedsvc index build`` filled. Indexing itself is the CLI, timed by the
orchestrator; this script only queries.

Ranks and times ``--mode`` (dense: the comparable one), then ranks and times hybrid
(what ``auto`` answers with by default) as a side note.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from common import COLLECTION, measure, read_queries, setup_logging

log = logging.getLogger("benchmarks.peers.embedsvc")


def main() -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--mode", default="dense")
    p.add_argument("--also", default="hybrid", help="a second mode to rank and time ('' for none)")
    args = p.parse_args()

    from embedsvc.service import local_searcher
    from embedsvc.settings import Settings

    searcher = local_searcher(Settings(home=args.home), COLLECTION)

    def search_in(mode: str):
        def search(text: str, k: int) -> list[str]:
            result = searcher.search(text, k, mode)
            if result.mode != mode:
                raise RuntimeError(f"asked for {mode}, got {result.mode} ({result.fallback})")
            return [hit.id for hit in result.hits]
        return search

    queries = read_queries(args.queries)
    out = {"mode": args.mode, **measure(search_in(args.mode), queries)}
    if args.also:
        out["also"] = {"mode": args.also, **measure(search_in(args.also), queries)}
    args.result.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
