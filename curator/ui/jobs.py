"""The one function that uses the accelerator, and the flags that cancel it.

``run_job`` loads (cached) models, reopens the run and runs classes or regenerates one
anomaly's candidates. On Hugging Face Spaces (where ``spaces`` is importable) it, and only it,
is decorated with ``spaces.GPU``. The app queues every call through one concurrency group, so
concurrent users take turns on the device instead of fighting over it.

Engine: ``local`` (default), or ``ray`` with ``CURATOR_ENGINE=ray`` (and ``CURATOR_RAY_ADDRESS``
for a cluster; default: a local Ray started with the app).

Cancelling: the cancel button sets a per-run ``threading.Event``; the pipeline polls it between
batches and raises ``Cancelled``, leaving everything generated so far in the store (resumable).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from curator.engine import ProgressFn, open_run
from curator.review import ClassSummary
from curator.store import RunStore
from curator.ui import resources

_CANCEL: dict[str, threading.Event] = {}
_CANCEL_GUARD = threading.Lock()


def cancel_event(run_path: str) -> threading.Event:
    with _CANCEL_GUARD:
        return _CANCEL.setdefault(str(run_path), threading.Event())


def request_cancel(run_path: str) -> None:
    cancel_event(run_path).set()


def engine_name() -> str:
    """The engine the app runs jobs on: ``$CURATOR_ENGINE`` (local or ray), default local."""
    return os.environ.get("CURATOR_ENGINE", "local")


def engine_options() -> dict:
    """Options of that engine: the Ray address from ``$CURATOR_RAY_ADDRESS`` (None = a local Ray)."""
    return {"ray_address": os.environ.get("CURATOR_RAY_ADDRESS") or None} if engine_name() == "ray" else {}


def _gpu(fn: Callable) -> Callable:
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


@_gpu
def run_job(
    run_path: str, labels: list[int] | None = None, regenerate_id: int | None = None, progress: ProgressFn | None = None
) -> list[ClassSummary] | int:
    """Run ``labels`` (skipping finished classes) or, with ``regenerate_id``, one more round of K
    candidates for that anomaly. Returns the class summaries, or the new round number."""
    event = cancel_event(run_path)
    event.clear()
    store = RunStore.open(run_path)
    try:
        config = store.config
    finally:
        store.close()
    data, gen, det = resources.components(config)
    engine = open_run(run_path, engine=engine_name(), data=data, generator=gen, detector=det, progress=progress,
                      cancel=event.is_set, **engine_options())  # fmt: skip
    try:
        if regenerate_id is not None:
            return engine.regenerate(int(regenerate_id))
        return engine.run(labels)
    finally:
        engine.close()
