"""Models loaded in the background, so a server answers (lexically) while they load.

Loading a model takes seconds; a search must not wait for it. :meth:`ModelPool.get`
never blocks: it returns the encoder if it is ready and otherwise starts loading it
and returns None, which the searcher turns into the ``model_unavailable`` fallback.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from embedsvc.encoders import Encoder, ModelError, load_settings_encoder
from embedsvc.settings import Settings

log = logging.getLogger(__name__)

# A model that failed to load is tried again after this many seconds (its folder may have
# been restored), not on every request that asks for it.
RETRY_SECONDS = 5.0


@dataclass
class _Slot:
    state: str = "loading"  # loading | ready | failed
    encoder: Encoder | None = None
    error: str | None = None
    done: threading.Event | None = None
    failed_at: float = 0.0

    def retry_due(self) -> bool:
        return self.state == "failed" and time.monotonic() - self.failed_at >= RETRY_SECONDS


class ModelPool:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def _start(self, name: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(name)
            if slot is not None and not slot.retry_due():
                return slot
            slot = _Slot(done=threading.Event())
            self._slots[name] = slot
        threading.Thread(target=self._load, args=(name, slot), daemon=True,
                         name=f"load-{name}").start()
        return slot

    def _load(self, name: str, slot: _Slot) -> None:
        try:
            slot.encoder = load_settings_encoder(name, self.settings)
            slot.state = "ready"
        except ModelError as exc:
            slot.state, slot.error = "failed", str(exc)
            log.error("model %s failed to load: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the status, not kill the thread
            slot.state, slot.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("model %s failed to load", name)
        finally:
            slot.failed_at = time.monotonic()
            assert slot.done is not None
            slot.done.set()

    def get(self, name: str) -> Encoder | None:
        """The encoder if loaded; otherwise start loading it and return None."""
        slot = self._slots.get(name)
        if slot is None or slot.retry_due():
            slot = self._start(name)
        return slot.encoder if slot.state == "ready" else None

    def wait(self, name: str, timeout: float | None = None) -> Encoder:
        """Block until the model is loaded; raise :class:`ModelError` if it cannot be."""
        slot = self._slots.get(name)
        if slot is None or slot.state == "failed":
            slot = self._start(name)
        assert slot.done is not None
        if not slot.done.wait(timeout):
            raise ModelError(f"model '{name}' is still loading; retry shortly")
        if slot.encoder is None:
            raise ModelError(slot.error or f"model '{name}' could not be loaded")
        return slot.encoder

    def status(self) -> dict[str, dict[str, str | None]]:
        return {n: {"state": s.state, "error": s.error} for n, s in self._slots.items()}
