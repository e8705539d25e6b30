"""One virtualenv per peer system, built on demand, never touching the project's venv.

The peers (txtai, Chroma, LanceDB, hnswlib) pull dependencies that clash with ours and
with each other, so each lives in ``benchmarks/peers/.venvs/<name>``. Every venv that needs
torch installs the pinned CPU wheel first (an unpinned torch pulls a multi-GB CUDA build)
and keeps it pinned while the rest is resolved. A marker file records the exact
requirements a venv was built from: a venv whose marker is missing or differs (an install
that failed or was killed, or a changed pin) is built again from scratch.

    python benchmarks/peers/envs.py            # build all four, print their versions

Other scripts use :func:`ensure` (the venv's python, installing it once) and
:func:`versions` (what is installed, for the results).
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("benchmarks.peers.envs")

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
TORCH_PIN = "torch==2.13.0"
SENTENCE_TRANSFORMERS_PIN = "sentence-transformers==6.3.0"

# Installed in order, one pip call per entry, so torch is in place before anything that
# depends on it is resolved. Current releases as of this benchmark; change a pin and the
# venv is rebuilt on next use.
SPECS: dict[str, list[list[str]]] = {
    "txtai": [[TORCH_PIN], [TORCH_PIN, SENTENCE_TRANSFORMERS_PIN, "txtai[api]==9.14.0"]],
    "chromadb": [[TORCH_PIN], [TORCH_PIN, SENTENCE_TRANSFORMERS_PIN, "chromadb==1.5.9"]],
    "lancedb": [[TORCH_PIN], [TORCH_PIN, SENTENCE_TRANSFORMERS_PIN, "lancedb==0.40.0", "pandas"]],
    "hnswlib": [["hnswlib==0.8.0", "numpy"]],
}
# Distributions whose versions a result should carry.
KEY_PACKAGES: dict[str, list[str]] = {
    "txtai": ["txtai", "torch", "sentence-transformers", "transformers", "faiss-cpu", "fastapi", "uvicorn"],
    "chromadb": ["chromadb", "torch", "sentence-transformers", "transformers"],
    "lancedb": ["lancedb", "pylance", "pyarrow", "torch", "sentence-transformers", "transformers"],
    "hnswlib": ["hnswlib", "numpy"],
}
INSTALL_TIMEOUT_S = 3600
_MARKER = ".benchmark-installed.json"

# Failures seen in this process: one failed install is not retried for every repetition.
_failed: dict[str, str] = {}


class PeerUnavailable(Exception):
    """A peer's venv could not be built; the message says why (the tail of pip's output)."""


def venv_dir(name: str) -> Path:
    """Folder of ``name``'s virtualenv."""
    if name not in SPECS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(SPECS)}")
    return VENVS / name


def _python(name: str) -> Path:
    return venv_dir(name) / "bin" / "python"


@contextmanager
def _locked(name: str):
    """Hold an exclusive lock for ``name``: two benchmarks never build one venv at once."""
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_installed(name: str) -> bool:
    marker = venv_dir(name) / _MARKER
    try:
        return json.loads(marker.read_text()) == SPECS[name] and _python(name).is_file()
    except (OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_logged(cmd: list[str], logfile: Path) -> None:
    """Run ``cmd`` appending its output to ``logfile``; raise PeerUnavailable on failure."""
    with open(logfile, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=INSTALL_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        raise PeerUnavailable(f"`{' '.join(cmd[-3:])}` failed ({rc}); log {logfile}:\n{_tail(logfile)}")


def _install(name: str) -> None:
    folder = venv_dir(name)
    logfile = VENVS / f"{name}.install.log"
    logfile.write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    log.info("creating the %s venv in %s (log: %s)", name, folder, logfile)
    # The venv is based on the interpreter running us (the project's python 3.11).
    _run_logged([sys.executable, "-m", "venv", str(folder)], logfile)
    # no pip cache: a benchmark leaves nothing behind outside its venvs
    pip = [str(_python(name)), "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir"]
    for step in SPECS[name]:
        log.info("%s: pip install %s", name, " ".join(step))
        _run_logged(pip + step, logfile)
    (folder / _MARKER).write_text(json.dumps(SPECS[name]))
    log.info("%s venv ready", name)


def ensure(name: str) -> Path:
    """Path of ``name``'s venv python, creating and installing the venv the first time.

    Args:
        name: one of ``txtai``, ``chromadb``, ``lancedb``, ``hnswlib``.

    Returns:
        The venv's ``bin/python``.

    Raises:
        PeerUnavailable: the install failed (now or earlier in this process); the message
            carries the tail of pip's output.
    """
    venv_dir(name)
    if name in _failed:
        raise PeerUnavailable(_failed[name])
    if _is_installed(name):
        return _python(name)
    with _locked(name):
        if not _is_installed(name):  # another process may have built it while we waited
            try:
                _install(name)
            except PeerUnavailable as exc:
                _failed[name] = str(exc)
                raise
    return _python(name)


_VERSIONS_SCRIPT = """
import importlib.metadata as md, json, platform, sys
out = {"python": platform.python_version()}
for dist in sys.argv[1:]:
    try:
        out[dist] = md.version(dist)
    except md.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def versions(name: str) -> dict[str, str]:
    """Installed versions of ``name``'s key packages (those present), and its python's.

    Args:
        name: a peer whose venv :func:`ensure` has built.

    Returns:
        Distribution name to version, e.g. ``{"python": "3.11.7", "txtai": "9.14.0", ...}``.

    Raises:
        PeerUnavailable: the venv is not installed.
    """
    if not _is_installed(name):
        raise PeerUnavailable(_failed.get(name, f"the {name} venv is not installed (call ensure first)"))
    proc = subprocess.run([str(_python(name)), "-c", _VERSIONS_SCRIPT, *KEY_PACKAGES[name]],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PeerUnavailable(f"cannot read versions in the {name} venv: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows, failed = [], 0
    for name in SPECS:
        try:
            ensure(name)
            found = versions(name)
            rows.append((name, ", ".join(f"{k} {v}" for k, v in found.items())))
        except PeerUnavailable as exc:
            failed += 1
            rows.append((name, "UNAVAILABLE: " + str(exc).replace("\n", " ⏎ ")[-600:]))
    print("\n| peer | versions |\n|---|---|")
    for name, text in rows:
        print(f"| {name} | {text} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
