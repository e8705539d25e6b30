"""API keys: who may call the server, with which scope, stored only as SHA-256 hashes.

A key file holds one ``<sha256 hex of key> <scope> <name>`` line per key (``#`` comments
allowed); ``embedsvc keys create`` appends to it and prints the key once. Scopes nest:
``admin`` may do what ``write`` may, ``write`` what ``read`` may. The server re-reads the
file when it changes, so a revoked key stops working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import IntEnum

from embedsvc.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "esk_"
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_SHA = re.compile(r"[0-9a-f]{64}")
# How often (seconds) a request may trigger a look at the key file's modification time.
_RECHECK = 1.0


class Scope(IntEnum):
    read = 1
    write = 2
    admin = 3


class KeyFileError(ValueError):
    """A key file or key setting that cannot be read; the message names the line."""


@dataclass(frozen=True)
class ApiKey:
    sha256: str
    scope: Scope
    name: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_line(line: str, where: str) -> ApiKey | None:
    """One key from ``<sha256> <scope> <name>``; None for blank and comment lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.split()
    if len(parts) != 3:
        raise KeyFileError(f"{where}: expected '<sha256 of key> <scope> <name>', got {len(parts)} fields")
    sha, scope, name = parts
    if not _SHA.fullmatch(sha):
        raise KeyFileError(f"{where}: the first field must be the key's SHA-256 as 64 lowercase "
                           "hex digits (never the key itself)")
    if scope not in Scope.__members__:
        raise KeyFileError(f"{where}: scope '{scope}' is not one of {', '.join(Scope.__members__)}")
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"{where}: name '{name}' must be 1-64 letters, digits, '_', '.', '@' or '-'")
    return ApiKey(sha, Scope[scope], name)


def read_keys(settings: Settings) -> list[ApiKey]:
    """Keys from the key file (if it exists) and from ``EMBEDSVC_API_KEYS``."""
    keys = []
    path = settings.keys_path
    if path.exists():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            keys.append(parse_line(line, f"{path}:{number}"))
    for number, entry in enumerate(settings.api_keys.split(","), 1):
        keys.append(parse_line(entry, f"EMBEDSVC_API_KEYS entry {number}"))
    found = [k for k in keys if k is not None]
    names = [k.name for k in found]
    repeated = {n for n in names if names.count(n) > 1}
    if repeated:
        raise KeyFileError(f"key names must be unique; repeated: {', '.join(sorted(repeated))}")
    return found


def create_key(settings: Settings, scope: Scope, name: str) -> str:
    """A new random key, its hash appended to the key file (mode 0600); the key is returned
    once and is not stored anywhere."""
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"name '{name}' must be 1-64 letters, digits, '_', '.', '@' or '-'")
    if any(k.name == name for k in read_keys(settings)):
        raise KeyFileError(f"a key named '{name}' exists; revoke it first or pick another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    path = settings.keys_path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(f"{digest(key)} {scope.name} {name}\n")
    return key


def revoke_key(settings: Settings, name: str) -> None:
    """Remove the named key's line from the key file (atomically replaced)."""
    path = settings.keys_path
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [ln for n, ln in enumerate(lines, 1)
            if (key := parse_line(ln, f"{path}:{n}")) is None or key.name != name]
    if len(kept) == len(lines):
        raise KeyFileError(f"no key named '{name}' in {path}")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(ln + "\n" for ln in kept))
    os.replace(tmp, path)


class KeyRing:
    """The server's view of the keys, reloaded when the key file changes.

    A key is looked up by hashing what the client sent and comparing it with every stored
    hash in constant time, so neither the key nor the position of a match leaks by timing.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._keys = read_keys(settings)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        # Decided once: a server started with keys never opens up, even when the last key
        # is revoked or the file is emptied (then every call is refused).
        self.enabled = bool(self._keys)

    def find(self, presented: str) -> ApiKey | None:
        self._reload_if_changed()
        wanted = digest(presented)
        match = None
        for key in self._keys:
            if hmac.compare_digest(key.sha256, wanted):
                match = key
        return match

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.settings.keys_path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        if time.monotonic() - self._checked < _RECHECK:
            return
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._keys = read_keys(self.settings)
            except (KeyFileError, OSError, ValueError) as exc:  # a half-edited file must not lock everyone out
                log.error("keeping the previous API keys: %s", exc)
                return
            if self.enabled and not self._keys:
                log.error("no API keys left in %s: every call is refused until one is created",
                          self.settings.keys_path)
