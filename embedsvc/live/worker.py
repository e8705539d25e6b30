"""The background work of one server process: leases, the embedder, jobs.

Every server process runs one :class:`LiveWorker` with three threads. One keeps the writer
lease of every collection it can get (renewing it three times per lease period). The
others work only for the collections whose lease this process holds: one embeds pending
documents as soon as a write wakes it (or a poll finds work written by another process),
one runs queued jobs and queues a compaction when the fresh segment or the deleted share of
the index passes its setting. Searches never wait for any of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from embedsvc.backends import mismatch
from embedsvc.collection import CollectionError, CollectionPaths, read_manifest
from embedsvc.live import jobs
from embedsvc.live.embedder import embed_pending
from embedsvc.live.lease import process_identity, release, try_acquire
from embedsvc.live.writes import trim_changes
from embedsvc.settings import Settings
from embedsvc.store import Store

log = logging.getLogger(__name__)

# Seconds between looks at the database for work another process queued.
_POLL = 0.25
# Seconds before the server starts a compaction again by itself after one failed (doubled
# for each further failure in a row).
_RETRY_FAILED = 60.0
# The change log keeps the last this many writes (a compaction also drops what it folded).
CHANGES_KEPT = 100_000
JOBS_KEPT = 200
_TRIM_EVERY = 60.0


class LiveWorker:
    def __init__(self, settings: Settings, stores: Callable[[], dict[str, Store]],
                 encoders: Callable[[str], Any]):
        """
        Args:
            settings: the server's settings.
            stores: the collections now on disk, by name.
            encoders: model id → loaded encoder, or None while it loads (never blocks).
        """
        self.settings = settings
        self.stores = stores
        self.encoders = encoders
        self.identity = process_identity()
        self._led: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, target in (("leases", self._keep_leases), ("embedder", self._embed_loop),
                             ("jobs", self._job_loop)):
            thread = threading.Thread(target=target, name=f"embedsvc-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the threads and hand the leases over at once (no wait for them to expire)."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        stores = self.stores()
        for name in list(self._led):
            if name in stores:
                self._quietly(name, release, stores[name], self.identity)
        self._led.clear()

    def wake(self) -> None:
        """A document was written: embed it now rather than at the next poll."""
        self._wake.set()

    # --- the threads -----------------------------------------------------------------------
    def _forever(self, step: Callable[[], bool], pause: float, wakes: bool = False) -> None:
        """Run ``step`` until stopped, pausing when it found no work; a failure is logged and
        the loop goes on (a dead thread would leave this process acting as leader)."""
        while not self._stop.is_set():
            try:
                worked = step()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("background work failed; going on")
                worked = False
            if worked:
                continue
            if wakes:
                self._wake.wait(pause)
                self._wake.clear()
            else:
                self._stop.wait(pause)

    def _keep_leases(self) -> None:
        self._forever(self._renew_leases, self.settings.lease_seconds / 3)

    def _renew_leases(self) -> bool:
        led = set()
        for name, store in self.stores().items():
            if self._quietly(name, try_acquire, store, self.identity, self.settings.lease_seconds):
                if name not in self._led:
                    log.info("%s: this process (%s) now leads its writes", name, self.identity)
                    self._wake.set()
                led.add(name)
        self._led = led  # swapped whole: the other threads iterate the set they read
        return False

    def _embed_loop(self) -> None:
        self._forever(self._embed_all, _POLL, wakes=True)

    def _embed_all(self) -> bool:
        stores = self.stores()
        return any([bool(self._quietly(name, self._embed, stores[name]))
                    for name in list(self._led) if name in stores])

    def _embed(self, store: Store) -> int:
        if store.conn.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is None:
            return 0
        model = store.get_meta("model_id")
        encoder = self.encoders(model) if model else None
        if encoder is None:
            return 0  # the model is loading; the documents wait, lexical search has them
        if mismatch(store.get_meta, encoder.space) is not None:
            return 0  # they would not match the index (search says backend_mismatch); a build will
        return embed_pending(store, encoder, store.get_meta("long_texts") or "split",
                             self.settings.embed_batch_documents)

    def _job_loop(self) -> None:
        self._last_trim = time.monotonic()
        self._forever(self._jobs_all, _POLL * 2)

    def _jobs_all(self) -> bool:
        stores = self.stores()
        trim = time.monotonic() - self._last_trim > _TRIM_EVERY
        for name in list(self._led):
            if name in stores:
                self._quietly(name, self._maybe_compact, name, stores[name])
                self._quietly(name, self._run_jobs, name, stores[name])
                if trim:
                    self._quietly(name, self._trim, stores[name])
        self._last_trim = time.monotonic() if trim else self._last_trim
        return False

    @staticmethod
    def _trim(store: Store) -> None:
        """Keep the change log to its last :data:`CHANGES_KEPT` writes, and the last jobs."""
        with store.write() as conn:
            trim_changes(store, conn, store.get_meta("seq", 0) - CHANGES_KEPT)
            jobs.forget_old(conn, keep=JOBS_KEPT)

    def _maybe_compact(self, name: str, store: Store) -> None:
        """Queue a compaction when the fresh segment or the deleted share is past its setting."""
        fresh = store.conn.execute("SELECT count(*) FROM passages WHERE indexed = 0 AND vector "
                                   "IS NOT NULL").fetchone()[0]
        dead = store.conn.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        version = store.get_meta("current_version")
        served = read_manifest(CollectionPaths(store.path.parent), version)["count"] \
            if version is not None else 0
        if fresh >= self.settings.compact_fresh_vectors or \
                (dead and dead >= self.settings.compact_deleted_ratio * served):
            if self._backing_off(store, name):
                return  # e.g. a build holds the collection: try again later, not every poll
            job = jobs.submit(store, name, "compact")
            if job.state == jobs.QUEUED and job.attempts == 0:
                log.info("%s: %d fresh vectors, %d deleted: compaction %s queued", name, fresh,
                         dead, job.id)

    @staticmethod
    def _backing_off(store: Store, name: str) -> bool:
        """After n compactions failed in a row, wait 60s × 2^(n-1) (at most an hour)."""
        recent = jobs.recent(store, name, 8)
        failed = next((i for i, job in enumerate(recent) if job.state != jobs.FAILED), len(recent))
        if not failed:
            return False
        wait = min(_RETRY_FAILED * 2 ** (failed - 1), 3600.0)
        return time.time() - (recent[0].finished_at or 0) < wait

    def _run_jobs(self, name: str, store: Store) -> None:
        job = jobs.claim(store, name, self.identity)
        if job is not None:
            run_job(job, store, self.settings)

    def _quietly(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one collection's step; a failure is logged and never stops the thread."""
        try:
            return fn(*args)
        except CollectionError:
            return None  # deleted meanwhile
        except Exception:  # noqa: BLE001 - one collection's trouble must not stop the others
            log.exception("%s: background work failed", name)
            return None


def run_job(job: jobs.Job, store: Store, settings: Settings) -> jobs.Job:
    """Run a claimed job to its end, recording its progress, result or error."""
    from embedsvc.collection import collection_paths
    from indexing.compact import compact
    from indexing.errors import BuildError

    paths = collection_paths(settings.collections_dir, job.collection)
    try:
        result = compact(paths, store, lambda phase, done: jobs.report(store, job.id, phase, done))
    except (BuildError, CollectionError, ValueError) as exc:
        jobs.fail(store, job.id, str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded on the job for the user, logged for us
        log.exception("%s: job %s failed", job.collection, job.id)
        jobs.fail(store, job.id, f"{type(exc).__name__}: {exc}")
    else:
        jobs.finish(store, job.id, result)
    return jobs.get(store, job.collection, job.id) or job
