"""SciFact side by side: embedsvc against txtai, Chroma, LanceDB and a plain script.

Same machine, same model (the bundled all-MiniLM-L6-v2, one local folder handed to every
system; nothing downloads), same data (SciFact, title + " " + text per document). Each
repetition runs every system in turn (the order rotates between repetitions), and for
each system:

1. **Index** end to end in a fresh subprocess and a fresh folder: wall seconds (docs/s)
   and peak RSS of the process tree. embedsvc is its CLI with its defaults
   (``embedsvc index build``); ``plain`` is sentence-transformers + FAISS IndexFlatIP; the
   peers use their own venvs (``envs.py``) and their normal indexing path.
2. **Query in process** in a fresh subprocess on the persisted index: the 300 SciFact test
   queries ranked at depth 100 (also the warm-up), scored here by one scorer for all
   (embedsvc's ``ir_metrics``: nDCG@10), then each query alone at k=10: p50/p95 ms.
3. **HTTP** for the systems with a server (embedsvc, txtai's API, Chroma's server, and a
   naive FastAPI server over the plain index): a warm-up, then 1, 8 and 32 concurrent
   clients for ``--duration`` seconds each, cycling the test queries, loopback only.

Medians over the repetitions, with [min–max], and embedsvc's ratio to each system.
Results go to ``--out`` as JSON; the Markdown tables are printed for RESULTS.md.

    .venv/bin/python benchmarks/peers/text.py                       # the full run
    .venv/bin/python benchmarks/peers/text.py --docs 200 --reps 1 --duration 3   # smoke
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
from load import Level, Request, check_wrk_version, run_python, run_wrk, wrk_available, wrk_script  # noqa: E402
from procs import Server, free_port, http_json, run_checked, run_measured  # noqa: E402

log = logging.getLogger("benchmarks.peers.text")

SCIFACT = REPO / "data" / "scifact"
SYSTEMS_DIR = HERE / "systems"
PROJECT_PYTHON = Path(sys.executable)
COLLECTION = "scifact"
ALL_SYSTEMS = ("embedsvc", "plain", "txtai", "chromadb", "lancedb")
PEERS = ("txtai", "chromadb", "lancedb")  # the targets compare with these; plain is a baseline
LEVELS = (1, 8, 32)
INDEX_TIMEOUT_S = 3 * 3600
QUERY_TIMEOUT_S = 3600


# --- context ----------------------------------------------------------------------------------
@dataclass
class Context:
    """What every step of a run shares: the folders, the data, the model, the options."""

    args: argparse.Namespace
    work: Path
    data: Path  # a BEIR folder holding the corpus every system reads
    queries_file: Path  # JSON [[query id, text], ...]: the test queries
    queries: list[tuple[str, str]]
    qrels: dict[str, dict[str, int]]
    model: Path
    documents: int
    env: dict[str, str]
    embedsvc_env: dict[str, str]

    @property
    def corpus(self) -> Path:
        return self.data / "corpus.jsonl"

    def python(self, venv: str | None) -> Path:
        return PROJECT_PYTHON if venv is None else envs.ensure(venv)


# --- systems ------------------------------------------------------------------------------------
@dataclass
class HttpSide:
    """How a system is served and searched over HTTP."""

    label: str  # the row's name in the HTTP table
    cmd: list[str]
    ready: Callable[[str], bool]
    request: Request | None  # sent by wrk (or the generic Python generator)
    python_kind: str | None = None  # a loadgen kind instead of wrk (Chroma)
    python_spec: dict = field(default_factory=dict)
    python_venv: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


class System:
    """One system: how to index, query and serve it. Workers live in ``systems/sys_<name>.py``."""

    name = ""
    venv: str | None = None  # a peer venv (envs.py), or None for the project's
    label = ""
    folder = "index"  # what the index step leaves in the run's folder

    def index_cmd(self, ctx: Context, folder: Path) -> list[str]:
        return [str(ctx.python(self.venv)), str(SYSTEMS_DIR / f"sys_{self.name}.py"), "index",
                "--corpus", str(ctx.corpus), "--model", str(ctx.model), "--out", str(folder)]

    def query_cmd(self, ctx: Context, folder: Path, result: Path) -> list[str]:
        return [str(ctx.python(self.venv)), str(SYSTEMS_DIR / f"sys_{self.name}.py"), "query",
                "--queries", str(ctx.queries_file), "--result", str(result),
                "--model", str(ctx.model), "--out", str(folder)]

    def env(self, ctx: Context) -> dict[str, str]:
        return ctx.env

    def prepare(self, ctx: Context, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

    def http(self, ctx: Context, folder: Path, port: int) -> HttpSide | None:
        return None


class Embedsvc(System):
    name, label, folder = "embedsvc", "embedsvc", "home"

    def index_cmd(self, ctx, folder):
        embedsvc = PROJECT_PYTHON.parent / "embedsvc"
        return [str(embedsvc), "--home", str(folder), "index", "build", COLLECTION,
                "--input", str(ctx.data), *ctx.args.embedsvc_arg]

    def query_cmd(self, ctx, folder, result):
        return [str(PROJECT_PYTHON), str(SYSTEMS_DIR / "sys_embedsvc.py"), "--home", str(folder),
                "--queries", str(ctx.queries_file), "--result", str(result), "--mode", ctx.args.embedsvc_mode,
                "--also", "" if ctx.args.no_hybrid else "hybrid"]

    def env(self, ctx):
        return {**ctx.env, **ctx.embedsvc_env}

    def prepare(self, ctx, folder):
        # A fresh home, but the model already unpacked (as after any first use), as every
        # peer gets it: the build does not time unzipping it. Its checksum is still verified.
        bundled = folder / "models" / "_bundled"
        bundled.mkdir(parents=True)
        (bundled / ctx.model.name).symlink_to(ctx.model, target_is_directory=True)
        # ONNX exports (--backend onnx) are cached per model like the unpacked model.
        shared_onnx = ctx.work / "home" / "models" / "_onnx"
        shared_onnx.mkdir(parents=True, exist_ok=True)
        (folder / "models" / "_onnx").symlink_to(shared_onnx, target_is_directory=True)

    def http(self, ctx, folder, port):
        mode = ctx.args.embedsvc_mode

        def ready(url: str) -> bool:
            if http_json(f"{url}/readyz").get("status") != "ready":
                return False
            answer = http_json(f"{url}/v1/collections/{COLLECTION}/search", {"query": "test", "k": 1, "mode": mode})
            if answer["mode"] != mode:
                raise ValueError(f"search answered {answer['mode']} ({answer.get('fallback')})")
            return True

        return HttpSide(
            "embedsvc", [str(PROJECT_PYTHON.parent / "embedsvc"), "--home", str(folder), "serve",
                         "--host", "127.0.0.1", "--port", str(port)], ready,
            Request("POST", f"/v1/collections/{COLLECTION}/search", {"query": "{q}", "k": 10, "mode": mode}),
            note=f"`embedsvc serve` (1 worker), POST search mode={mode}")


class Plain(System):
    name, label = "plain", "plain (ST + FAISS flat)"

    def http(self, ctx, folder, port):
        def ready(url: str) -> bool:
            return bool(http_json(f"{url}/search", {"query": "test", "k": 1})["ids"])

        return HttpSide(
            "naive server", [str(PROJECT_PYTHON), str(SYSTEMS_DIR / "naive_server.py"), "--model", str(ctx.model),
                             "--out", str(folder), "--port", str(port)], ready,
            Request("POST", "/search", {"query": "{q}", "k": 10}),
            note="FastAPI + sentence-transformers + FAISS over the plain index, uvicorn 1 worker")


class Txtai(System):
    name = venv = label = "txtai"

    def http(self, ctx, folder, port):
        def ready(url: str) -> bool:
            return isinstance(http_json(f"{url}/search?query=test&limit=1"), list)

        python = ctx.python(self.venv)
        return HttpSide(
            "txtai", [str(python), "-m", "uvicorn", "txtai.api:app", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1", "--log-level", "warning", "--no-access-log"], ready,
            Request("GET", "/search?limit=10", query_param="query"),
            env={"CONFIG": str(folder / "api.yml")},
            note="txtai.api under uvicorn (1 worker), GET /search")


class Chroma(System):
    name = venv = label = "chromadb"

    def http(self, ctx, folder, port):
        def ready(url: str) -> bool:
            http_json(f"{url}/api/v2/heartbeat")
            return True

        chroma = ctx.python(self.venv).parent / "chroma"
        return HttpSide(
            "chromadb", [str(chroma), "run", "--path", str(folder / "chroma"), "--host", "127.0.0.1",
                         "--port", str(port)], ready, None,
            python_kind="chroma", python_spec={"model": str(ctx.model), "collection": COLLECTION, "k": 10},
            python_venv=self.venv,
            note="`chroma run`; Chroma embeds in the client, so each query is embedded by its client "
                 "library (HttpClient + SentenceTransformerEmbeddingFunction, on this same machine) and the "
                 "vector sent to the server: the Python generator, not wrk, with N client threads in one "
                 "process sharing one model")


class Lance(System):
    name = venv = label = "lancedb"  # embedded only: LanceDB OSS has no server


SYSTEM_TYPES: dict[str, type[System]] = {
    "embedsvc": Embedsvc, "plain": Plain, "txtai": Txtai, "chromadb": Chroma, "lancedb": Lance}


# --- data -------------------------------------------------------------------------------------
def prepare_data(work: Path, docs: int | None,
                 max_queries: int | None) -> tuple[Path, int, list[tuple[str, str]], dict]:
    """Write the corpus every system reads (a subset with ``docs``) and the test queries
    (the first ``max_queries`` by id with that flag).

    A subset keeps the documents judged for the test queries first (then the rest in file
    order), so a smoke run's nDCG still means something; it is not SciFact's nDCG.
    """
    from embedsvc.ir_metrics import load_qrels, load_queries

    qrels = load_qrels(SCIFACT, "test")
    queries = load_queries(SCIFACT, set(qrels))
    query_list = sorted(queries.items())[:max_queries]
    qrels = {q: qrels[q] for q, _ in query_list}
    data = work / "data"
    data.mkdir(parents=True)
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    if docs is not None and docs < len(lines):
        judged = {d for j in qrels.values() for d in j}
        first = [i for i, line in enumerate(lines) if json.loads(line)["_id"] in judged]
        chosen = set(first)
        rest = [i for i in range(len(lines)) if i not in chosen]
        keep = sorted((first + rest)[:docs])
        lines = [lines[i] for i in keep]
    (data / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    (work / "queries.json").write_text(json.dumps(query_list))
    return data, len(lines), query_list, qrels


def unpack_model(home: Path) -> Path:
    """The bundled model's folder (unpacked under ``home/models``), handed to every system."""
    from embedsvc.encoders import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL, home / "models").path


def export_onnx(home: Path, env: dict[str, str]) -> None:
    """embedsvc's ONNX export and int8 file, made before the timed runs, as they are once per
    model on any machine (like unpacking the model; what they take is in RESULTS.md). Every
    embedsvc home of the run links to them (``Embedsvc.prepare``); a torch backend ignores them."""
    script = ("import sys; from pathlib import Path; from embedsvc.encoders import DEFAULT_MODEL, "
              "load_encoder; load_encoder(DEFAULT_MODEL, Path(sys.argv[1]), backend='onnx-int8')")
    started = time.perf_counter()
    run_checked([str(PROJECT_PYTHON), "-c", script, str(home / "models")], env=env, cwd=REPO,
                log_path=home / "onnx-export.log", timeout_s=1800)
    log.info("ONNX export ready in %.1f s", time.perf_counter() - started)


def base_env(work: Path) -> dict[str, str]:
    """The environment of every process: offline, and HOME in the run's folder, so caches
    (Chroma's, Hugging Face's) land there and nothing is left behind."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    home = work / "home"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", ANONYMIZED_TELEMETRY="False", PYTHONDONTWRITEBYTECODE="1",
               HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), HF_HOME=str(home / ".cache" / "huggingface"),
               TMPDIR=str(work / "tmp"))
    return env


# --- one repetition of one system ---------------------------------------------------------------
def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]


def score(ranked: dict[str, list[str]], qrels: dict) -> dict[str, float]:
    from embedsvc.ir_metrics import evaluate

    return evaluate(ranked, qrels)


def run_index(system: System, ctx: Context, folder: Path, logs: Path) -> dict:
    system.prepare(ctx, folder)
    m = run_measured(system.index_cmd(ctx, folder), env=system.env(ctx), cwd=ctx.work,
                     log_path=logs / "index.log", timeout_s=INDEX_TIMEOUT_S)
    if m.returncode != 0:
        raise RuntimeError(f"index exited {m.returncode} after {m.seconds:.1f} s:\n{m.tail()}")
    return {"seconds": m.seconds, "docs_per_s": ctx.documents / m.seconds, "peak_rss_mb": m.peak_rss_bytes / 2**20,
            "maxrss_child_mb": m.maxrss_child_bytes / 2**20, "sampled_tree_mb": m.sampled_tree_bytes / 2**20}


def run_query(system: System, ctx: Context, folder: Path, logs: Path) -> dict:
    result = logs / "query.json"
    run_checked(system.query_cmd(ctx, folder, result), env=system.env(ctx), cwd=ctx.work,
                log_path=logs / "query.log", timeout_s=QUERY_TIMEOUT_S)
    raw = json.loads(result.read_text())

    def summarise(part: dict) -> dict:
        metrics = score(part["ranked"], ctx.qrels)
        p50, p95 = percentiles(part["latency_ms"])
        return {"nDCG@10": metrics["nDCG@10"], "Recall@100": metrics["Recall@100"],
                "p50_ms": p50, "p95_ms": p95, "queries": len(part["latency_ms"])}

    out = summarise(raw)
    if raw.get("mode"):
        out["mode"] = raw["mode"]
    if raw.get("also"):
        out["also"] = {"mode": raw["also"]["mode"], **summarise(raw["also"])}
    return out


def run_http(system: System, ctx: Context, folder: Path, logs: Path) -> dict | None:
    port = free_port()
    side = system.http(ctx, folder, port)
    if side is None:
        return None
    env = {**system.env(ctx), **side.env}
    use_wrk = side.python_kind is None and ctx.args.generator == "wrk" and wrk_available()
    levels: list[Level] = []
    script = wrk_script(side.request, [t for _, t in ctx.queries], logs / "wrk.lua") if use_wrk else None
    warm, seconds = ctx.args.warmup, ctx.args.duration
    with Server(side.label, side.cmd, port, env=env, cwd=ctx.work, log_path=logs / "server.log",
                ready=side.ready) as server:
        rss_idle = server.rss_bytes()
        for clients in LEVELS:
            where = logs / f"load-{clients}.log"
            if use_wrk:
                if warm > 0:
                    run_wrk(server.url, script, clients, warm, env=env, cwd=ctx.work,
                            log_path=logs / f"warmup-{clients}.log")
                level = run_wrk(server.url, script, clients, seconds, env=env, cwd=ctx.work, log_path=where)
            elif side.python_kind:
                level = run_python(ctx.python(side.python_venv), side.python_kind, port, side.python_spec,
                                   ctx.queries_file, clients, seconds, warm, env=env, cwd=ctx.work, log_path=where)
            else:  # --generator python, or no wrk on this machine: the generic Python generator
                level = run_python(PROJECT_PYTHON, "http", port, side.request.spec(), ctx.queries_file, clients,
                                   seconds, warm, env=env, cwd=ctx.work, log_path=where)
            log.info("%s: %d clients: %.1f q/s, p50 %.1f ms, %d errors", side.label, clients, level.qps,
                     level.p50_ms, level.errors)
            levels.append(level)
        rss_loaded = server.rss_bytes()
    return {"label": side.label, "note": side.note, "start_s": server.start_seconds,
            "rss_idle_mb": rss_idle / 2**20, "rss_after_mb": rss_loaded / 2**20,
            "levels": {str(level.clients): level.as_dict() for level in levels}}


def run_system(system: System, ctx: Context, rep: int) -> dict:
    """Index, query and serve one system once; a failing step is recorded, never dropped."""
    record: dict = {"rep": rep, "system": system.name, "errors": {}}
    folder = ctx.work / "runs" / f"rep{rep}" / system.name
    logs = ctx.work / "logs" / f"rep{rep}" / system.name
    logs.mkdir(parents=True)
    steps: list[tuple[str, Callable]] = [("index", run_index), ("query", run_query)]
    if not ctx.args.skip_http:
        steps.append(("http", run_http))
    for step, fn in steps:
        log.info("rep %d, %s: %s", rep, system.name, step)
        try:
            value = fn(system, ctx, folder / system.folder, logs)
        except (envs.PeerUnavailable, RuntimeError, OSError, ValueError, KeyError) as exc:
            log.error("rep %d, %s, %s failed: %s", rep, system.name, step, exc)
            record["errors"][step] = str(exc)[-3000:]
            break  # the later steps need this one's output
        if value is not None:
            record[step] = value
    if not ctx.args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return record


# --- summary --------------------------------------------------------------------------------
def values(records: list[dict], system: str, *path: str) -> list[float]:
    out = []
    for r in records:
        if r["system"] != system:
            continue
        node = r
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, int | float):
            out.append(float(node))
    return out


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(xs: list[float], digits: int = 1) -> str:
    if not xs:
        return "—"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{min(xs):.{digits}f}–{max(xs):.{digits}f}]"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def tables(records: list[dict], systems: list[str], ctx: Context, unavailable: dict[str, str]) -> str:
    """The Markdown tables: indexing, in-process queries, HTTP, and the targets."""
    emb = "embedsvc" if "embedsvc" in systems else None

    def col(name: str, *path: str, digits: int = 1) -> str:
        return fmt(values(records, name, *path), digits)

    def vs(name: str, *path: str) -> str:
        """embedsvc's median ÷ ``name``'s (blank on embedsvc's own row)."""
        if emb is None or name == emb:
            return ""
        return ratio(med(values(records, emb, *path)), med(values(records, name, *path)))

    def label(name: str, *steps: str, text: str | None = None) -> str:
        text = text or SYSTEM_TYPES[name].label
        if name in unavailable:
            return f"{text} (unavailable)"
        failed = sum(1 for r in records if r["system"] == name and any(s in r["errors"] for s in steps))
        return f"{text} (failed in {failed} rep(s))" if failed else text

    lines = ["### Indexing SciFact end to end (fresh process, fresh folder)", "",
             f"{ctx.documents} documents; medians over {ctx.args.reps} rep(s) [min–max]. Ratios are "
             "embedsvc ÷ system: for docs/s higher is better for embedsvc, for peak RSS lower is better.", "",
             "| system | docs/s | wall s | peak RSS MB | nDCG@10 | Recall@100 | embedsvc docs/s ÷ | embedsvc RSS ÷ |",
             "|---|---|---|---|---|---|---|---|"]
    for name in systems:
        lines.append(
            f"| {label(name, 'index', 'query')} | {col(name, 'index', 'docs_per_s')} | "
            f"{col(name, 'index', 'seconds')} | {col(name, 'index', 'peak_rss_mb', digits=0)} | "
            f"{col(name, 'query', 'nDCG@10', digits=4)} | {col(name, 'query', 'Recall@100', digits=4)} | "
            f"{vs(name, 'index', 'docs_per_s')} | {vs(name, 'index', 'peak_rss_mb')} |")
    if emb:
        mode = next((r["query"].get("mode") for r in records if r["system"] == emb and "query" in r), "dense")
        also = values(records, emb, "query", "also", "nDCG@10")
        lines += ["", f"embedsvc is scored in `{mode}` mode, the comparable one (every peer here is dense only)"
                  + (f"; its default `auto` (hybrid: dense + BM25) scores nDCG@10 {fmt(also, 4)}." if also else ".")]

    lines += ["", f"### Queries in process ({len(ctx.queries)} test queries, one at a time, k=10, after a warm-up)", "",
              "embedsvc p50 ÷ system p50: lower is better for embedsvc.", "",
              "| system | p50 ms | p95 ms | embedsvc p50 ÷ |", "|---|---|---|---|"]
    for name in systems:
        lines.append(f"| {label(name, 'index', 'query')} | {col(name, 'query', 'p50_ms', digits=2)} | "
                     f"{col(name, 'query', 'p95_ms', digits=2)} | {vs(name, 'query', 'p50_ms')} |")
    if emb and values(records, emb, "query", "also", "p50_ms"):
        lines += ["", "embedsvc hybrid (its `auto` default) in process: p50 "
                      f"{col(emb, 'query', 'also', 'p50_ms', digits=2)} ms, "
                      f"p95 {col(emb, 'query', 'also', 'p95_ms', digits=2)} ms."]

    served = [n for n in systems if SYSTEM_TYPES[n].http is not System.http]
    if not ctx.args.skip_http and served:
        lines += ["", f"### HTTP search, loopback ({ctx.args.duration:g} s per level after a {ctx.args.warmup:g} s "
                      f"warm-up, cycling the {len(ctx.queries)} test queries, k=10)", "",
                  "Ratios are embedsvc ÷ system: for p50 lower is better for embedsvc, for q/s higher is better. "
                  "Errors are summed over the reps.", "",
                  "| server | generator | 1 client p50 ms | p95 ms | q/s | 8 clients q/s | errors | "
                  "32 clients q/s | p95 ms | errors | embedsvc p50@1 ÷ | embedsvc q/s@32 ÷ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        notes = []
        for name in served:
            runs = [r["http"] for r in records if r["system"] == name and "http" in r]
            gen = ", ".join(sorted({lv["generator"] for h in runs for lv in h["levels"].values()})) or "—"
            errors = {c: sum(values(records, name, "http", "levels", c, "errors")) for c in ("8", "32")}
            text = runs[0]["label"] if runs else ("naive server" if name == "plain" else name)
            lines.append(
                f"| {label(name, 'index', 'query', 'http', text=text)} | {gen} | "
                f"{col(name, 'http', 'levels', '1', 'p50_ms')} | {col(name, 'http', 'levels', '1', 'p95_ms')} | "
                f"{col(name, 'http', 'levels', '1', 'qps')} | {col(name, 'http', 'levels', '8', 'qps')} | "
                f"{errors['8']:.0f} | {col(name, 'http', 'levels', '32', 'qps')} | "
                f"{col(name, 'http', 'levels', '32', 'p95_ms')} | {errors['32']:.0f} | "
                f"{vs(name, 'http', 'levels', '1', 'p50_ms')} | {vs(name, 'http', 'levels', '32', 'qps')} |")
            if runs:
                notes.append(f"- {text}: {runs[0]['note']}; server RSS after the load "
                             f"{col(name, 'http', 'rss_after_mb', digits=0)} MB.")
        lines += [""] + notes

    lines += ["", "### Targets (printed, never asserted)", ""] + target_lines(records, systems)
    return "\n".join(lines)


def target_lines(records: list[dict], systems: list[str]) -> list[str]:
    emb = "embedsvc"
    if emb not in systems:
        return ["(embedsvc not in --systems)"]

    def m(system: str, *path: str) -> float | None:
        return med(values(records, system, *path))

    out = []
    peers = [p for p in PEERS if p in systems and m(p, "index", "docs_per_s")]
    e = m(emb, "index", "docs_per_s")
    if peers and e:
        best = max(peers, key=lambda p: m(p, "index", "docs_per_s"))
        r = e / m(best, "index", "docs_per_s")
        out.append(f"- indexing docs/s ≥ 2× the fastest peer ({best}): {r:.2f}× → {'met' if r >= 2 else 'not met'}")
    e = m(emb, "index", "peak_rss_mb")
    rss = {p: m(p, "index", "peak_rss_mb") for p in PEERS if p in systems and m(p, "index", "peak_rss_mb")}
    if rss and e:
        worst = min(rss.values())
        out.append(f"- peak RSS below every peer's: embedsvc {e:.0f} MB vs lowest peer {worst:.0f} MB "
                   f"({min(rss, key=rss.get)}) → {'met' if e < worst else 'not met'}")
    e, t = m(emb, "http", "levels", "1", "p50_ms"), m("txtai", "http", "levels", "1", "p50_ms")
    if e and t:
        out.append(f"- HTTP p50 at 1 client ≤ 0.5× txtai's: {e / t:.2f}× → {'met' if e / t <= 0.5 else 'not met'}")
    e, t = m(emb, "http", "levels", "32", "qps"), m("txtai", "http", "levels", "32", "qps")
    if e and t:
        out.append(f"- q/s at 32 clients ≥ 3× txtai's: {e / t:.2f}× → {'met' if e / t >= 3 else 'not met'}")
    e, p = m(emb, "query", "p50_ms"), m("plain", "query", "p50_ms")
    if e and p:
        out.append(f"- in-process p50 ≤ 0.6× plain's: {e / p:.2f}× → {'met' if e / p <= 0.6 else 'not met'}")
    return out or ["(not enough results to compare)"]


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def project_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("embedsvc", "torch", "sentence-transformers", "transformers", "faiss-cpu", "fastapi", "uvicorn",
                 "onnxruntime"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--docs", type=int, help="index only N documents (smoke runs; default: all 5,183)")
    p.add_argument("--queries", type=int, help="use only the first N test queries (smoke runs; default: all 300)")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"comma list of {', '.join(ALL_SYSTEMS)}")
    p.add_argument("--skip-http", action="store_true", help="no HTTP measurements")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per HTTP load level (default 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of HTTP warm-up before each level (default 5)")
    p.add_argument("--generator", choices=("wrk", "python"), default="wrk",
                   help="HTTP load generator for the servers wrk can drive (default wrk; Chroma always uses "
                        "the Python one, which embeds in the client as Chroma does)")
    p.add_argument("--out", type=Path, default=HERE / "results.json", help="results JSON")
    p.add_argument("--embedsvc-arg", action="append", default=[], metavar="ARG",
                   help="extra arguments for `embedsvc index build`, split as a shell would, repeatable "
                        "(e.g. --embedsvc-arg='--backend onnx')")
    p.add_argument("--embedsvc-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for every embedsvc process (build, queries, server), e.g. EMBEDSVC_BACKEND=onnx")
    p.add_argument("--embedsvc-mode", default="dense", help="embedsvc's search mode to compare (default dense)")
    p.add_argument("--embedsvc-query-cache", action="store_true",
                   help="keep embedsvc's query-embedding cache on (off by default: the load cycles 300 queries, "
                        "and no peer caches)")
    p.add_argument("--no-hybrid", action="store_true", help="skip embedsvc's hybrid side note")
    p.add_argument("--work", type=Path, help="work folder (default: a new temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work folder and the built indexes")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.embedsvc_arg = [part for item in args.embedsvc_arg for part in shlex.split(item)]
    unknown = [s for s in args.systems if s not in SYSTEM_TYPES]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(ALL_SYSTEMS)}")
    for item in args.embedsvc_env:
        if "=" not in item:
            p.error(f"--embedsvc-env wants KEY=VALUE, got {item!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    sys.path.insert(0, str(REPO))
    work = args.work or Path(tempfile.mkdtemp(prefix="embedsvc-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    log.info("work folder %s", work)
    started = time.time()
    try:
        return _run(args, work, started, load_at_start)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, started: float, load_at_start: tuple) -> int:
    data, documents, queries, qrels = prepare_data(work, args.docs, args.queries)
    model = unpack_model(work / "home")
    embedsvc_env = {"EMBEDSVC_QUERY_CACHE_SIZE": "0"} if not args.embedsvc_query_cache else {}
    embedsvc_env.update(dict(item.split("=", 1) for item in args.embedsvc_env))
    ctx = Context(args, work, data, work / "queries.json", queries, qrels, model, documents, base_env(work),
                  embedsvc_env)
    log.info("%d documents, %d test queries, model %s", documents, len(queries), model)
    if "embedsvc" in args.systems:
        export_onnx(work / "home", ctx.env)

    # Build every peer's venv first (installs are never timed); a failure is reported.
    unavailable: dict[str, str] = {}
    versions = {"embedsvc (project venv)": project_versions()}
    for name in args.systems:
        venv = SYSTEM_TYPES[name].venv
        if venv is None:
            continue
        try:
            envs.ensure(venv)
            versions[name] = envs.versions(venv)
        except envs.PeerUnavailable as exc:
            log.error("%s unavailable: %s", name, exc)
            unavailable[name] = str(exc)[-3000:]
    wrk = check_wrk_version()
    if args.generator == "wrk" and not wrk_available() and not args.skip_http:
        log.warning("wrk not found (apt-get install -y wrk): every server is loaded by the Python generator")

    records: list[dict] = []
    runnable = [s for s in args.systems if s not in unavailable]
    for rep in range(1, args.reps + 1):
        shift = (rep - 1) % max(1, len(runnable))
        order = runnable[shift:] + runnable[:shift]
        log.info("rep %d/%d: %s", rep, args.reps, " ".join(order))
        for name in order:
            records.append(run_system(SYSTEM_TYPES[name](), ctx, rep))

    info = {**machine(), "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()}
    result = {"benchmark": "benchmarks/peers/text.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                                 time.localtime(started)),
              "seconds": time.time() - started, "machine": info, "versions": versions, "wrk": wrk,
              "config": {"reps": args.reps, "documents": documents, "subset": args.docs is not None,
                         "systems": args.systems, "duration_s": args.duration, "warmup_s": args.warmup,
                         "generator": args.generator, "queries": len(queries),
                         "levels": list(LEVELS), "embedsvc_args": args.embedsvc_arg, "embedsvc_env": embedsvc_env,
                         "embedsvc_mode": args.embedsvc_mode, "model": "all-MiniLM-L6-v2 (bundled)"},
              "unavailable": unavailable, "runs": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(report(result, records, ctx, unavailable))
    print(f"\nresults: {args.out}")
    return 0


def report(result: dict, records: list[dict], ctx: Context, unavailable: dict[str, str]) -> str:
    m = result["machine"]
    lines = [f"## SciFact side by side ({time.strftime('%Y-%m-%d', time.localtime())})", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, Python {m['python']}; load average "
             f"{m['load_average_at_start'][0]:.2f} at start, {m['load_average_at_end'][0]:.2f} at end. "
             f"Model all-MiniLM-L6-v2 (one local folder for all), {ctx.documents} documents"
             + (" (a SUBSET: judged documents first; not SciFact's nDCG)" if ctx.args.docs else "")
             + f", {len(ctx.queries)} test queries, {ctx.args.reps} rep(s), systems alternating within each rep.", ""]
    busiest = max(m["load_average_at_start"][0], m["load_average_at_end"][0])
    if busiest > 0.5 * (m["cpus"] or 1):
        lines += [f"**Warning: the machine was busy (load average {busiest:.1f} on {m['cpus']} CPUs): "
                  "these figures are not reliable; run again on an idle machine.**", ""]
    if ctx.embedsvc_env or ctx.args.embedsvc_arg:
        lines += [f"embedsvc build args {ctx.args.embedsvc_arg or '(defaults)'}, environment {ctx.embedsvc_env} "
                  "(its query-embedding cache is off unless --embedsvc-query-cache: no peer caches).", ""]
    lines.append(tables(records, result["config"]["systems"], ctx, unavailable))
    lines += ["", "### Versions", "", "| system | versions |", "|---|---|"]
    for name, found in result["versions"].items():
        lines.append(f"| {name} | {', '.join(f'{k} {v}' for k, v in found.items())} |")
    lines.append(f"| load generator | {result['wrk']} (Chroma: systems/loadgen.py) |")
    problems = [(n, "unavailable", why) for n, why in unavailable.items()]
    problems += [(r["system"], f"rep {r['rep']} {step}", why) for r in records for step, why in r["errors"].items()]
    if problems:
        lines += ["", "### Failures", ""]
        for name, where, why in problems:
            short = " ⏎ ".join(why.strip().splitlines()[-6:])
            lines.append(f"- {name}, {where}: {short[-800:]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
