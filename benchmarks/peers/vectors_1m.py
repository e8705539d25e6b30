"""Benchmark (issue 10): 1M clustered synthetic 384-d vectors, embedsvc beside its peers.

For each system: build time, peak RSS, and queries/s at recall@10 >= 0.95 against exact
ground truth. Systems, each built in one process and searched in another (a service
restarting on what was built), both measured as ``benchmarks/vectors_build.py`` measures
its children (``Child``: wall time, CPU time and ``ru_maxrss`` from ``os.wait4``; RSS and
anonymous RSS sampled from ``/proc``):

- **embedsvc**: ``embedsvc index build bench --vectors V.npy --ids V.ids.txt --index auto
  --memory-budget 2GB`` (``vectors_build.cli_build``: the real CLI in a fresh home),
  searched through the dense layer the server uses after encoding,
  ``Searcher.dense_by_vectors`` (``vectors_1m_embedsvc.py`` says what that includes);
- **faiss**: raw FAISS with the factory string, training size and search parameters of
  embedsvc's manifest (``vectors_build.phase_plain``, then ``index.search``);
- **hnswlib** (M=16, ef_construction=200), **txtai** (``Embeddings`` over the vectors,
  its default Faiss layout), **chromadb** (``PersistentClient``, HNSW M=16,
  ef_construction=200, ip), **lancedb** (default IVF_PQ, dot, re-ranked with
  ``refine_factor``): each in its own virtualenv (``envs.py``), with the code in
  ``vectors_1m_<system>.py`` (the shared child side is ``vectors_1m_common.py``). A peer
  whose venv cannot be built or that fails is reported with the reason.

Data: N vectors and Q held-out queries from ``vectors_build``'s generator (``--phase
generate``: clustered unit vectors streamed into one ``.npy``, ids ``doc<row>``), and
their exact top-10 by inner product (``faiss.knn``, the exhaustive IndexFlatIP kernel;
inner product is cosine on unit vectors). Every system reads the same files.

Search: each system's search parameter (efSearch, nprobe, refine factor) is swept upward,
each setting timed over the Q queries sent one at a time with k=10 (as a service answers
them), until recall@10 >= ``--target``; at the first setting that reaches it the
single-query pass is repeated (best of ``--rounds``) and the system's batch API, if any, is
timed as a second column. embedsvc starts at its manifest's tuned parameters (what it
serves); raw FAISS starts at the setting embedsvc ended on, so their ratio compares the
same layout with the same parameters. A sweep also ends when three settings in a row gain
less than 0.002 recall (a quantised layout's ceiling); a system that never reaches the
target is reported with its best recall and that setting. Targets (reported, never asserted): embedsvc's single-query
queries/s within 10% of raw FAISS, and no lower than hnswlib's.

Usage (from the repository root, with the project's venv)::

    python benchmarks/peers/vectors_1m.py                        # 1M vectors, 1000 queries
    python benchmarks/peers/vectors_1m.py --n 20000 --queries 200 # a smoke run
    python benchmarks/peers/vectors_1m.py --systems embedsvc,faiss,hnswlib --out results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # nothing left in the source tree
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import vectors_build as vb  # noqa: E402

log = logging.getLogger("benchmarks.peers.vectors_1m")

SYSTEMS = ("embedsvc", "faiss", "hnswlib", "txtai", "chromadb", "lancedb")
PEERS = ("hnswlib", "txtai", "chromadb", "lancedb")  # systems with their own venv
DIM, K = vb.DIM, vb.K
EMBEDSVC = vb.EMBEDSVC


class PhaseFailed(Exception):
    """A system could not be installed, built or searched; the message says why in one
    line, ``detail`` holds the whole story (the child's stderr tail)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail or message


class Stopped(BaseException):
    """SIGTERM: unwind (killing every child) instead of dying with children left behind."""


# --- processes -------------------------------------------------------------------------------
def _descendants(root: int) -> list[int]:
    """Pids of every process below ``root``, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_children() -> None:
    """SIGKILL every process this one started (by pid), and theirs."""
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Echo(list):
    """``Child.lines`` that also logs each stderr line of the child as it arrives."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def append(self, item: tuple[float, str]) -> None:
        super().append(item)
        if item[1].strip() and "docs/s" not in item[1]:
            log.info("  [%s] %s", self.name, item[1])


@contextmanager
def deadline(name: str, timeout_s: float) -> Iterator[None]:
    """Kill the children still running after ``timeout_s``; turn a child's failure
    (``Child`` raises SystemExit with its stderr's tail) into PhaseFailed."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_children()

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except SystemExit as exc:
        if expired.is_set():
            raise PhaseFailed(f"{name}: killed at the time limit ({timeout_s:,.0f}s)") from None
        text = str(exc)
        code = text.rpartition(" failed (")[2].partition(")")[0]
        last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
        raise PhaseFailed(f"{name} failed (exit {code}): {last}", text) from None
    finally:
        timer.cancel()


def measured(name: str, cmd: list[str], timeout_s: float, env: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """Run ``cmd`` as ``vectors_build.Child``; raise PhaseFailed with its stderr tail.

    Returns:
        ``seconds`` (wall), ``cpu_seconds``, ``peak_rss`` (ru_maxrss, bytes), ``anon_peak``
        (largest sampled anonymous RSS: without mapped file pages), ``load_before``.
    """
    child = vb.Child(cmd, env)
    child.lines = _Echo(name)
    with deadline(name, timeout_s):
        result = child.run()
    anon = max((a for _, _, a, _ in child.samples), default=0)
    return {k: result[k] for k in ("seconds", "cpu_seconds", "peak_rss")} | {
        "anon_peak": anon, "load_before": result["load_before"]}


def child_env(work: Path) -> dict[str, str]:
    """What every child runs with: no bytecode in the tree, temporary files and caches in
    the temp folder, no telemetry, no downloads."""
    cache, tmp = work / "cache", work / "tmp"
    tmp.mkdir(exist_ok=True)
    return {"PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(cache),
            "HF_HOME": str(cache / "huggingface"), "HF_HUB_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False", "LANCEDB_LOG": "error",
            "TOKENIZERS_PARALLELISM": "false"}


# --- data ------------------------------------------------------------------------------------
DATA_FILES = ("vectors.npy", "vectors.ids.txt", "queries.npy", "truth.npy")


def prepare_data(args: argparse.Namespace, work: Path) -> Path:
    """The vectors, ids, queries and exact top-10, generated once per (n, queries, seed)."""
    root = Path(args.data) if args.data else work
    data = root / f"n{args.n}-q{args.queries}-seed{args.seed}"
    if all((data / name).is_file() for name in DATA_FILES):
        log.info("reusing the vectors and ground truth in %s", data)
        return data
    data.mkdir(parents=True, exist_ok=True)
    log.info("generating %d vectors, %d queries and their exact top-%d in %s", args.n,
             args.queries, K, data)
    got = measured("generate", [sys.executable, vb.__file__, "--phase", "generate", "--work",
                                str(data), "--phase-args", json.dumps(
                                    {"n": args.n, "queries": args.queries, "seed": args.seed})],
                   args.timeout * 60, child_env(work))
    log.info("generated in %.1fs", got["seconds"])
    return data


# --- systems ---------------------------------------------------------------------------------
def _phase(system: str, python: str, phase: str, data: Path, out: Path, opts: dict[str, Any],
           args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One ``vectors_1m_<system>.py --phase ...`` process: its JSON result and measurements."""
    result = work / f"{system}-{phase}.json"
    result.unlink(missing_ok=True)
    cmd = [python, str(HERE / f"vectors_1m_{system}.py"), "--phase", phase, "--data", str(data),
           "--out", str(out), "--result", str(result), "--opts", json.dumps(opts),
           "--target", str(args.target), "--rounds", str(args.rounds)]
    log.info("%s: %s (load average %.1f)", system, phase, os.getloadavg()[0])
    got = measured(f"{system} {phase}", cmd, args.timeout * 60, child_env(work))
    return {**json.loads(result.read_text()), **got}


def run_embedsvc(data: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The CLI build (``vectors_build.cli_build``), then the search process."""
    folder = work / "embedsvc"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name in DATA_FILES:
        (folder / name).symlink_to(data / name)
    log.info("embedsvc: index build --vectors --index auto --memory-budget %s (load average %.1f)",
             args.budget, os.getloadavg()[0])
    with deadline("embedsvc index build", args.timeout * 60):
        cli = vb.cli_build(folder, args.budget, [EMBEDSVC])
    m = cli["manifest"]
    log.info("embedsvc: %s in %.1fs", m["reason"], cli["seconds"])
    build = {"seconds": cli["seconds"], "cpu_seconds": cli["cpu_seconds"],
             "peak_rss": cli["peak_rss"], "anon_peak": max(cli["anon_peaks"].values()),
             "load_before": cli["load_before"], "layout": m["layout"],
             "search_params": m["search_params"], "train_size": m["train_size"],
             "reason": m["reason"], "manifest_recall": m["recall_at_10"],
             "index_bytes": m["index_bytes"], "phases": cli["phases"]}
    search = _phase("embedsvc", sys.executable, "search", data, folder / "home",
                    {"collection": "bench"}, args, work)
    return {"build": build, "search": search}


_PYTHONS: dict[str, str | PhaseFailed] = {}


def peer_python(system: str) -> str:
    """The python of ``system``'s venv (installed by ``envs.ensure`` on first use)."""
    if system not in _PYTHONS:
        try:
            _PYTHONS[system] = str(envs.ensure(system))
        except envs.PeerUnavailable as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
            why = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
            _PYTHONS[system] = PhaseFailed(f"{system} could not be installed: {why}", str(exc))
    found = _PYTHONS[system]
    if isinstance(found, PhaseFailed):
        raise found
    return found


def run_system(system: str, data: Path, args: argparse.Namespace, work: Path,
               embedsvc: dict[str, Any] | None) -> dict[str, Any]:
    """Build and search one system; PhaseFailed says why it could not."""
    if system == "embedsvc":
        return run_embedsvc(data, args, work)
    out = work / system
    if system == "faiss":
        if embedsvc is None:
            raise PhaseFailed("raw FAISS takes embedsvc's layout and parameters: run it with "
                              "embedsvc (which failed or was not selected)")
        python = sys.executable
        opts = {"layout": embedsvc["build"]["layout"], "train_size": embedsvc["build"]["train_size"],
                "seed": args.seed, "start": embedsvc["search"]["setting"]}
    else:
        python = peer_python(system)
        opts = {"dim": DIM, "seed": args.seed}
    shutil.rmtree(out, ignore_errors=True)
    build = _phase(system, python, "build", data, out, opts, args, work)
    search = _phase(system, python, "search", data, out, opts, args, work)
    return {"build": build, "search": search}


def project_versions() -> dict[str, str]:
    import importlib.metadata as md

    import faiss
    import numpy

    return {"python": platform.python_version(), "embedsvc": md.version("embedsvc"),
            "faiss-cpu": faiss.__version__, "numpy": numpy.__version__}


def system_versions(system: str) -> dict[str, str]:
    if system in PEERS:
        try:
            return envs.versions(system)
        except envs.PeerUnavailable as exc:
            return {"error": str(exc)[:200]}
    return project_versions()


# --- report ----------------------------------------------------------------------------------
def _median(values: list[Any]) -> Any:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    return values[-1]


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result per system from its repetitions: medians of the numbers, the last of
    everything else; failures kept when no repetition succeeded."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    out: dict[str, Any] = {"reps": len(good), "errors": [r["error"] for r in runs if "error" in r]}
    for part in ("build", "search"):
        keys = set().union(*(r[part] for r in good))
        out[part] = {k: _median([r[part][k] for r in good if r[part].get(k) is not None])
                     if any(r[part].get(k) is not None for r in good) else None for k in keys}
    return out


def _cell(text: str, limit: int = 300) -> str:
    """One line of Markdown-table-safe text."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mb(x: float | None) -> str:
    return vb._mb(x) if x else "-"


def _qps(x: float | None) -> str:
    return f"{x:,.0f}" if x else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _setting(value: Any) -> str:
    if isinstance(value, list):
        return f"nprobes={value[0]}, refine_factor={value[1]}"
    if value == "":
        return "exact"
    return str(value)


NAMES = {"embedsvc": "**embedsvc**", "faiss": "raw FAISS", "hnswlib": "hnswlib",
         "txtai": "txtai", "chromadb": "Chroma", "lancedb": "LanceDB"}
PARAMETER = {"embedsvc": "", "faiss": "", "hnswlib": "ef=", "txtai": "nprobe=",
             "chromadb": "ef_search=", "lancedb": ""}


def main_table(results: dict[str, dict[str, Any]], target: float) -> str:
    e = results.get("embedsvc", {})
    e_build, e_search = e.get("build") or {}, e.get("search") or {}
    head = ["system", "layout", "build s", "build peak RSS (anon)", "search process RSS",
            f"setting at recall@10 ≥ {target}", "recall@10", "q/s single", "q/s batch",
            "embedsvc ÷ system: q/s single / batch", "embedsvc ÷ system: build s",
            "embedsvc ÷ system: build RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, r in results.items():
        if "build" not in r:
            lines.append(f"| {NAMES[system]} | **not measured**: {_cell(r['error'])} |"
                         + " |" * (len(head) - 2))
            continue
        b, s = r["build"], r["search"]
        layout = b.get("layout") or "-"
        if system == "embedsvc":
            tuned = f"{b['search_params']} tuned" if b["search_params"] else "exact"
            layout = f"`{layout}` ({tuned})"
        elif system == "faiss":
            layout = f"`{layout}`"
        setting = PARAMETER[system] + _setting(s["setting"])
        if not s.get("reached"):
            setting += f" (its best: never reached {target})"
        batch = f"{_qps(s.get('batch_qps'))}" + (
            f" (recall {s['batch_recall']:.3f})" if s.get("batch_recall") is not None
            and abs(s["batch_recall"] - s["recall"]) > 0.001 else "")
        lines.append("| " + " | ".join([
            NAMES[system], layout, f"{b['seconds']:,.1f}",
            f"{_mb(b['peak_rss'])} ({_mb(b.get('anon_peak'))})", _mb(s["peak_rss"]),
            setting, f"{s['recall']:.3f}", _qps(s["qps"]), batch,
            *(["-", "-", "-"] if system == "embedsvc" else [
                f"{_ratio(e_search.get('qps'), s['qps'])} / "
                f"{_ratio(e_search.get('batch_qps'), s.get('batch_qps'))}",
                _ratio(e_build.get("seconds"), b["seconds"]),
                _ratio(e_build.get("peak_rss"), b["peak_rss"])])]) + " |")
    return "\n".join(lines)


def sweep_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| system | setting → recall@10 / q/s single (first pass of each) |", "|---|---|"]
    for system, r in results.items():
        if "search" in r:
            steps = ", ".join(f"{_setting(t['setting'])} → {t['recall']:.3f} / {t['qps']:,.0f}"
                              for t in r["search"]["sweep"])
            lines.append(f"| {NAMES[system]} | {PARAMETER[system]}{steps} |")
    return "\n".join(lines)


def _notes(system: str, r: dict[str, Any]) -> str:
    b, s = r["build"], r["search"]
    if system == "embedsvc":
        x = s.get("extra") or {}
        return (f"{b['reason']}; manifest recall@10 {b['manifest_recall']:.3f}; per single query: "
                f"the FAISS layer alone (`DenseIndex.search`, depth {x.get('depth')}) "
                f"{_qps(x.get('dense_index_qps'))} q/s, the snapshot check "
                f"{x.get('view_check_us', 0):.0f} µs")
    info = s.get("info") or {}
    same = s.get("extra") or {}
    if system == "faiss" and same.get("same_setting_qps"):
        info = {**info, "at embedsvc's setting": f"{_setting(same['same_setting'])}: recall@10 "
                f"{same['same_setting_recall']:.3f}, {_qps(same['same_setting_qps'])} q/s single"}
    if system == "lancedb":
        info = {"index": info.get("index"), **((info.get("details") or {}).get("compression") or {})}
    return ", ".join(f"{k} {v}" for k, v in info.items())


def details_table(results: dict[str, dict[str, Any]]) -> str:
    head = ["system", "build CPU s", "build s after imports", "load avg at build start",
            "open + warm s", "search process anon RSS", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, r in results.items():
        if "build" not in r:
            continue
        b, s = r["build"], r["search"]
        inner = b.get("build_seconds")
        lines.append("| " + " | ".join([
            NAMES[system], f"{b['cpu_seconds']:,.1f}", f"{inner:,.1f}" if inner else "-",
            f"{b['load_before']:.1f}", f"{s['open_seconds']:.1f}", _mb(s.get("anon_peak")),
            _cell(_notes(system, r), 400)]) + " |")
    return "\n".join(lines)


def versions_table(versions: dict[str, dict[str, str]]) -> str:
    lines = ["| system | versions |", "|---|---|"]
    lines += [f"| {NAMES[s]} | {', '.join(f'{k} {v}' for k, v in found.items())} |"
              for s, found in versions.items()]
    return "\n".join(lines)


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets, reported (never asserted)."""
    def qps(system: str) -> float | None:
        return (results.get(system, {}).get("search") or {}).get("qps")

    e, h = qps("embedsvc"), qps("hnswlib")
    faiss = results.get("faiss", {}).get("search") or {}
    same = faiss.get("extra") or {}
    f = same.get("same_setting_qps") or faiss.get("qps")  # the sweep ended elsewhere, or not
    out = []
    if e and f:
        setting = _setting(same.get("same_setting", faiss["setting"]))
        recall = same.get("same_setting_recall", faiss["recall"])
        out.append(f"- embedsvc within 10% of raw FAISS, same layout and parameters ({setting}; "
                   f"raw FAISS recall@10 there {recall:.3f}), single queries: "
                   f"{e / f:.2f}× → {'met' if e >= 0.9 * f else 'NOT met'}")
    if e and h:
        out.append(f"- embedsvc no lower than hnswlib, single queries: {e / h:.2f}× → "
                   f"{'met' if e >= h else 'NOT met'}")
    return out


def machine() -> str:
    import faiss

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor() or "?")
    memory = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
                  if line.startswith("MemTotal"))
    return (f"{os.cpu_count()} cores ({model}), {memory / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"FAISS {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads)")


def report(results: dict[str, dict[str, Any]], versions: dict[str, dict[str, str]],
           args: argparse.Namespace, started: str) -> str:
    failed = [f"- **{NAMES[s]}** not measured: {_cell(r['error'], 1000)}" for s, r in results.items()
              if "build" not in r]
    partial = [f"- {NAMES[s]}: {len(r['errors'])} of the repetitions failed: {_cell(r['errors'][0])}"
               for s, r in results.items() if r.get("errors")]
    return "\n".join([
        f"## {args.n:,} clustered synthetic {DIM}-d vectors: embedsvc beside its peers "
        "(`benchmarks/peers/vectors_1m.py`)", "",
        f"{started}, {machine()}, load average {os.getloadavg()[0]:.1f} at the end. "
        f"{args.queries:,} held-out queries from the same distribution, exact top-{K} by inner "
        f"product (cosine on unit vectors); k={K}; {args.reps} build(s) per system "
        f"(medians), best of {args.rounds} timed passes at the chosen setting. embedsvc: "
        f"`index build --vectors --index auto --memory-budget {args.budget}`, searched through "
        "`Searcher.dense_by_vectors` (the server's dense path after encoding, in process). "
        "Build s: the whole build process, wall. RSS: `ru_maxrss` (anonymous peak, without "
        "mapped file pages, in parentheses). q/s single: one query per call, one after "
        "another; q/s batch: all queries in one call of the system's batch API.", "",
        main_table(results, args.target), "",
        *targets(results), *failed, *partial, "",
        details_table(results), "",
        "Sweeps (each setting's recall@10 and single-query q/s, first timed pass):", "",
        sweep_table(results), "", versions_table(versions)])


# --- driver ----------------------------------------------------------------------------------
def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (default 1000)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, from {','.join(SYSTEMS)} (default all)")
    p.add_argument("--reps", type=int, default=1,
                   help="builds per system (default 1: a 1M build takes minutes to an hour)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed passes at the chosen setting, best kept (default 3)")
    p.add_argument("--target", type=float, default=0.95, help="recall@10 to reach (default 0.95)")
    p.add_argument("--budget", default="2GB", help="embedsvc's --memory-budget (default 2GB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=240,
                   help="minutes one build or search process may take (default 240)")
    p.add_argument("--out", help="also write the raw results here (JSON)")
    p.add_argument("--data", help="keep the generated vectors and ground truth under this "
                                  "folder and reuse them next time (default: the temp folder)")
    p.add_argument("--tmp", help="where the temporary folder goes (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"signal {signum}")


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _stop)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vectors-1m-", dir=args.tmp))
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    try:
        for peer in (s for s in systems if s in PEERS):  # installs first: none mid-measurement
            log.info("%s: checking its venv (installed on first use)", peer)
            try:
                peer_python(peer)
            except PhaseFailed as exc:
                log.error("%s", exc.detail)
        data = prepare_data(args, work)
        for rep in range(args.reps):
            embedsvc = None
            for system in systems:
                log.info("=== rep %d/%d: %s", rep + 1, args.reps, system)
                try:
                    got = run_system(system, data, args, work, embedsvc)
                except PhaseFailed as exc:
                    log.error("%s", exc.detail)
                    got = {"error": str(exc), "error_detail": exc.detail}
                else:
                    s = got["search"]
                    log.info("%s: build %.1fs, peak RSS %s; %s: recall@10 %.3f, %.0f q/s single, "
                             "%s q/s batch", system, got["build"]["seconds"],
                             _mb(got["build"]["peak_rss"]), _setting(s["setting"]), s["recall"],
                             s["qps"], _qps(s.get("batch_qps")))
                finally:
                    if not args.keep:  # each index goes once measured: disk holds one at a time
                        shutil.rmtree(work / system, ignore_errors=True)
                runs[system].append(got)
                if system == "embedsvc" and "error" not in got:
                    embedsvc = got
                if args.out:  # after each system, so a long run keeps what it measured
                    Path(args.out).write_text(json.dumps(
                        {"args": vars(args), "started": started, "runs": runs}, indent=2))
        results = {s: combine(r) for s, r in runs.items()}
        versions = {s: system_versions(s) for s in systems}
        if args.out:
            Path(args.out).write_text(json.dumps(
                {"args": vars(args), "started": started, "machine": machine(), "runs": runs,
                 "results": results, "versions": versions}, indent=2))
        print("\n" + report(results, versions, args, started))
    finally:
        kill_children()
        if args.keep:
            log.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except (Stopped, KeyboardInterrupt) as exc:  # children are gone already (main's finally)
        log.error("stopped (%s); every child process was killed", exc or "interrupt")
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 143)
