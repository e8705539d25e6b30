"""Processes the benchmark starts: timed and memory-sampled runs, and servers that always stop.

Every process is started in its own session (its own process group), so it and whatever
it spawns (Chroma's server, worker processes) can be ended together, on error too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("benchmarks.peers.procs")

_PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_EVERY_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc (one pass)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after its end
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (0 once they are gone)."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
        todo.extend(tree.get(p, ()))
    return total


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace_s``; never raises."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; members of its group may not be
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return


@dataclass
class Measured:
    """What one timed run cost: wall seconds, peak memory, exit status, where its output is."""

    seconds: float
    peak_rss_bytes: int
    maxrss_child_bytes: int
    sampled_tree_bytes: int
    returncode: int
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_measured(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
                 timeout_s: float) -> Measured:
    """Run ``cmd`` to its end: wall time, and peak RSS of its process tree.

    The peak is the larger of the kernel's ``ru_maxrss`` for the child (which covers the
    descendants it waited for, one at a time) and the largest sum over the live tree seen
    by sampling /proc every 50 ms (which covers descendants running side by side).
    """
    log.info("$ %s", " ".join(cmd))
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
            done.wait(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timer = threading.Timer(timeout_s, lambda: kill_group(proc, grace_s=2.0))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    finally:
        timer.cancel()
        done.set()
        sampler.join()
        kill_group(proc, grace_s=0.5)  # leftovers of the group, if any
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss * 1024  # Linux reports kilobytes
    return Measured(seconds, max(maxrss, peak[0]), maxrss, peak[0], proc.returncode, log_path)


def run_checked(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
                timeout_s: float) -> str:
    """Run ``cmd``; its stdout on success, RuntimeError with the log's tail otherwise."""
    log.info("$ %s", " ".join(cmd))
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc, grace_s=2.0)
            raise RuntimeError(f"timed out after {timeout_s:.0f} s: {' '.join(cmd[:4])}…") from None
        finally:
            kill_group(proc, grace_s=0.5)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[:4])}…\n{tail}")
    return stdout


class Server:
    """A server process in its own group, waited for until ``ready()`` and always stopped.

    Args:
        cmd: the command that serves.
        ready: called with the server's base URL until it returns True (raises or returns
            False while the server is not ready).
    """

    def __init__(self, name: str, cmd: list[str], port: int, *, env: dict[str, str], cwd: Path,
                 log_path: Path, ready: Callable[[str], bool], start_timeout_s: float = 600.0):
        self.name, self.cmd, self.port = name, cmd, port
        self.url = f"http://127.0.0.1:{port}"
        self.env, self.cwd, self.log_path = env, cwd, log_path
        self.ready, self.start_timeout_s = ready, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def __enter__(self) -> Server:
        log.info("starting %s: %s", self.name, " ".join(self.cmd))
        self._out = open(self.log_path, "w")
        start = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self._wait_ready(start)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.start_seconds = time.perf_counter() - start
        log.info("%s ready in %.1f s", self.name, self.start_seconds)
        return self

    def _wait_ready(self, start: float) -> None:
        last = ""
        while time.perf_counter() - start < self.start_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before it was ready:\n"
                                   f"{self.tail()}")
            try:
                if self.ready(self.url):
                    return
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {self.start_timeout_s:.0f} s ({last}):\n{self.tail()}")

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid) if self.proc else 0

    def tail(self, lines: int = 15) -> str:
        self._out.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            log.info("%s stopped", self.name)
            self.proc = None
        self._out.close()


def http_json(url: str, body: dict | None = None, timeout: float = 30.0):
    """GET (or POST ``body`` as JSON) and decode the JSON answer; raises on a non-2xx."""
    import json

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")
