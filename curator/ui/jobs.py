"""The one function that uses the accelerator, and the flags that cancel it.

``run_job`` loads (cached) models, reopens the run and runs classes or regenerates one
anomaly's candidates. On Hugging Face Spaces (where ``spaces`` is importable) it, and only it,
is decorated with ``spaces.GPU``. The app queues every call through one concurrency group, so
concurrent users take turns on the device instead of fighting over it.

Cancelling: the cancel button sets a per-run ``threading.Event``; the pipeline polls it between
batches and raises ``Cancelled``, leaving everything generated so far in the store (resumable).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from curator.pipeline import ClassSummary, Pipeline, Progress
from curator.store import RunStore
from curator.ui import resources

_CANCEL: dict[str, threading.Event] = {}
_CANCEL_GUARD = threading.Lock()


def cancel_event(run_path: str) -> threading.Event:
    with _CANCEL_GUARD:
        return _CANCEL.setdefault(str(run_path), threading.Event())


def request_cancel(run_path: str) -> None:
    cancel_event(run_path).set()


def _gpu(fn: Callable) -> Callable:
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


@_gpu
def run_job(
    run_path: str, labels: list[int] | None = None, regenerate_id: int | None = None, progress: Progress | None = None
) -> list[ClassSummary] | int:
    """Run ``labels`` (skipping finished classes) or, with ``regenerate_id``, one more round of K
    candidates for that anomaly. Returns the class summaries, or the new round number."""
    event = cancel_event(run_path)
    event.clear()
    store = RunStore.open(run_path)
    try:
        data, gen, det = resources.components(store.config)
        pipe = Pipeline(store, data=data, generator=gen, detector=det, progress=progress, cancel=event.is_set)
        if regenerate_id is not None:
            return pipe.regenerate(int(regenerate_id))
        return pipe.run(labels)
    finally:
        store.close()
