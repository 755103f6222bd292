"""The functions that use the accelerator, and the flags that cancel them.

``run_class_job`` runs one class of a run and ``regenerate_job`` one more round of candidates
for one anomaly; each loads (cached) models and reopens the run. On Hugging Face Spaces (where
``spaces`` is importable) these two, and only they, are decorated with ``spaces.GPU``, each with
a duration estimated from its own work (``estimate_seconds``), so that every GPU call fits
ZeroGPU's limits. ``run_stream`` (and ``run_job``, which waits for it) is the plain entry point the app calls: there
it runs the classes still to do one GPU call each, checking for a cancel between calls; elsewhere
it runs them in one engine call, batched in the engine's groups as ``curator run`` does, yielding
each group as it is done. The app queues every call through one concurrency group, so concurrent
users take turns on the device instead of fighting over it.

Engine: ``local`` (default), or ``ray`` with ``CURATOR_ENGINE=ray`` (and ``CURATOR_RAY_ADDRESS``
for a cluster; default: a local Ray started with the app). Jobs run on the app's one
``EnginePool`` (``engine_pool``): on Ray the workers, with their models loaded, stay up across the
jobs of one run and configuration, and close when the run changes, after
``$CURATOR_ENGINE_IDLE_S`` seconds without a job (default 600), and at shutdown.

Cancelling: the cancel button sets a per-run ``threading.Event``; the pipeline polls it between
batches and raises ``Cancelled``, leaving everything generated so far in the store (resumable).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from curator.config import RunConfig
from curator.data import DataError
from curator.engine import Cancelled, Engine, ProgressFn
from curator.engine.pool import DEFAULT_IDLE_S, EnginePool
from curator.review import ClassSummary, summarize
from curator.store import RunStore
from curator.ui import resources

log = logging.getLogger("curator.ui.jobs")

_CANCEL: dict[str, threading.Event] = {}
_CANCEL_GUARD = threading.Lock()

# Seconds per image and denoising step (classifier-free guidance included) on a ZeroGPU slice,
# seconds per class for its prototypes (encoding its real images, k-means), and for loading.
STEP_SECONDS = {"pixel": 0.0005, "stable-diffusion": 0.02, "dit": 0.01}
CLASS_SECONDS = {"pixel": 2.0, "stable-diffusion": 15.0, "dit": 10.0}
LOAD_SECONDS = 10.0
MIN_SECONDS, MAX_SECONDS = 20.0, 300.0
DEFAULT_SECONDS = 120.0  # when the work cannot be read


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


# --- how long a call takes ---------------------------------------------------------------------------


def _backend(config: RunConfig) -> str:
    from curator.models.backends import STABLE_DIFFUSION, detect_backend
    from curator.models.backends.common import resolve_model_dir

    try:
        return detect_backend(resolve_model_dir(config.generator))
    except Exception:  # noqa: BLE001 - an estimate: assume the slowest backend
        return STABLE_DIFFUSION


def _denoising_steps(config: RunConfig) -> int:
    """Steps one image runs: SDEdit runs ``steps * strength`` of the schedule (at least 1)."""
    return max(1, int(config.steps * config.strength))


def estimate_seconds(run_path: str, label: int | None = None, regenerate_id: int | None = None) -> float:
    """Seconds a GPU call needs, from its work: ``regenerate_id`` = one round of K candidates;
    ``label`` = that class's prototypes, synthesis of the IPC images still missing and K candidates
    x rounds for every anomaly (known, or, for images not made yet, assumed), less what the store
    already holds; None = every class still to do. A per-image-step cost of the backend times the
    images x denoising steps, plus per-class and loading costs, within [20, 300] seconds."""
    try:
        store = RunStore.open(run_path)
    except Exception:  # noqa: BLE001 - the job itself reports a missing run
        return DEFAULT_SECONDS
    try:
        config = store.config
        backend = _backend(config)
        step = STEP_SECONDS.get(backend, max(STEP_SECONDS.values())) * _denoising_steps(config)
        if regenerate_id is not None:
            seconds = LOAD_SECONDS + config.k * step
        else:
            labels = [label] if label is not None else _labels(store, config)
            seconds = LOAD_SECONDS
            for lab in labels:
                if store.class_status(lab) == "done":
                    continue
                seconds += (
                    CLASS_SECONDS.get(backend, max(CLASS_SECONDS.values())) + _images_left(store, config, lab) * step
                )
    except Exception:  # noqa: BLE001 - an estimate never stops a job
        log.exception("cannot estimate the work of %s", run_path)
        return DEFAULT_SECONDS
    finally:
        store.close()
    return float(min(MAX_SECONDS, max(MIN_SECONDS, seconds)))


def _images_left(store: RunStore, config: RunConfig, label: int) -> int:
    """Images a class still needs: missing synthetic ones, and K x rounds candidates for each anomaly
    (every image not made yet counts as an anomaly), less the candidates already made."""
    synthetic = store.synthetic(label)
    missing = max(0, config.ipc - len(synthetic))
    per_anomaly = config.k * config.rounds
    counts = store.candidate_counts(label)
    candidates = sum(max(0, per_anomaly - counts.get(a.id, 0)) for a in synthetic if a.reason is not None)
    return missing + missing * per_anomaly + candidates


def _labels(store: RunStore, config: RunConfig) -> list[int]:
    """The classes a run covers (``config.classes`` by name or index; all when None)."""
    names = store.class_names
    if not config.classes:
        return list(range(len(names)))
    out = []
    for c in config.classes:
        if str(c) in names:
            out.append(names.index(str(c)))
        elif str(c).isdigit() and int(c) < len(names):
            out.append(int(c))
        else:
            raise DataError(f"class {c!r} is not in the run's classes {names}")
    return out


def run_labels(store: RunStore) -> list[int]:
    """The classes the run covers (its ``classes`` setting; every class of the data when unset)."""
    return _labels(store, store.config)


def _class_duration(run_path: str, label: int, progress: ProgressFn | None = None) -> float:
    return estimate_seconds(run_path, label=label)


def _regenerate_duration(run_path: str, anomaly_id: int, progress: ProgressFn | None = None) -> float:
    return estimate_seconds(run_path, regenerate_id=anomaly_id)


def _spaces_gpu() -> Callable | None:
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces.GPU


# On Hugging Face Spaces each GPU call covers one class (ZeroGPU limits a call's duration).
ONE_CLASS_PER_CALL = _spaces_gpu() is not None


def _gpu(duration: Callable) -> Callable[[Callable], Callable]:
    """``spaces.GPU(duration=duration)`` where ``spaces`` is importable (Hugging Face Spaces), else nothing.
    ``duration`` takes the decorated function's arguments and returns seconds."""

    def decorate(fn: Callable) -> Callable:
        gpu = _spaces_gpu()
        return fn if gpu is None else gpu(duration=duration)(fn)

    return decorate


# --- the GPU calls -----------------------------------------------------------------------------------


_POOL: EnginePool | None = None
_POOL_GUARD = threading.Lock()


def engine_pool() -> EnginePool:
    """The app's one ``EnginePool``: the engine's workers (on Ray: actors with the models loaded)
    stay up across jobs on the same run and configuration, and close when the run changes, after
    ``$CURATOR_ENGINE_IDLE_S`` seconds without a job (default 600), and at shutdown."""
    global _POOL
    with _POOL_GUARD:
        if _POOL is None:
            _POOL = EnginePool(idle_s=resources._env_number("CURATOR_ENGINE_IDLE_S", DEFAULT_IDLE_S))
        return _POOL


def close_engines() -> None:
    """Close the pooled engine's workers now (the app's shutdown; also done at exit)."""
    with _POOL_GUARD:
        pool = _POOL
    if pool is not None:
        pool.close()


@contextmanager
def _engine(run_path: str, progress: ProgressFn | None) -> Iterator[Engine]:
    """An engine for the run on the pooled workers (started on the first job of a run)."""
    event = cancel_event(run_path)
    store = RunStore.open(run_path)
    try:
        config = store.config
    finally:
        store.close()
    data, gen, det = resources.components(config)
    with engine_pool().lease(run_path, engine=engine_name(), data=data, generator=gen, detector=det,
                             progress=progress, cancel=event.is_set, **engine_options()) as engine:  # fmt: skip
        yield engine


@_gpu(_class_duration)
def run_class_job(run_path: str, label: int, progress: ProgressFn | None = None) -> ClassSummary:
    """Run (or resume) one class of the run: one GPU call. Does not clear a pending cancel."""
    with _engine(run_path, progress) as engine:
        return engine.run_class(int(label))


@_gpu(_regenerate_duration)
def regenerate_job(run_path: str, anomaly_id: int, progress: ProgressFn | None = None) -> int:
    """One more round of K candidates for an anomaly, then rescoring its class: one GPU call.
    Returns the new round number."""
    with _engine(run_path, progress) as engine:
        return engine.regenerate(int(anomaly_id))


def run_stream(
    run_path: str, labels: list[int] | None = None, progress: ProgressFn | None = None
) -> Iterator[list[int]]:
    """Run ``labels`` (None = every class of the run), skipping finished ones, and yield the classes
    of each finished group as soon as they are written and marked done (so a person can review them
    while the rest run). On Hugging Face Spaces: one GPU call per class (``run_class_job``, within
    ZeroGPU's per-call limits), checking for a cancel between calls, each class its own group.
    Elsewhere: one engine call that batches the classes in the engine's groups (``Engine.groups``,
    as ``curator run`` does: the generator sees full batches) on the pooled engine."""
    event = cancel_event(run_path)
    event.clear()
    store = RunStore.open(run_path)
    try:
        labels = _labels(store, store.config) if labels is None else [int(lab) for lab in labels]
        todo = [lab for lab in labels if store.class_status(lab) != "done"]
    finally:
        store.close()
    if ONE_CLASS_PER_CALL:
        for label in todo:
            if event.is_set():
                raise Cancelled(f"cancelled before class {label}")
            run_class_job(run_path, label, progress)
            yield [label]
    elif todo:
        with _engine(run_path, progress) as engine:
            yield from engine.run_stream(todo)


def run_job(
    run_path: str, labels: list[int] | None = None, regenerate_id: int | None = None, progress: ProgressFn | None = None
) -> list[ClassSummary] | int:
    """Run ``labels`` (None = every class of the run), skipping finished ones (``run_stream``); or,
    with ``regenerate_id``, one more round of K candidates for that anomaly (``regenerate_job``).
    Returns the summaries of ``labels`` (in that order, finished ones included), or the new round
    number."""
    if regenerate_id is not None:
        cancel_event(run_path).clear()
        return regenerate_job(run_path, int(regenerate_id), progress)
    for _ in run_stream(run_path, labels, progress):
        pass
    store = RunStore.open(run_path)
    try:
        return summarize(store, _labels(store, store.config) if labels is None else [int(lab) for lab in labels])
    finally:
        store.close()
