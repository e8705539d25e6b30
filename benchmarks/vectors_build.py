"""Benchmark: ``embedsvc index build --vectors`` (the real CLI path) against plain FAISS.

What a user runs with embeddings made elsewhere::

    embedsvc --home H index build bench --vectors V.npy --ids V.ids.txt \\
        --index auto --memory-budget 2GB

goes through everything the product does: model resolution (its dimension, read from its
configuration), the input's sha256 (beside a check of every row: dimension, NaN/inf, zero
and non-unit rows), one SQLite document row and one passage row per vector (stored while
FAISS trains), the FAISS build reading the rows in place with recall tuning, the versioned
atomic switch. This script runs exactly that command as a subprocess, and beside it the
same layout (the manifest's factory string and search parameters) built and searched by a
plain FAISS script, and prints the ratios.

Steps per corpus size, each in its own process, one at a time (the machine may be shared):

1. ``generate``: N clustered synthetic 384-d unit vectors streamed into ONE ``.npy`` file
   with ``np.lib.format.open_memmap`` (one block in memory), an ids file (one id a line),
   1000 held-out queries and their exact top-10 (row numbers).
2. ``cli``: the command above in a fresh ``--home`` (the bundled model unpacked into it
   first, untimed); wall time, CPU time and peak RSS from ``os.wait4``; stderr is read line
   by line and timestamped on arrival, so the phases (start-up with hash and check, ids
   stored beside training, add/tune/write, exit) can be told apart; RSS is also sampled
   from ``/proc`` so each phase gets its own peak.
3. ``embedsvc index info bench --json``: the manifest (layout, search_params, recall@10).
4. ``plain``: load the ``.npy`` whole, ``index_factory`` with the same string, train on a
   random sample of the manifest's ``train_size``, ``add`` in one call, write.
5. ``search``: ``DenseIndex.load(version_dir)`` and the plain index with the same search
   parameters, the held-out queries in batches of 100, alternating rounds, best of 3;
   recall@10 of both against the exact top-10 (embedsvc's passage ids mapped back to rows
   through SQLite).
6. ``base``: a process importing what the build command imports (its fixed base RSS).

Usage::

    python benchmarks/vectors_build.py --sizes 200000,1000000 --json /tmp/vb.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from faiss_build import synthetic, time_alternating  # noqa: E402

from embedsvc.store import PASSAGE_BITS  # noqa: E402 (a vector id is doc_rowid << 16 | ordinal)

log = logging.getLogger("benchmarks.vectors_build")

DIM = 384
K = 10
BLOCK = 50_000  # rows generated (and held in memory) at a time
EMBEDSVC = str(Path(sys.executable).with_name("embedsvc"))


# --- measuring a child process ---------------------------------------------------------------
class Child:
    """Run a command, timestamp its stderr lines and sample its RSS until it exits."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.cmd = cmd
        self.env = {**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[tuple[float, str]] = []
        # (seconds since start, RSS bytes, anonymous RSS bytes, CPU seconds so far): mapped
        # file pages (the memory-mapped input, chunk files) count in RSS and ru_maxrss but
        # are page cache, so the anonymous part is sampled too
        self.samples: list[tuple[float, int, int, float]] = []

    def _rss(self, pid: int) -> tuple[int, int, float] | None:
        fields = {}
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmRSS:", "RssAnon:")):
                        fields[line.split(":")[0]] = int(line.split()[1]) * 1024
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return (fields["VmRSS"], fields["RssAnon"], cpu) if len(fields) == 2 else None

    def run(self) -> dict[str, Any]:
        load_before = os.getloadavg()
        started = time.perf_counter()
        proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        out: list[str] = []

        def read_err() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.lines.append((time.perf_counter() - started, line.rstrip("\n")))

        def read_out() -> None:
            assert proc.stdout is not None
            out.append(proc.stdout.read())

        readers = [threading.Thread(target=read_err, daemon=True),
                   threading.Thread(target=read_out, daemon=True)]
        for t in readers:
            t.start()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                rss = self._rss(proc.pid)
                if rss is not None:
                    self.samples.append((time.perf_counter() - started, *rss))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        for t in readers:
            t.join()
        sampler.join()
        if proc.returncode != 0:
            tail = "\n".join(line for _, line in self.lines[-40:])
            raise SystemExit(f"{' '.join(self.cmd)} failed ({proc.returncode}):\n{tail}")
        return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss": usage.ru_maxrss * 1024, "stdout": "".join(out),
                "load_before": load_before[0]}

    def first(self, pattern: str) -> float | None:
        """Arrival time of the first stderr line matching ``pattern``."""
        rx = re.compile(pattern)
        return next((t for t, line in self.lines if rx.search(line)), None)

    def peak_between(self, start: float, stop: float, anon: bool = False) -> int:
        """Largest sampled RSS (or anonymous RSS) between two times."""
        return max((a if anon else rss for t, rss, a, _ in self.samples if start <= t <= stop),
                   default=0)

    def cpu_between(self, start: float, stop: float) -> float:
        """CPU seconds the process used between two times (from the samples around them)."""
        inside = [cpu for t, _, _, cpu in self.samples if start <= t <= stop]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def _py(code: str, *args: str) -> dict[str, Any]:
    """Run this script's phase ``code`` in a fresh interpreter; its last stdout line is JSON."""
    result = Child([sys.executable, __file__, "--phase", code, *args]).run()
    return {**json.loads(result["stdout"].strip().splitlines()[-1]),
            "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"],
            "peak_rss": result["peak_rss"], "load": result["load_before"]}


# --- phases run in child processes -----------------------------------------------------------
def phase_generate(work: Path, n: int, queries: int, seed: int) -> dict[str, Any]:
    """One .npy file streamed block by block, its ids file, queries and exact top-10 rows."""
    import faiss

    clusters = max(16, n // 1000)
    q = synthetic(queries, DIM, clusters, seed, part=10**6)
    heap = faiss.ResultHeap(queries, K, keep_max=True)
    matrix = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float32,
                                       shape=(n, DIM))
    with open(work / "vectors.ids.txt", "w", encoding="utf-8") as ids:
        for number, start in enumerate(range(0, n, BLOCK)):
            rows = min(BLOCK, n - start)
            x = synthetic(rows, DIM, clusters, seed, part=number)
            matrix[start:start + rows] = x
            ids.write("".join(f"doc{i}\n" for i in range(start, start + rows)))
            scores, local = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, local + start)
    matrix.flush()
    del matrix
    heap.finalize()
    np.save(work / "queries.npy", q)
    np.save(work / "truth.npy", heap.I)
    return {"file_bytes": (work / "vectors.npy").stat().st_size}


def phase_plain(work: Path, factory: str, train_size: int, seed: int) -> dict[str, Any]:
    """The plain FAISS script: whole matrix in memory, train on a sample, one add, write."""
    import faiss

    clock, cpu_clock = time.perf_counter(), time.process_time()
    laps: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        laps[name], cpu[name] = now - clock, cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    xb = np.load(work / "vectors.npy")
    lap("load")
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        index.train(xb[np.sort(rng.choice(len(xb), train_size, replace=False))])
    lap("train")
    index.add(xb)
    lap("add")
    faiss.write_index(index, str(work / "plain.faiss"))
    lap("write")
    return {"phase_seconds": laps, "phase_cpu": cpu,
            "index_bytes": (work / "plain.faiss").stat().st_size}


def phase_search(work: Path, version_dir: str, db: str, rounds: int = 3) -> dict[str, Any]:
    """Both indexes, same parameters, alternating rounds; queries/s and recall@10."""
    import faiss

    from embedsvc.search.dense import DenseIndex

    served = DenseIndex.load(Path(version_dir))
    params = served.manifest.get("search_params") or ""
    plain = faiss.read_index(str(work / "plain.faiss"))
    if params:
        faiss.ParameterSpace().set_index_parameters(plain, params)
    # embedsvc returns passage ids (doc rowid << 16); map them back to row numbers
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    pairs = np.array([(r, int(i[3:])) for r, i in conn.execute("SELECT rowid, id FROM documents")],
                     dtype=np.int64)
    conn.close()
    row_of = np.full(int(pairs[:, 0].max()) + 1, -1, dtype=np.int64)
    row_of[pairs[:, 0]] = pairs[:, 1]

    def to_rows(ids: np.ndarray) -> np.ndarray:
        return np.where(ids >= 0, row_of[np.maximum(ids, 0) >> PASSAGE_BITS], -1)

    q, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    paths = {"embedsvc": lambda b: to_rows(served.search(b, K)[1]),
             "plain": lambda b: plain.search(b, K)[1]}
    return time_alternating(paths, q, truth, rounds)


PHASES = {"generate": phase_generate, "plain": phase_plain, "search": phase_search}


# --- the driver ------------------------------------------------------------------------------
def cli_build(work: Path, budget: str, embedsvc: list[str]) -> dict[str, Any]:
    """``embedsvc index build --vectors`` in a fresh home, with its phases split out.

    The bundled model is unpacked into the home first, untimed: the first command in a new
    home does that once (about 0.8s), no build after it does.
    """
    home = work / "home"
    Child([sys.executable, "-c", "from pathlib import Path; from embedsvc.encoders import "
           f"unpack_default_model; unpack_default_model(Path({str(home / 'models')!r}))"]).run()
    child = Child([*embedsvc, "--home", str(home), "index", "build", "bench",
                   "--vectors", str(work / "vectors.npy"), "--ids", str(work / "vectors.ids.txt"),
                   "--index", "auto", "--memory-budget", budget])
    result = child.run()
    info = Child([*embedsvc, "--home", str(home), "index", "info", "bench", "--json"]).run()
    data = json.loads(info["stdout"])
    m = data["manifest"]
    end = result["seconds"]
    # landmarks in the CLI's log, in the order the job runs
    marks = [0.0,
             child.first(r"expected layout for about") or 0.0,  # input hashed and checked
             child.first(r"adding \d+ vectors") or end,  # ids stored, index trained
             child.first(r"built .* vectors, \d+ shard") or end,
             end]
    stored = re.search(r"stored (\d+) documents in ([\d.]+)s", "\n".join(line for _, line in child.lines))
    phases = dict(zip(CLI_PHASES, (b - a for a, b in zip(marks, marks[1:])), strict=True))
    log.info("CLI phases: %s", {k: round(v, 1) for k, v in phases.items()})
    return {**{k: result[k] for k in ("seconds", "cpu_seconds", "peak_rss", "load_before")},
            "phases": phases, "store_seconds": float(stored.group(2)) if stored else None,
            "phase_peaks": {k: child.peak_between(a, b) for k, a, b in zip(CLI_PHASES, marks, marks[1:])},
            "anon_peaks": {k: child.peak_between(a, b, anon=True)
                           for k, a, b in zip(CLI_PHASES, marks, marks[1:])},
            "phase_cpu": {k: child.cpu_between(a, b) for k, a, b in zip(CLI_PHASES, marks, marks[1:])},
            "manifest": m, "documents": data["documents"], "passages": data["passages"],
            "version_dir": str(home / "collections" / "bench" / "versions"
                               / f"{data['current_version']:04d}"),
            "db": str(home / "collections" / "bench" / "collection.db"),
            "log": [f"{t:8.2f}s {line}" for t, line in child.lines
                    if "docs/s" not in line and line.strip()]}


# The CLI's phases, between the landmarks of cli_build.
CLI_PHASES = ("start-up, hash ∥ check input", "store ids ∥ train, validate", "add, tune, write",
          "switch, clean-up, exit")


def base_rss() -> int:
    """Peak RSS of a process that only imports what the build command imports."""
    return Child([sys.executable, "-c", "import embedsvc.cli, indexing.job, indexing.build"]
                 ).run()["peak_rss"]


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"vectors-build-{n}-", dir=args.tmp))
    data = Path(args.reuse) / str(n) if args.reuse else work  # where the vectors live
    try:
        if (data / "truth.npy").is_file():
            log.info("n=%d: reusing the vectors in %s", n, data)
            gen = {"file_bytes": (data / "vectors.npy").stat().st_size}
        else:
            data.mkdir(parents=True, exist_ok=True)
            log.info("n=%d: generating %s", n, data / "vectors.npy")
            gen = _py("generate", "--work", str(data), "--phase-args",
                      json.dumps({"n": n, "queries": args.queries, "seed": args.seed}))
        if data != work:
            for name in ("vectors.npy", "vectors.ids.txt", "queries.npy", "truth.npy"):
                (work / name).symlink_to(data / name)
        log.info("n=%d: embedsvc index build --vectors (load %.1f)", n, os.getloadavg()[0])
        emb = cli_build(work, args.budget, args.embedsvc.split())
        m = emb["manifest"]
        log.info("n=%d: %s, %s, recall@10 %.3f in %.1fs; plain FAISS build", n, m["layout"],
                 m["search_params"] or "exact", m["recall_at_10"], emb["seconds"])
        plain = _py("plain", "--work", str(work), "--phase-args",
                    json.dumps({"factory": m["layout"], "train_size": m["train_size"],
                                "seed": args.seed}))
        log.info("n=%d: plain build %.1fs; searching both", n, plain["seconds"])
        search = _py("search", "--work", str(work), "--phase-args",
                     json.dumps({"version_dir": emb["version_dir"], "db": emb["db"]}))
        base = base_rss()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"n": n, "generate": gen, "embedsvc": emb, "plain": plain, "search": search,
            "base": base}


def _mb(x: float) -> str:
    """Bytes as decimal megabytes."""
    return f"{x / 1e6:,.0f}MB"


INDEX_PHASES = ("validate", "train", "add", "tune", "write")
PLAIN_PHASES = ("load", "train", "add", "write")


def _laps(seconds: dict[str, float], order: tuple[str, ...]) -> str:
    return "/".join(f"{seconds[k]:.1f}" for k in order)


def _cli(r: dict[str, Any], phase: str) -> str:
    e = r["embedsvc"]
    return f"{e['phases'][phase]:.1f} ({e['phase_cpu'][phase]:.1f})"


def _index_seconds(r: dict[str, Any]) -> float:
    """The index phases (train, add, tune, write) as the manifest records them."""
    laps = r["embedsvc"]["manifest"]["phase_seconds"]
    return sum(laps[k] for k in INDEX_PHASES[1:])


ROWS: list[tuple[str, Any]] = [
    ("layout (from the manifest)", lambda r: f"`{r['embedsvc']['manifest']['layout']}`"),
    ("search params", lambda r: r["embedsvc"]["manifest"]["search_params"] or "exact"),
    ("**embedsvc CLI build**, wall s (CPU s)", lambda r: "**{:.1f}** ({:.1f})".format(
        r["embedsvc"]["seconds"], r["embedsvc"]["cpu_seconds"])),
    *[(f"… {phase}", lambda r, phase=phase: _cli(r, phase)) for phase in CLI_PHASES],
    ("…… of which storing the ids in SQLite (beside training)",
     lambda r: f"{r['embedsvc']['store_seconds']:.1f}" if r["embedsvc"]["store_seconds"] else "-"),
    ("…… manifest: validate/train/add/tune/write s",
     lambda r: _laps(r["embedsvc"]["manifest"]["phase_seconds"], INDEX_PHASES)),
    ("**plain FAISS build**, wall s (CPU s)", lambda r: "**{:.1f}** ({:.1f})".format(
        r["plain"]["seconds"], r["plain"]["cpu_seconds"])),
    ("… load/train/add/write s", lambda r: _laps(r["plain"]["phase_seconds"], PLAIN_PHASES)),
    ("**build ratio** embedsvc / plain, wall (CPU)", lambda r: "**{:.2f}** ({:.2f})".format(
        r["embedsvc"]["seconds"] / r["plain"]["seconds"],
        r["embedsvc"]["cpu_seconds"] / r["plain"]["cpu_seconds"])),
    ("build ratio, index phases only (train+add+tune+write) / plain (train+add+write)",
     lambda r: "{:.2f}".format(_index_seconds(r) / sum(
         r["plain"]["phase_seconds"][k] for k in PLAIN_PHASES[1:]))),
    ("recall@10 in the manifest (tuning queries)",
     lambda r: f"{r['embedsvc']['manifest']['recall_at_10']:.3f}"),
    ("recall@10 held-out, embedsvc / plain", lambda r: "{:.3f} / {:.3f}".format(
        r["search"]["embedsvc"]["recall"], r["search"]["plain"]["recall"])),
    ("queries/s embedsvc (DenseIndex.load)", lambda r: f"{r['search']['embedsvc']['qps']:,.0f}"),
    ("queries/s plain", lambda r: f"{r['search']['plain']['qps']:,.0f}"),
    ("**queries/s ratio** embedsvc / plain",
     lambda r: f"**{r['search']['embedsvc']['qps'] / r['search']['plain']['qps']:.2f}**"),
    ("**peak RSS, embedsvc CLI** (ru_maxrss)", lambda r: f"**{_mb(r['embedsvc']['peak_rss'])}**"),
    ("… sampled peak per phase above (first three)", lambda r: " / ".join(
        _mb(v) for v in list(r["embedsvc"]["phase_peaks"].values())[:3])),
    ("… anonymous RSS only (no mapped file pages), same phases", lambda r: " / ".join(
        _mb(v) for v in list(r["embedsvc"]["anon_peaks"].values())[:3])),
    ("… peak minus the base (a process importing what the build imports)",
     lambda r: _mb(r["embedsvc"]["peak_rss"] - r["base"])),
    ("peak RSS, plain FAISS script", lambda r: _mb(r["plain"]["peak_rss"])),
    ("base RSS (imports only)", lambda r: _mb(r["base"])),
    ("index size embedsvc / plain", lambda r: "{} / {}".format(
        _mb(r["embedsvc"]["manifest"]["index_bytes"]), _mb(r["plain"]["index_bytes"]))),
    ("input .npy size", lambda r: _mb(r["generate"]["file_bytes"])),
    ("load average (1 min) at CLI start / plain start", lambda r: "{:.1f} / {:.1f}".format(
        r["embedsvc"]["load_before"], r["plain"]["load"])),
]


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table, one column per corpus size."""
    head = ["", *[f"{r['n']:,} vectors" for r in results]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([name, *[fn(r) for r in results]]) + " |" for name, fn in ROWS]
    return "\n".join(lines)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="200000,1000000", help="comma-separated corpus sizes")
    p.add_argument("--budget", default="2GB", help="--memory-budget for the build")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the temporary files")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--reuse", help="keep the generated vectors here (DIR/N/) and reuse them "
                                   "on the next run, so reruns skip generation")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--embedsvc", default=EMBEDSVC,
                   help="the embedsvc command to measure (default: this venv's embedsvc)")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--phase-args", default="{}", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.phase:
        print(json.dumps(PHASES[args.phase](Path(args.work), **json.loads(args.phase_args))))
        return
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        results.append(run_size(n, args))
        if args.json:  # after each size, so a long run leaves what it measured
            Path(args.json).write_text(json.dumps(results, indent=2))
    import faiss

    print(f"\n`embedsvc index build --vectors` vs plain FAISS, {DIM}-d clustered synthetic "
          f"vectors, --memory-budget {args.budget}, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} OpenMP threads, {os.cpu_count()} CPUs\n")
    print(table(results))


if __name__ == "__main__":
    main()
