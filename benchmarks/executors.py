"""SciFact text build with each foreach executor: docs/s of local, process and ray side by side.

Each executor builds the same first N SciFact documents into a fresh home (so nothing is
reused), in turn; the table gives docs/s and the ratio against the in-process executor.

    python benchmarks/executors.py [--docs 1000] [--workers 2] [--executors local,process]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedsvc.settings import Settings  # noqa: E402
from indexing.foreach import make_executor  # noqa: E402
from indexing.job import BuildJob, BuildOptions  # noqa: E402


def subset(n: int, folder: Path) -> Path:
    path = folder / f"scifact-{n}.jsonl"
    with gzip.open(REPO / "data" / "scifact" / "corpus.jsonl.gz", "rt") as src, open(path, "w") as out:
        out.writelines(itertools.islice(src, n))
    return path


def run(name: str, workers: int, corpus: Path, root: Path) -> tuple[float, int]:
    settings = Settings(home=root / name)
    executor = make_executor(name, workers)
    try:
        start = time.perf_counter()
        report = BuildJob(settings, "scifact", corpus, BuildOptions(), executor=executor).run()
        return time.perf_counter() - start, report.documents
    finally:
        executor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executors", default="local,process")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="embedsvc-exec-"))
    corpus = subset(args.docs, root)
    print(f"machine: {platform.machine()}, python {platform.python_version()}, "
          f"{args.docs} SciFact docs, workers {args.workers}")
    rows = []
    for name in args.executors.split(","):
        seconds, docs = run(name, args.workers, corpus, root)
        rows.append((name, seconds, docs / seconds))
    base = rows[0][2]
    print("\n| executor | seconds | docs/s | vs " + rows[0][0] + " |\n|---|---|---|---|")
    for name, seconds, rate in rows:
        print(f"| {name} | {seconds:.1f} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
