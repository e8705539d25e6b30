"""One consumer of a Redis stream, writing its entries into a collection, at least once.

Delivery. The consumer reads with a consumer group (``XREADGROUP``): an entry it has read
stays *pending* until it acknowledges it (``XACK``), and it acknowledges a batch only after
the batch's one ``upsert_documents`` transaction has committed (and been fsynced). A crash
at any point leaves the unacknowledged entries pending; they are read again, by this
consumer when it restarts (it reads its own pending entries, ID ``0``, before new ones,
``>``) or by another one once they have been idle ``--claim-min-idle`` seconds
(``XAUTOCLAIM``). Writing an entry twice is harmless: a document is keyed by its id, and a
second write of the same text changes nothing. So nothing acknowledged is lost and nothing
is stored twice. Within one batch, the last entry of an id wins.

Malformed entries (:mod:`embedsvc.ingest.entries`) are copied to the dead-letter stream,
with their reason, in the same ``MULTI``/``EXEC`` as the batch's ``XACK``: both happen or
neither does.

Order across consumers: an entry claimed from a dead consumer may be written after a newer
entry of the same id that another consumer already wrote, and then wins. With one consumer
per group (restarted under the same name) the stream's order is kept.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from embedsvc.collection import open_store
from embedsvc.ingest import progress
from embedsvc.ingest.entries import MalformedEntry, parse_entry
from embedsvc.ingest.options import IngestOptions
from embedsvc.live.writes import DocumentIn, upsert_documents
from embedsvc.settings import Settings
from embedsvc.store import Store

log = logging.getLogger(__name__)

# The longest one blocking read lasts: how soon a stop (signal, idle limit) is noticed.
POLL_SECONDS = 1.0
# How often the group's lag is read and shown, and progress written for /metrics if it changed.
PROGRESS_SECONDS = 1.0
# How often progress is written even when nothing changed (its time says the consumer lives).
HEARTBEAT_SECONDS = 30.0
# How often a progress line is logged (the console's status line is live).
LOG_SECONDS = 30.0
# A connection lost while running is retried with backoff for about a minute, then the
# command fails (and its unacknowledged entries wait for the next consumer).
RETRY = Retry(ExponentialBackoff(cap=10, base=0.5), retries=8)

Entry = tuple[bytes, dict[bytes, bytes]]


class IngestError(Exception):
    """The ingest cannot start or go on; the message says what to change."""


@dataclass(frozen=True)
class StreamAddress:
    """Where the stream is: ``redis://[USER:PASSWORD@]HOST[:PORT][/DB]/STREAM``."""

    host: str
    port: int
    db: int
    stream: str
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def shown(self) -> str:
        """The address without the password, for messages and the progress table."""
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/{self.db}/{self.stream}"


def parse_url(url: str) -> StreamAddress:
    """Read ``--from``; a stream name with ``/`` is written ``%2F``.

    Raises:
        IngestError: naming what is wrong and the form to use.
    """
    form = "use redis://HOST:PORT/STREAM (or redis://HOST:PORT/DB/STREAM, rediss:// for TLS)"
    parts = urlsplit(url)
    if parts.password:  # never echoed in a message
        url = url.replace(f":{parts.password}@", ":***@", 1)
    if parts.scheme not in ("redis", "rediss"):
        raise IngestError(f"--from {url!r}: not a Redis URL; {form}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise IngestError(f"--from {url!r}: the port is not a number from 0 to 65535; {form}") from None
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    if len(segments) == 2 and segments[0].isdigit():
        db, stream = int(segments[0]), segments[1]
    elif len(segments) == 1:
        db, stream = 0, segments[0]
    else:  # none, or more than DB/STREAM
        db, stream = 0, ""
    problem = ("no host" if not parts.hostname else "no stream name" if not stream
               else "a query or fragment, which is not understood" if parts.query or parts.fragment
               else None)
    if problem:
        raise IngestError(f"--from {url!r}: {problem}; {form}")
    return StreamAddress(parts.hostname, port, db, stream, unquote(parts.username or "") or None,
                         unquote(parts.password or "") or None, parts.scheme == "rediss")


def connect(address: StreamAddress) -> redis.Redis:
    """A client that rides out short outages with backoff (:data:`RETRY`), once a first
    contact without retries answered: a wrong address is a one-line error at once."""
    where: dict[str, Any] = dict(
        host=address.host, port=address.port, db=address.db, username=address.username,
        password=address.password, ssl=address.tls, socket_connect_timeout=5,
        socket_timeout=POLL_SECONDS + 10)
    probe = redis.Redis(**where, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except redis.RedisError as exc:
        raise IngestError(f"cannot reach Redis at {address.shown()}: {exc}") from None
    finally:
        probe.close()
    return redis.Redis(**where, retry=RETRY)


@dataclass(frozen=True)
class Snapshot:
    """What the consumer has done so far, for the console."""

    ingested: int
    dead_lettered: int
    lag: int | None
    pending: int | None
    seconds: float


@dataclass
class _Tally:
    ingested: int = 0
    dead_lettered: int = 0
    recorded_ingested: int = 0
    recorded_dead: int = 0
    last_id: str | None = None

    @property
    def handled(self) -> int:
        return self.ingested + self.dead_lettered


class StreamConsumer:
    """Reads one stream of one group as one consumer, a batch per transaction.

    Args:
        client: connected (see :func:`connect`).
        store: the collection's database (durable: commits are fsynced before the ack).
        embed: the collection has a model: written documents are queued for embedding.
        on_progress: called at each progress record (about every second).
    """

    def __init__(self, settings: Settings, client: redis.Redis, store: Store, embed: bool,
                 address: StreamAddress, options: IngestOptions, group: str, consumer: str,
                 dead_stream: str, on_progress: Callable[[Snapshot], None] | None = None):
        self.settings, self.client, self.store, self.embed = settings, client, store, embed
        self.address, self.options = address, options
        self.stream, self.group, self.consumer, self.dead_stream = (
            address.stream, group, consumer, dead_stream)
        self.on_progress = on_progress
        self.tally = _Tally()
        self.stop_reason: str | None = None
        self._started = time.monotonic()
        self._last_entry = self._started
        self._last_claim = float("-inf")
        self._last_check = self._last_write = self._started
        self._last_log = self._started
        self.last_snapshot = Snapshot(0, 0, None, None, 0.0)  # as last shown and recorded

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> Snapshot:
        """Consume until asked to stop (or a stop option says so); returns the final figures."""
        self._ensure_group()
        progress.ensure_table(self.store)
        self._read_own_pending()
        while not self._done():
            if time.monotonic() - self._last_claim >= self.options.claim_min_idle / 2:
                self._claim_abandoned()
            entries = self._collect()
            if entries:
                self._handle(entries)
            elif self._idle_too_long():
                self.stop_reason = f"idle for {self.options.stop_when_idle:g} s"
            self._record_progress()
        log.info("stopping (%s)", self.stop_reason)
        return self._record_progress(force=True)

    def request_stop(self, why: str) -> None:
        """Stop after the batch in hand (safe from a signal handler: sets a flag only)."""
        self.stop_reason = why

    def _done(self) -> bool:
        stop_after = self.options.stop_after
        if stop_after is not None and self.tally.handled >= stop_after:
            self.stop_reason = self.stop_reason or f"{stop_after} entries done"
        return self.stop_reason is not None

    def _want(self) -> int:
        """Entries to ask for: a batch, or what is left before --stop-after."""
        if self.options.stop_after is None:
            return self.options.batch
        return max(0, min(self.options.batch, self.options.stop_after - self.tally.handled))

    def _idle_too_long(self) -> bool:
        limit = self.options.stop_when_idle
        return limit is not None and time.monotonic() - self._last_entry >= limit

    # --- reading ----------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        """Create the group at the start of the stream (and the stream) if missing."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s of %s", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise IngestError(f"cannot use {self.address.shown()} as a stream: {exc}") from None

    def _read_own_pending(self) -> None:
        """Entries this consumer read before it stopped or crashed, never acknowledged."""
        cursor: bytes | str = "0"
        while not self._done():
            entries = self._read(cursor, self._want())
            if not entries:
                return
            log.info("%d entries read before a restart and never acknowledged: reading them again",
                     len(entries))
            self._handle(entries)
            cursor = entries[-1][0]

    def _claim_abandoned(self) -> None:
        """Take over entries idle too long with any consumer (dead ones, or replies lost)."""
        self._last_claim = time.monotonic()
        cursor: bytes | str = "0-0"
        min_idle = int(self.options.claim_min_idle * 1000)
        while not self._done():
            cursor, entries, *_ = self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle, start_id=cursor, count=self._want())
            entries = [(entry_id, fields or {}) for entry_id, fields in entries]
            if entries:
                log.info("claimed %d entries idle for over %g s with other consumers",
                         len(entries), self.options.claim_min_idle)
                self._handle(entries)
            if cursor in (b"0-0", "0-0"):
                return

    def _collect(self) -> list[Entry]:
        """New entries: wait (a poll at a time) for the first, then at most --max-wait
        seconds for the batch to fill; entries already there come at once."""
        entries: list[Entry] = []
        deadline: float | None = None
        while (want := self._want() - len(entries)) > 0 and self.stop_reason is None:
            now = time.monotonic()
            wait = self._first_wait(now) if deadline is None else deadline - now
            if wait <= 0:
                break
            got = self._read(">", want, block=min(wait, POLL_SECONDS))
            if got:
                deadline = deadline or time.monotonic() + self.options.max_wait
                entries += got
            elif deadline is None:
                break  # nothing came during one poll: let the loop check its stops
        return entries

    def _first_wait(self, now: float) -> float:
        limit = self.options.stop_when_idle
        return POLL_SECONDS if limit is None else min(POLL_SECONDS, limit - (now - self._last_entry))

    def _read(self, cursor: bytes | str, count: int, block: float | None = None) -> list[Entry]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count,
                                       block=None if block is None else max(1, int(block * 1000)))
        return [(entry_id, fields or {}) for entry_id, fields in reply[0][1]] if reply else []

    # --- writing ----------------------------------------------------------------------------
    def _handle(self, entries: Sequence[Entry]) -> None:
        """One batch: its documents in one transaction, then dead letters and acks at once."""
        docs: dict[str, DocumentIn] = {}
        dead: list[tuple[Entry, str]] = []
        for entry in entries:
            try:
                doc = parse_entry(entry[1], self.settings)
            except MalformedEntry as exc:
                dead.append((entry, exc.reason))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug of ours must not wedge the stream
                log.exception("entry %s: reading it failed unexpectedly", entry[0].decode())
                dead.append((entry, f"unexpected error reading it: {type(exc).__name__}: {exc}"))
                continue
            docs[doc.id] = doc  # the same id again in this batch: the last one wins
        if docs:
            upsert_documents(self.store, list(docs.values()), embed=self.embed)
        self._settle(entries, dead)
        for (entry_id, _), reason in dead:
            log.warning("entry %s of %s moved to %s: %s", entry_id.decode(), self.stream,
                        self.dead_stream, reason)
        self.tally.ingested += len(entries) - len(dead)
        self.tally.dead_lettered += len(dead)
        self.tally.last_id = entries[-1][0].decode()
        self._last_entry = time.monotonic()

    def _settle(self, entries: Sequence[Entry], dead: Sequence[tuple[Entry, str]]) -> None:
        """Copy the malformed entries to the dead-letter stream and acknowledge the whole
        batch, in one MULTI/EXEC: an entry is never acknowledged without its dead letter."""
        pipe = self.client.pipeline(transaction=True)
        for (entry_id, fields), reason in dead:
            pipe.xadd(self.dead_stream, {**fields, b"reason": reason.encode(),
                                         b"source_stream": self.stream.encode(),
                                         b"source_id": entry_id, b"group": self.group.encode(),
                                         b"consumer": self.consumer.encode()})
        pipe.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()

    # --- progress ---------------------------------------------------------------------------
    def _record_progress(self, force: bool = False) -> Snapshot:
        """Every PROGRESS_SECONDS (and at the end): the group's lag, shown; written to SQLite
        for /metrics when something changed, or at least every HEARTBEAT_SECONDS (an idle
        consumer does not fsync every second, and a stale time says none is running)."""
        now = time.monotonic()
        if not force and now - self._last_check < PROGRESS_SECONDS:
            return self.last_snapshot
        self._last_check = now
        tally = self.tally
        lag, pending = self._lag()
        snapshot = Snapshot(tally.ingested, tally.dead_lettered, lag, pending, now - self._started)
        changed = (snapshot.ingested, snapshot.dead_lettered, lag, pending) != (
            tally.recorded_ingested, tally.recorded_dead, self.last_snapshot.lag,
            self.last_snapshot.pending)
        if force or changed or now - self._last_write >= HEARTBEAT_SECONDS:
            self._last_write = now
            progress.record(self.store, self.stream, self.group, self.consumer, self.address.shown(),
                            progress.Delta(tally.ingested - tally.recorded_ingested,
                                           tally.dead_lettered - tally.recorded_dead, lag, pending,
                                           tally.last_id))
            tally.recorded_ingested, tally.recorded_dead = tally.ingested, tally.dead_lettered
        self.last_snapshot = snapshot
        if self.on_progress is not None:
            self.on_progress(snapshot)
        if force or now - self._last_log >= LOG_SECONDS:
            self._last_log = now
            log.info("%s", summary_line(snapshot))
        return snapshot

    def _lag(self) -> tuple[int | None, int | None]:
        """(entries the group has not read, entries read and not acknowledged)."""
        for group in self.client.xinfo_groups(self.stream):
            if group["name"] == self.group.encode():
                return group.get("lag"), group.get("pending")
        return None, None


def summary_line(snapshot: Snapshot) -> str:
    """One line for the console and the log."""
    lag = "?" if snapshot.lag is None else snapshot.lag
    pending = "?" if snapshot.pending is None else snapshot.pending
    return (f"{snapshot.ingested} entries ingested, {snapshot.dead_lettered} dead-lettered in "
            f"{snapshot.seconds:.1f} s; lag {lag}, pending {pending}")


def ingest(settings: Settings, collection: str, options: IngestOptions,
           on_progress: Callable[[Snapshot], None] | None = None) -> Snapshot:
    """Run one consumer until it is stopped (SIGINT/SIGTERM, --stop-after, --stop-when-idle).

    The collection is checked before Redis is touched, so a typo creates no stream and no
    group. A first SIGINT or SIGTERM finishes the batch in hand (written and acknowledged);
    a second one interrupts it (left unacknowledged: read again later).

    Raises:
        CollectionNotFound: no such collection.
        IngestError: a bad --from, Redis unreachable or lost, the key not a stream.
    """
    address = parse_url(options.source)
    dead_stream = options.dead_letter or f"{address.stream}:dead"
    if dead_stream == address.stream:
        raise IngestError("--dead-letter: must not be the stream being read")
    _, store = open_store(settings.collections_dir, collection)
    try:
        client = connect(address)
        try:
            consumer = StreamConsumer(
                settings, client, store, store.get_meta("model_id") is not None, address, options,
                options.group or f"embedsvc-{collection}", options.consumer or socket.gethostname(),
                dead_stream, on_progress)
            log.info("ingesting %s into %s as %s of group %s; malformed entries go to %s",
                     address.shown(), collection, consumer.consumer, consumer.group, dead_stream)
            with _stop_on_signals(consumer):
                return consumer.run()
        finally:
            client.close()
    except redis.RedisError as exc:
        raise IngestError(f"Redis at {address.shown()}: {exc} (unacknowledged entries will be "
                          "read again by the next consumer)") from None
    finally:
        store.close()


@contextmanager
def _stop_on_signals(consumer: StreamConsumer) -> Iterator[None]:
    """SIGINT/SIGTERM: finish the batch in hand and stop; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; its owner stops the consumer
        return

    signalled = []

    def handler(signum: int, frame: Any) -> None:  # no logging here: it may hold a lock
        if signalled:
            raise KeyboardInterrupt
        signalled.append(signum)
        consumer.request_stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
