"""Query embeddings for search: concurrent single queries share one encoder call, and
recent queries are answered from a cache.

Why: a search encodes one short query. Run alone, that forward pass is mostly fixed cost
(Python, tokenizer, framework dispatch) and uses the cores poorly; run by many request
threads at once, the passes fight over the same cores with every torch thread each. Under
load it is far cheaper to encode the queries waiting at one moment as one batch, one call
at a time per model; and a query seen recently need not be encoded at all.

How a query is encoded (:class:`QueryBatcher`, one per vector space, i.e. per
``encoder.key``):

- With nothing running and nothing waiting, the caller encodes its query at once: a lone
  query never waits.
- Otherwise it joins the newest waiting batch (or opens one, becoming its *leader*). The
  leader starts the encoder call once no call of that model is running and either the
  batch is full (``query_batch_size``) or ``query_batch_wait_ms`` have passed since it
  opened the batch, whichever comes first. Batches go in the order they were opened.
- Each caller then takes its own row of the result; an exception of the encoder reaches
  every caller of the batch. Callers block on events, never in a sleeping loop.

One call at a time per model keeps the cores for one forward pass instead of splitting
them between many; a batch that waited behind a running call has usually gathered every
query that came meanwhile, so batches grow with the load by themselves. A
``query_batch_size`` of 1 turns all this off: each query is encoded in its caller's thread,
concurrently with the others, as before.

Cached rows (:class:`QueryCache`, keyed by the encoder's key and the exact text) are
read-only copies, and callers always get a fresh array, so no caller can change what
another one reads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from embedsvc.metrics import QUERY_CACHE

if TYPE_CHECKING:
    from embedsvc.settings import Settings


class TextEncoder(Protocol):
    """What query encoding needs of an encoder (:class:`embedsvc.encoders.Encoder`)."""

    @property
    def key(self) -> Hashable:
        """Equal for encoders whose vectors are the same (weights and backend)."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        ...


CacheKey = tuple[Hashable, str]
_HIT, _MISS = QUERY_CACHE.labels("hit"), QUERY_CACHE.labels("miss")


class QueryCache:
    """The most recently used query vectors, at most ``size`` of them (0: none kept)."""

    def __init__(self, size: int):
        self.size = size
        self._rows: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The cached row (read-only), or None."""
        if not self.size:
            return None
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                self.misses += 1
                _MISS.inc()
                return None
            self._rows.move_to_end(key)
            self.hits += 1
        _HIT.inc()
        return row

    def put(self, key: CacheKey, row: np.ndarray) -> None:
        """Keep a read-only copy of ``row`` (the caller's array stays the caller's)."""
        if not self.size:
            return
        kept = np.array(row, dtype=np.float32, copy=True)
        kept.flags.writeable = False
        with self._lock:
            self._rows[key] = kept
            self._rows.move_to_end(key)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)


@dataclass(eq=False)
class _Batch:
    """Texts that will be encoded in one call; ``rows`` maps each distinct text to its row."""

    deadline: float
    rows: dict[str, int] = field(default_factory=dict)
    result: Future = field(default_factory=Future)


class QueryBatcher:
    """Gathers concurrent single-text encodes of one vector space into shared encoder calls.

    Args:
        wait_s: longest a batch waits for more texts once it could start (a lone text on an
            idle batcher never waits).
        max_size: most distinct texts in one call; 1 turns batching off.
    """

    def __init__(self, wait_s: float, max_size: int):
        self.wait_s = wait_s
        self.max_size = max_size
        self._cond = threading.Condition()
        self._waiting: deque[_Batch] = deque()  # oldest first; only the newest takes texts
        self._busy = False  # an encoder call of this batcher is running
        self.calls = 0
        self.texts = 0

    def waiting(self) -> int:
        """Distinct texts waiting for an encoder call (not those in the running one)."""
        with self._cond:
            return sum(len(batch.rows) for batch in self._waiting)

    def encode_one(self, encoder: TextEncoder, text: str) -> np.ndarray:
        """The (dim,) vector of ``text``; a view of the batch's read-only result.

        Raises:
            Whatever the encoder raised for the batch this text was part of.
        """
        if self.max_size <= 1:
            with self._cond:
                self._count(1)
            return encoder.encode([text])[0]
        with self._cond:
            batch, row, leader = self._join(text)
            if leader:
                self._take_turn(batch)
        if leader:
            self._run(encoder, batch)
        return batch.result.result()[row]

    def _join(self, text: str) -> tuple[_Batch, int, bool]:
        """Add ``text`` to the newest waiting batch, or open one. Returns (batch, row, whether
        the caller leads it). Called with the lock held."""
        if self._waiting and len(self._waiting[-1].rows) < self.max_size:
            batch = self._waiting[-1]
            row = batch.rows.setdefault(text, len(batch.rows))
            if len(batch.rows) == self.max_size:
                self._cond.notify_all()  # full: its leader need not wait any longer
            return batch, row, False
        idle = not self._busy and not self._waiting
        batch = _Batch(deadline=time.monotonic() + (0.0 if idle else self.wait_s))
        batch.rows[text] = 0
        self._waiting.append(batch)
        return batch, 0, True

    def _take_turn(self, batch: _Batch) -> None:
        """Block until ``batch`` may start: first in line, no call running, and full or past
        its deadline. Then it leaves the line (taking no more texts). Called with the lock held."""
        while True:
            if self._waiting[0] is batch and not self._busy:
                left = batch.deadline - time.monotonic()
                if left <= 0 or len(batch.rows) >= self.max_size:
                    break
                self._cond.wait(left)
            else:
                self._cond.wait()  # notified when a call ends or a batch fills
        self._waiting.popleft()
        self._busy = True
        self._count(len(batch.rows))

    def _run(self, encoder: TextEncoder, batch: _Batch) -> None:
        """Encode the batch with the leader's encoder and hand the result to every caller."""
        try:
            vectors = encoder.encode(list(batch.rows))
            vectors.flags.writeable = False  # rows are handed out as views
            batch.result.set_result(vectors)
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch must get it
            batch.result.set_exception(exc)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _count(self, texts: int) -> None:
        """Called with the lock held."""
        self.calls += 1
        self.texts += texts


class QueryEncoder:
    """What a searcher encodes its queries with: the cache first, then a batcher per
    vector space for a single query, or one direct call for several.

    Args:
        wait_ms: ``query_batch_wait_ms``.
        batch_size: ``query_batch_size`` (1: no batching).
        cache_size: ``query_cache_size`` (0: no cache).
    """

    def __init__(self, wait_ms: float = 2.0, batch_size: int = 32, cache_size: int = 4096):
        self.wait_s = wait_ms / 1000
        self.batch_size = batch_size
        self.cache = QueryCache(cache_size)
        self._batchers: dict[Hashable, QueryBatcher] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryEncoder:
        return cls(settings.query_batch_wait_ms, settings.query_batch_size, settings.query_cache_size)

    def batcher(self, key: Hashable) -> QueryBatcher:
        """The batcher of one vector space, made on first use."""
        batcher = self._batchers.get(key)
        if batcher is None:
            with self._lock:
                batcher = self._batchers.setdefault(key, QueryBatcher(self.wait_s, self.batch_size))
        return batcher

    def encode(self, encoder: TextEncoder, texts: Sequence[str], cache: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, a new array the caller may change.

        Args:
            cache: read and fill the cache; off for texts that are not queries (``/v1/embed``),
                which would only push queries out.
        """
        if not texts:
            return encoder.encode([])
        key = encoder.key
        rows: list[np.ndarray | None] = [self.cache.get((key, t)) if cache else None for t in texts]
        missing = [i for i, row in enumerate(rows) if row is None]
        if len(missing) == 1:
            rows[missing[0]] = self.batcher(key).encode_one(encoder, texts[missing[0]])
        elif missing:  # several texts are a batch already
            for i, row in zip(missing, encoder.encode([texts[i] for i in missing]), strict=True):
                rows[i] = row
        found = [row for row in rows if row is not None]
        if cache:
            for i in missing:
                self.cache.put((key, texts[i]), found[i])
        return np.stack(found)

    def stats(self) -> dict[str, int]:
        """Counts for metrics: cache hits and misses, encoder calls and texts in them."""
        batchers = list(self._batchers.values())
        return {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
                "cache_size": len(self.cache), "batch_calls": sum(b.calls for b in batchers),
                "batch_texts": sum(b.texts for b in batchers)}


# No batching, no cache: each call is the encoder's own (searchers made without settings).
DIRECT = QueryEncoder(wait_ms=0.0, batch_size=1, cache_size=0)
