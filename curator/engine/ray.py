"""The Ray engine: groups of classes run on Ray actors that load the models once; the driver (this
process) owns the run store and writes each stage result as it arrives.

    python -m curator run --engine ray                          # a local Ray, one worker per core/GPU
    python -m curator run --engine ray --ray-address auto       # the cluster of `ray start --head`
    python -m curator run --engine ray --ray-address ray://HOST:10001

Each worker (``StageWorker``) loads the data, the generator and the detector once, in its
constructor, and runs ``stages.run_group`` as a Ray generator: prototypes, images and progress
stream back to the driver before the group finishes. The groups are the local engine's (classes
whose initial images fill about four batches), so both engines batch the same images together and
give the same numbers. Workers ask for one GPU each where the cluster has GPUs, else for CPUs.

Faults: Ray restarts a worker whose process dies (``max_restarts``); the driver then resubmits the
group with what the store already holds, so nothing written is redone. Finished classes are never
resubmitted. The data path and model folders must be readable on every node (a shared file system).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch

from curator import stages
from curator.config import ConfigError, RunConfig
from curator.engine.base import Engine

try:
    import ray
except ImportError as exc:  # pragma: no cover - ray is in requirements.txt
    raise ConfigError(f"the ray engine needs the ray package ({exc}); pip install ray, or use --engine local") from exc

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 10.0  # bounded wait for a cluster address that does not answer
GROUP_ATTEMPTS = 3  # submissions of one group (the first and two after worker deaths)
RESTART_TIMEOUT_S = 300.0  # how long a restarting worker may take to load its models again


@ray.remote(max_restarts=-1)
class StageWorker:
    """Loads a run's data and models once; runs stages for the driver."""

    def __init__(self, config_json: str, threads: int):
        from curator.models.loading import load_components

        torch.set_num_threads(max(1, threads))
        self.config = RunConfig.from_json(config_json)
        self.data, self.generator, self.detector = load_components(self.config)

    def pid(self) -> int:
        return os.getpid()

    def real_features(self, labels: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return stages.real_features(self.detector, self.data, self.config.seed, self.config.real_sample, labels)

    def run_group(self, labels: list[int], state: stages.GroupState, rounds: range | None = None):
        yield from stages.run_group(self.generator, self.detector, self.data, self.config, labels, state, rounds)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (auto | HOST:PORT | ray://HOST:PORT), or start a local one.

    An address that does not answer within ``CONNECT_TIMEOUT_S`` is a ConfigError naming it.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address is None:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        for var in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "OMP_NUM_THREADS"):
            if var in os.environ:
                env[var] = os.environ[var]
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env}, **kwargs)
        return
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ...: one line naming the address
        raise ConfigError(f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {exc}") from None


class RayEngine(Engine):
    """Runs groups of classes on Ray actors, as many at once as there are workers."""

    name = "ray"

    @classmethod
    def create(cls, config, root, run_id=None, **kwargs):
        connect(kwargs.get("ray_address"))  # first: a cluster that does not answer leaves no run folder
        return super().create(config, root, run_id, **kwargs)

    def __init__(self, store, *, ray_address: str | None = None, workers: int | None = None, **kwargs):
        super().__init__(store, **kwargs)
        try:
            connect(ray_address)
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            cpus = max(1, int(resources.get("CPU", 1)))
            n = workers or gpus or cpus
            # torch threads per worker: the CPUs each worker has, or OMP_NUM_THREADS where it is set
            threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, cpus // n))
            options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
            self.workers = [StageWorker.options(**options).remote(self.config.to_json(), threads) for _ in range(n)]
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        for w in getattr(self, "workers", []):
            ray.kill(w)
        self.workers = []
        super().close()

    def worker_pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    # --- where the stages run ------------------------------------------------------------------
    def _real_features(self):
        labels = list(range(self.data.num_classes))
        shards = [labels[i :: len(self.workers)] for i in range(len(self.workers))]
        parts = ray.get([w.real_features.remote(s) for w, s in zip(self.workers, shards) if s])
        merged = {label: feats for part in parts for label, feats in part.items()}
        return {label: merged[label] for label in labels}  # class order, whatever the sharding

    def _stream(self, labels, state, rounds=None):
        """One group on the first worker, resubmitted (with what the store then holds) if it dies."""
        for attempt in range(1, GROUP_ATTEMPTS + 1):
            try:
                gen = self.workers[0].run_group.options(num_returns="streaming").remote(labels, state, rounds)
                for ref in gen:
                    yield ray.get(ref)  # the driver writes it before asking for the next
                return
            except Exception as exc:
                if attempt == GROUP_ATTEMPTS or not _is_worker_death(exc):
                    raise
                _wait_alive(self.workers[0])
                state = _resume_state(self.group_state(labels), state)

    def _run_groups(self, groups: list[list[int]]) -> None:
        """Every group on the workers, as many at once as there are workers; results are written
        here, in the order they arrive. A group whose worker dies is resubmitted to it (Ray
        restarts it) with what the store then holds."""
        self.centres()
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def pump(worker, labels, state, attempt):
            try:
                gen = worker.run_group.options(num_returns="streaming").remote(labels, state)
                for ref in gen:
                    if stop.is_set():
                        ray.cancel(gen)
                        return
                    events.put(("item", worker, labels, attempt, ray.get(ref)))
                events.put(("done", worker, labels, attempt, None))
            except Exception as exc:  # the worker died (RayActorError) or a stage failed
                events.put(("error", worker, labels, attempt, exc))

        pending, free = list(groups), list(self.workers)
        seconds: dict[tuple, dict[int, float]] = {}
        started: dict[tuple, float] = {}

        def submit(worker, labels, attempt=1, state=None):
            key = tuple(labels)
            if attempt == 1:
                with self.store.transaction():
                    for label in labels:
                        self.store.set_class_status(label, "running")
                started[key], seconds[key] = time.time(), {}
            state = state or self.group_state(labels)
            threading.Thread(target=pump, args=(worker, labels, state, attempt), daemon=True).start()

        try:
            while pending or started:
                while pending and free:
                    submit(free.pop(0), pending.pop(0))
                kind, worker, labels, attempt, payload = events.get()
                key = tuple(labels)
                if kind == "item":
                    for label, s in self.consume(labels, iter([payload])).items():
                        seconds[key][label] = seconds[key].get(label, 0.0) + s
                elif kind == "done":
                    self.finish(labels, seconds.pop(key), time.time() - started.pop(key))
                    free.append(worker)
                elif attempt < GROUP_ATTEMPTS and _is_worker_death(payload):
                    _wait_alive(worker)  # Ray restarts it (max_restarts)
                    submit(worker, labels, attempt + 1)  # the store says what is left
                else:
                    raise payload
        finally:
            stop.set()


def _resume_state(fresh: stages.GroupState, before: stages.GroupState) -> stages.GroupState:
    """What to send again after a worker died: what the store holds now (``fresh``), keeping the
    anomalies ``before`` left out (a regeneration asks for one anomaly only)."""
    return stages.GroupState(fresh.prototypes, fresh.synthetic, {**before.rounds_done, **fresh.rounds_done},
                             fresh.settled | before.settled)  # fmt: skip


def _is_worker_death(exc: BaseException) -> bool:
    errors = ray.exceptions
    return isinstance(exc, errors.RayActorError | errors.ActorUnavailableError | errors.WorkerCrashedError)


def _wait_alive(worker, timeout: float = RESTART_TIMEOUT_S) -> None:
    """Block until a restarted worker answers again (its constructor reloads the models)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get(worker.pid.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except Exception as exc:
            if not _is_worker_death(exc) and not isinstance(exc, ray.exceptions.GetTimeoutError):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
