"""One engine's workers kept alive across jobs: a long-lived caller (the app) runs many short jobs
(a class, a Regenerate) on the same run, and on Ray each would otherwise start the workers and
load the models again (seconds each; issue #18 measured "Run all" at 94 s on Ray against 8 s on
the local engine).

    pool = EnginePool(idle_s=600)
    with pool.lease(run_path, engine="ray", data=data, progress=report, cancel=event.is_set) as engine:
        engine.run_class(3)                                  # the workers stay up for the next lease
    pool.close()                                             # at shutdown (also registered with atexit)

``EnginePool`` keeps the workers (``Engine.start_workers``: Ray actors that have loaded the data
and the models; nothing for the local engine, whose models the caller caches) of ONE key: the run,
its configuration, the engine and its options. It closes them when a lease for another key comes
(the run changed), after ``idle_s`` seconds without a lease, when a job fails with anything but a
cancel (its workers may be broken: the next lease starts fresh ones), and at ``close()``.

Each lease still opens its own engine on a freshly opened store and closes it at the end, so the
run's writer lock is held only during a job: between jobs the CLI may resume the run and the
public mode's sweep may delete it. Leases are serialised (one job at a time on the workers); a
``close`` from another thread (shutdown, the idle timer) never waits for a running job.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from curator.engine.base import Cancelled, Engine
from curator.store import RunStore

DEFAULT_IDLE_S = 600.0  # a person reviews between jobs; idle workers (and their models) go after this


@dataclass
class _Slot:
    key: tuple
    workers: object  # what Engine.start_workers returned (never None here); has kill()
    last_used: float
    busy: int = 0
    timer: threading.Timer | None = field(default=None, repr=False)


class EnginePool:
    """Keeps the workers of one (run, configuration, engine, options) alive between jobs."""

    def __init__(self, idle_s: float = DEFAULT_IDLE_S, clock: Callable[[], float] = time.monotonic):
        if not idle_s > 0:
            raise ValueError(f"idle_s must be more than 0 seconds, got {idle_s}")
        self.idle_s = float(idle_s)
        self.clock = clock
        self.starts = 0  # how many times workers were started (what pooling saves)
        self._slot: _Slot | None = None
        self._state = threading.Lock()  # guards _slot; never held while starting or running
        self._use = threading.Lock()  # one lease at a time on the workers
        ref = weakref.ref(self)
        atexit.register(lambda: (p := ref()) is not None and p.close())

    @staticmethod
    def key(run_path: str | Path, engine: str, config_json: str, options: dict) -> tuple:
        return (str(Path(run_path).resolve()), engine, config_json, tuple(sorted(options.items())))

    @property
    def held(self) -> tuple | None:
        """The key whose workers are alive now, or None."""
        with self._state:
            return self._slot.key if self._slot else None

    @contextmanager
    def lease(self, run_path: str | Path, *, engine: str, progress=None, cancel=None, **kwargs) -> Iterator[Engine]:
        """An engine for the run at ``run_path`` on ``engine`` (``kwargs``: ``data``/``generator``/
        ``detector`` as the caller loaded them, and the engine's options such as ``ray_address``),
        on the pooled workers of this run and configuration (started now if there are none)."""
        from curator.engine import engine_class

        cls = engine_class(engine)
        components = {k: kwargs.pop(k) for k in ("data", "generator", "detector") if k in kwargs}
        with self._use:
            store = RunStore.open(run_path)
            try:
                config = store.config.validate()
            finally:
                store.close()
            key = self.key(run_path, engine, config.to_json(), kwargs)
            slot = self._take(key)
            if slot is None:
                workers = cls.start_workers(config, components.get("data"), progress, **kwargs)
                slot = self._put(key, workers) if workers is not None else None
                self.starts += workers is not None
            opened = None
            try:
                store = RunStore.open(run_path)
                try:
                    extra = {"pool": slot.workers} if slot else {}
                    opened = cls(store, progress=progress, cancel=cancel, **components, **kwargs, **extra)
                except BaseException:
                    store.close()  # closing twice is harmless
                    raise
                yield opened
            except Cancelled:
                raise
            except BaseException:
                if slot is not None:
                    self._drop(slot)  # the workers may be broken: the next lease starts fresh ones
                raise
            finally:
                if opened is not None:
                    opened.close()  # the store and its writer lock; pooled workers stay
                if slot is not None:
                    self._release(slot)

    def _take(self, key: tuple) -> _Slot | None:
        """The slot of ``key``, marked busy, if its workers are alive and not idle too long; any
        other slot is closed (the run or its configuration changed)."""
        with self._state:
            slot, now = self._slot, self.clock()
            if slot is not None and (slot.key != key or now - slot.last_used > self.idle_s or not _usable(slot)):
                self._close_locked()
                slot = None
            if slot is not None:
                slot.busy += 1
                if slot.timer:
                    slot.timer.cancel()
            return slot

    def _put(self, key: tuple, workers) -> _Slot:
        with self._state:
            self._close_locked()
            self._slot = _Slot(key, workers, self.clock(), busy=1)
            return self._slot

    def _release(self, slot: _Slot) -> None:
        with self._state:
            slot.busy -= 1
            slot.last_used = self.clock()
            if self._slot is slot and not slot.busy:
                slot.timer = threading.Timer(self.idle_s, self.close_idle)
                slot.timer.daemon = True  # never keeps the process alive
                slot.timer.start()

    def _drop(self, slot: _Slot) -> None:
        with self._state:
            if self._slot is slot:
                self._close_locked()

    def close_idle(self) -> bool:
        """Close the workers if no lease has used them for ``idle_s``; True if it closed them."""
        with self._state:
            slot = self._slot
            if slot is None or slot.busy or self.clock() - slot.last_used < self.idle_s:
                return False
            self._close_locked()
            return True

    def close(self) -> None:
        """Close the workers now (shutdown); a running job then loses them."""
        with self._state:
            self._close_locked()

    def _close_locked(self) -> None:
        slot, self._slot = self._slot, None
        if slot is None:
            return
        if slot.timer:
            slot.timer.cancel()
        try:
            slot.workers.kill()
        except Exception:  # noqa: BLE001 - already gone (Ray shut down): nothing left to free
            pass


def _usable(slot: _Slot) -> bool:
    usable = getattr(slot.workers, "usable", None)
    return bool(usable()) if callable(usable) else True


__all__ = ["DEFAULT_IDLE_S", "EnginePool"]
