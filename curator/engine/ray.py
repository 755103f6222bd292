"""The Ray engine: groups of classes run on Ray actors that load the models once; the driver (this
process) owns the run store and writes each stage result as it arrives.

    python -m curator run --engine ray                          # a local Ray, one worker per core/GPU
    python -m curator run --engine ray --ray-address auto       # the cluster of `ray start --head`
    python -m curator run --engine ray --ray-address HEAD:6379 --ray-workers 8 --ray-cpus-per-worker 4

Each worker (``StageWorker``) loads the data, the generator and the detector once, in its
constructor, and runs ``stages.run_group`` as a Ray generator: prototypes, images and progress
stream back to the driver before the group finishes. The groups are the local engine's (classes
whose initial images fill about four batches), so both engines batch the same images together and
give the same numbers. The driver loads only the data's index (class names, labels, file list):
the models are loaded where they run.

Getting onto a cluster: the driver makes every local path of the run (data, models, class map)
absolute before the workers see it (they do not run in the driver's folder); each worker checks at
start-up that it can read them, and a worker that cannot start is one line naming its node and the
path. On a cluster the curator's code and the settings the numbers depend on (thread counts,
offline flags) travel in the job's ``runtime_env``. A cluster that wants a token is one line saying
how to give it. Before starting, the driver checks the cluster's free CPUs/GPUs against the workers
asked for.

Faults: Ray restarts a worker whose process dies (``max_restarts``); its group goes back to the
queue and the next live worker takes it, with what the store already holds, so nothing written is
redone. Finished classes are never resubmitted. While no worker is alive the progress line says
so; when none comes back within a limit that scales with the workers' start-up time, the run ends
with one line saying to resume it.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from curator import stages
from curator.config import ConfigError, RunConfig
from curator.data import BUILTIN, Dataset, FolderImageSet, load_dataset
from curator.engine.base import Cancelled, Engine
from curator.errors import USER_ERRORS

try:
    import ray
except ImportError as exc:  # pragma: no cover - ray is in requirements.txt
    raise ConfigError(f"the ray engine needs the ray package ({exc}); pip install ray, or use --engine local") from exc

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parents[1]  # the curator package, shipped to a cluster's workers
CONNECT_TIMEOUT_S = 10.0  # bounded wait for a cluster address that does not answer
GROUP_ATTEMPTS = 3  # submissions of one group (the first and two after worker deaths)
RESOURCES_SETTLE_S = 10.0  # how long freed resources may take to show as free
START_TIMEOUT_S = 600.0  # how long workers may take to be placed and to load their models
MIN_COMEBACK_S = 60.0  # a lost worker may take at least this long to come back ...
COMEBACK_FACTOR = 5.0  # ... or this many times the slowest measured worker start-up
PLACEMENTS = ("pack", "spread")
# what the numbers and the offline promise depend on: passed to every worker
SHIPPED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "HF_HUB_OFFLINE",
               "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TORCH_HOME")  # fmt: skip
AUTH_HINT = (
    "the cluster wants a token (Ray 2.60's `ray start --head` turns token authentication on where "
    "~/.ray/auth_token exists): export RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token, "
    "or in RAY_AUTH_TOKEN, or in the file RAY_AUTH_TOKEN_PATH names"
)


class WorkerError(ConfigError):
    """A worker that cannot start, or a cluster that cannot finish the run: one line saying what to do."""


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (Ray's errors carry whole tracebacks)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_readable(path: str) -> None:
    """Raise OSError unless ``path`` (a folder or a file) can be read here."""
    if os.path.isdir(path):
        os.listdir(path)
    else:
        with open(path, "rb") as f:
            f.read(1)


def folder_index(data: Dataset) -> dict | None:
    """What a worker needs to read an ImageFolder without scanning it again: the driver's file
    lists and labels of both splits (absolute paths), class names and skipped files. None for data
    held in memory (mnist5k), which loads without a scan."""
    if not (isinstance(data.train, FolderImageSet) and isinstance(data.test, FolderImageSet)):
        return None
    return {"name": data.name, "class_names": list(data.class_names), "skipped": list(data.skipped),
            "splits": [([os.path.abspath(p) for p in s.paths], s.labels) for s in (data.train, data.test)]}  # fmt: skip


def _load_worker(config: RunConfig, index: dict | None):
    """(data, generator, detector) on a worker: the data from the driver's ``index`` where there is
    one (read at the generator's size and channels, as ``load_components`` reads it), so no worker
    scans the files again, whatever the dataset's size."""
    from curator.models.loading import load_components, load_generator
    from curator.training import pick_device

    if index is None:
        return load_components(config)
    generator = load_generator(config.generator, pick_device(config.device), config=config)
    mode, size = ("L" if generator.channels == 1 else "RGB"), generator.resolution
    train, test = (FolderImageSet(paths, labels, mode, size) for paths, labels in index["splits"])
    data = Dataset(index["name"], index["class_names"], train, test, index["skipped"])
    return load_components(config, data=data, generator=generator)


def _node_address() -> str:
    """The address this worker's node joined the cluster with (``ray start --node-ip-address``)."""
    node_id = ray.get_runtime_context().get_node_id()
    try:
        return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
    except Exception:  # not listed yet: the machine's own address
        return ray.util.get_node_ip_address()


@ray.remote(max_restarts=-1)
class StageWorker:
    """Loads a run's data and models once; runs stages for the driver.

    It never fails in its constructor: what went wrong is kept as one line for ``ready`` to return,
    so a worker that cannot start is a message naming its node, not an ActorDiedError traceback.
    """

    def __init__(self, config_json: str, threads: int, paths: list[str], index: list | None = None):
        t0 = time.monotonic()
        self.node = _node_address()
        self.error: str | None = None
        torch.set_num_threads(max(1, threads))
        for path in paths:
            try:
                _check_readable(path)
            except OSError as exc:
                self.error = (
                    f"worker on node {self.node} cannot read {path}: {exc.strerror or exc}; every node needs the "
                    "data and model folders at the same path (e.g. a shared file system)"
                )
                break
        if self.error is None:
            try:
                self.config = RunConfig.from_json(config_json)
                ref = index[0] if index else None  # [ObjectRef of folder_index(...)] or [None]
                self.data, self.generator, self.detector = _load_worker(self.config, ray.get(ref) if ref else None)
            except Exception as exc:  # one line for the driver; never a constructor traceback
                message = str(exc) if isinstance(exc, USER_ERRORS) else _one_line(exc)
                self.error = f"worker on node {self.node} cannot start: " + " ".join(message.split())
        self.startup_s = time.monotonic() - t0

    def ready(self) -> tuple[str, str | None, float, int]:
        """(node address, the start-up error or None, start-up seconds, process id)."""
        return self.node, self.error, self.startup_s, os.getpid()

    def pid(self) -> int:
        return os.getpid()

    def real_features(self, labels: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return stages.real_features(self.detector, self.data, self.config.seed, self.config.real_sample, labels)

    def run_group(self, labels: list[int], state: stages.GroupState, rounds: range | None = None):
        for item in stages.run_group(self.generator, self.detector, self.data, self.config, labels, state, rounds):
            yield to_wire(item)


def to_wire(item):
    """``item`` as it travels to the driver: images as uint8, exactly what the PNG they are stored
    as holds (the detector has already seen the float images here), a quarter of float32's bytes."""
    if isinstance(item, stages.ImagesDone) and item.images.is_floating_point():
        return replace(item, images=(item.images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8))
    return item


def from_wire(item):
    """The inverse of ``to_wire``: float images in [0, 1] whose PNGs are the worker's, byte for byte."""
    if isinstance(item, stages.ImagesDone) and item.images.dtype == torch.uint8:
        return replace(item, images=item.images.float().div_(255))
    return item


def worker_paths(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """The config the workers get, with every local path made absolute, and those paths.

    A value is a local path when it exists here, or is absolute, or starts with ``.`` or ``~``;
    anything else (``mnist5k``, a Hugging Face id, ``imagenette``) is passed on as it is.
    """

    def local(value):
        if not isinstance(value, str) or not value or value == BUILTIN:
            return None
        if os.path.exists(value) or value.startswith((".", "~", os.sep)):
            return os.path.abspath(os.path.expanduser(value))
        return None

    changes = {name: p for name in ("data", "generator", "detector", "class_map")
               if (p := local(getattr(config, name))) is not None}  # fmt: skip
    return replace(config, **changes), sorted(set(changes.values()))


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for a moment (for logs written below Python)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _auth_probe(address: str) -> None:
    """Fail at once, with what to do, when the cluster at HOST:PORT wants a token this process lacks
    (``ray.init`` would retry for about 20 s and end in "Failed to connect to Ray cluster")."""
    try:
        from ray._raylet import GcsClient  # Ray's own client of the cluster's control service
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray: ray.init will say it, with the hint added below
        return
    try:
        with _quiet_stderr():  # Ray's C++ client logs each refusal to fd 2
            GcsClient(address=address)
    except AuthenticationError:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {AUTH_HINT}") from None
    except Exception:  # anything else: let ray.init try and report it
        return


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (auto | HOST:PORT | ray://HOST:PORT), or start a local one.

    The job's ``runtime_env`` carries ``SHIPPED_ENV`` and, on a cluster, the curator's code (so the
    workers run the driver's code whatever is installed on the nodes). An address that does not
    answer within ``CONNECT_TIMEOUT_S``, or that wants a token, is a ConfigError naming it.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    env = {var: os.environ[var] for var in SHIPPED_ENV if var in os.environ}
    if address is None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env}, **kwargs)
        return
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        if not address.startswith("ray://") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            _auth_probe(f"{host or '127.0.0.1'}:{port}")
    try:
        ray.init(address=address, runtime_env={"env_vars": env, "py_modules": [str(PACKAGE)]}, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ...: one line naming the address
        hint = f"; if {AUTH_HINT}" if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" else ""
        raise ConfigError(f"cannot join the Ray cluster at {address}: {_one_line(exc)}{hint}") from None


def plan_workers(
    workers: int | None, cpus_per_worker: float | None, gpus_per_worker: float | None
) -> tuple[int, float, float]:
    """(workers, CPUs each, GPUs each) that fit the cluster's free resources now.

    Default: one worker per free GPU (the free CPUs shared among them), else one per free CPU;
    ``workers`` alone shares the free CPUs among them. A request that does not fit is one line
    saying what is free, so a run never waits silently for resources that will not come.
    """
    deadline = time.monotonic() + RESOURCES_SETTLE_S
    while True:
        try:
            return _plan(workers, cpus_per_worker, gpus_per_worker)
        except WorkerError:
            if time.monotonic() > deadline:  # freed resources (a run's workers just killed) show up late
                raise
            time.sleep(1.0)


def _plan(workers: int | None, cpus_per_worker: float | None, gpus_per_worker: float | None):
    total, free = ray.cluster_resources(), ray.available_resources()
    free_cpu, free_gpu = free.get("CPU", 0.0), free.get("GPU", 0.0)
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if total.get("GPU", 0) else 0.0
    if workers is None:
        workers = int(free_gpu // gpus_per_worker) if gpus_per_worker else int(free_cpu // (cpus_per_worker or 1))
    if cpus_per_worker is None:
        cpus_per_worker = max(1.0, float(int(free_cpu // max(1, workers))))
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    # per node, as a worker cannot span nodes
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fit = sum(int(r.get("CPU", 0) // cpus_per_worker) if cpus_per_worker else workers for r in nodes)
    if gpus_per_worker:
        fit = min(fit, sum(int(r.get("GPU", 0) // gpus_per_worker) for r in nodes))
    fit = min(fit, int(free_cpu // cpus_per_worker) if cpus_per_worker else workers)
    if gpus_per_worker:
        fit = min(fit, int(free_gpu // gpus_per_worker))
    if workers < 1 or need_cpu > free_cpu + 1e-9 or need_gpu > free_gpu + 1e-9 or fit < workers:
        each = f"{cpus_per_worker:g} CPU" + (f" and {gpus_per_worker:g} GPU" if gpus_per_worker else "")
        has = f"{free_cpu:g} of {total.get('CPU', 0):g} CPUs" + (
            f" and {free_gpu:g} of {total.get('GPU', 0):g} GPUs" if gpus_per_worker else ""
        )
        what = (f"use --ray-workers {fit} or fewer" if fit >= 1 else
                "wait for other jobs to finish, add nodes, or ask for less per worker")  # fmt: skip
        raise WorkerError(
            f"{max(workers, 1)} Ray worker(s) of {each} each do not fit: the cluster has {has} free "
            f"(room for {fit} such worker(s)); {what} (--ray-cpus-per-worker, --ray-gpus-per-worker)"
        )
    return workers, cpus_per_worker, gpus_per_worker


class WorkerPool:
    """The run's workers, started and ready: each has checked the run's paths and loaded the models."""

    def __init__(self, workers: list, startup_s: float, index_ref=None):
        self.workers = workers
        self.startup_s = startup_s  # the slowest worker's start-up (s)
        self.index_ref = index_ref  # the data's file index, kept while the workers may restart
        self.shared = False  # kept across jobs by an EnginePool: the engines using it do not kill it

    def usable(self) -> bool:
        """Whether the workers can still be used (killed pools, or a Ray shut down, cannot)."""
        return bool(self.workers) and ray.is_initialized()

    @classmethod
    def start(
        cls,
        config: RunConfig,
        progress=None,
        *,
        workers: int | None = None,
        cpus_per_worker: float | None = None,
        gpus_per_worker: float | None = None,
        placement: str | None = None,
        data: Dataset | None = None,
    ) -> WorkerPool:
        """Start the workers that fit the cluster (``plan_workers``) and wait until they are ready;
        ``data``, the driver's dataset, gives them its file index (``folder_index``)."""
        progress = progress or (lambda stage, done, total, label: None)
        if placement not in (None, *PLACEMENTS):
            raise ConfigError(f"--ray-placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if cpus_per_worker is not None and cpus_per_worker <= 0:
            raise ConfigError(f"--ray-cpus-per-worker must be more than 0, got {cpus_per_worker}")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise ConfigError(f"--ray-gpus-per-worker must be 0 or more, got {gpus_per_worker}")
        n, cpus, gpus = plan_workers(workers, cpus_per_worker, gpus_per_worker)
        # torch threads per worker: its own CPUs, or OMP_NUM_THREADS where it is set
        threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, math.floor(cpus)))
        options: dict = {"num_cpus": cpus, "num_gpus": gpus}
        if placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        worker_config, paths = worker_paths(config)
        index = folder_index(data) if data is not None else None
        # one copy in the object store, shared; passed inside a list, so that Ray hands the worker the
        # reference (fetched in its constructor) and the pool's reference keeps it for restarts
        index_ref = ray.put(index) if index is not None else None
        with _quiet_stderr():  # Ray's C++ warning about restarts and object-store arguments: the pool keeps it
            actors = [StageWorker.options(**options).remote(worker_config.to_json(), threads, paths, [index_ref])
                      for _ in range(n)]  # fmt: skip
        try:
            return cls(actors, _await_start(actors, progress), index_ref)
        except BaseException:
            cls(actors, 0.0).kill()
            raise

    def kill(self) -> None:
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:  # already gone
                pass
        self.workers = []


def _await_start(workers: list, progress) -> float:
    """Wait (bounded, with progress) until every worker has loaded its models; a worker that cannot
    start is one line naming its node. Returns the slowest start-up (s)."""
    deadline, slowest = time.monotonic() + START_TIMEOUT_S, 0.0
    left = [w.ready.remote() for w in workers]
    while left:
        progress("starting Ray workers", len(workers) - len(left), len(workers), None)
        done, left = ray.wait(left, num_returns=1, timeout=1.0)
        for ref in done:
            try:
                node, error, seconds, _ = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise WorkerError(f"a Ray worker died while starting: {_one_line(exc)}") from None
            if error:
                raise WorkerError(error)
            slowest = max(slowest, seconds)
        if left and time.monotonic() > deadline:
            raise WorkerError(
                f"{len(left)} of {len(workers)} Ray workers did not start within {START_TIMEOUT_S:.0f} s "
                "(not placed, or still loading the models); check `ray status`, or use fewer workers"
            )
    progress("starting Ray workers", len(workers), len(workers), None)
    return slowest


class RayEngine(Engine):
    """Runs groups of classes on Ray actors, as many at once as there are workers."""

    name = "ray"

    @classmethod
    def create(cls, config, root, run_id=None, **kwargs):
        """Join the cluster and start the workers (each checks that it can read the run's paths
        and load its models) before the run folder is made: bad input leaves no run folder."""
        connect(kwargs.get("ray_address"))
        names = ("workers", "cpus_per_worker", "gpus_per_worker", "placement")
        options = {k: kwargs.pop(k) for k in names if k in kwargs}
        data = kwargs.pop("data", None) or driver_data(config.validate())
        pool = WorkerPool.start(config.validate(), kwargs.get("progress"), data=data, **options)
        try:
            return super().create(config, root, run_id, data=data, pool=pool, **kwargs)
        except BaseException:
            pool.kill()
            raise

    @classmethod
    def start_workers(cls, config, data=None, progress=None, *, ray_address=None, **options):
        """Join the cluster and start the workers, for an ``EnginePool`` to keep across jobs
        (``shared``: the engines given them with ``pool=`` leave them running when they close)."""
        connect(ray_address)
        names = ("workers", "cpus_per_worker", "gpus_per_worker", "placement")
        pool = WorkerPool.start(config.validate(), progress, data=data or driver_data(config),
                                **{k: options[k] for k in names if options.get(k) is not None})  # fmt: skip
        pool.shared = True
        return pool

    @classmethod
    def _load(cls, config, data=None, generator=None, detector=None):
        """The driver needs the data's index only (class names, labels, files); the workers load the
        models (and check that they fit the data) where they run them."""
        return data or driver_data(config), None, None

    def __init__(
        self,
        store,
        *,
        ray_address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float | None = None,
        gpus_per_worker: float | None = None,
        placement: str | None = None,
        wait_s: float | None = None,
        pool: WorkerPool | None = None,
        **kwargs,
    ):
        self.wait_s = wait_s
        try:
            if wait_s is not None and wait_s <= 0:
                raise ConfigError(f"--ray-wait-s must be more than 0, got {wait_s}")
            super().__init__(store, **kwargs)
            connect(ray_address)
            self.address = ray_address
            self.pool = pool or WorkerPool.start(self.config, self.progress, workers=workers,
                                                 cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                                 placement=placement, data=self.data)  # fmt: skip
        except BaseException:
            if pool is not None and not pool.shared:
                pool.kill()
            store.close()
            raise
        self.workers = self.pool.workers
        self.startup_s = self.pool.startup_s

    def close(self) -> None:
        if hasattr(self, "pool") and not self.pool.shared:
            self.pool.kill()
        super().close()

    def worker_pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    @property
    def comeback_s(self) -> float:
        """How long a lost worker may take to come back before the run gives up (s): ``wait_s`` where
        given, else 5 times the slowest measured start-up, at least 60 s."""
        if self.wait_s is not None:
            return self.wait_s
        return max(MIN_COMEBACK_S, COMEBACK_FACTOR * getattr(self, "startup_s", 0.0))

    def _resume_hint(self) -> str:
        where = f" --ray-address {self.address}" if self.address else ""
        return f"everything finished so far is kept: resume with `python -m curator run --resume {self.store.path}" \
               f" --engine ray{where}`"  # fmt: skip

    def _lost(self, why: str) -> WorkerError:
        return WorkerError(f"{why}; {self._resume_hint()}")

    # --- where the stages run ------------------------------------------------------------------
    def _live_workers(self) -> list:
        """The workers that answer now, waiting (with progress, up to ``comeback_s``) for at least one."""
        deadline = time.monotonic() + self.comeback_s
        while True:
            refs = {w.ready.remote(): w for w in self.workers}
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=2.0)
            live = []
            for ref in done:
                try:
                    if ray.get(ref)[1] is None:
                        live.append(refs[ref])
                except Exception as exc:
                    if not _is_worker_death(exc):
                        raise
            if live:
                return [w for w in self.workers if w in live]  # in the workers' order
            if time.monotonic() > deadline:
                raise self._lost(f"no Ray worker came back within {self.comeback_s:.0f} s")
            self.progress("waiting for a Ray worker to come back", 0, 1, None)
            if self.cancel():
                raise Cancelled("cancelled by the user; resume the run to continue")
            time.sleep(1.0)

    def _real_features(self):
        """The real images' features, the classes split across the live workers; the classes of a
        worker lost on the way are computed again by those still alive."""
        labels = list(range(self.data.num_classes))
        merged: dict = {}
        for attempt in range(1, GROUP_ATTEMPTS + 1):
            todo = [label for label in labels if label not in merged]
            workers = self._live_workers()
            shards = [todo[i :: len(workers)] for i in range(len(workers))]
            lost = None
            for ref in [w.real_features.remote(s) for w, s in zip(workers, shards) if s]:
                try:
                    merged.update(ray.get(ref))
                except Exception as exc:
                    _raise_user_error(exc)
                    if not _is_worker_death(exc):
                        raise self._lost(f"the real-image features failed on Ray: {_one_line(exc)}") from None
                    lost = exc
            if lost is None:
                break
            if attempt == GROUP_ATTEMPTS:
                raise self._lost(f"the real-image features lost their Ray worker {attempt} times") from None
            self.progress("a Ray worker was lost; its classes' features go to the live workers", 0, 1, None)
        return {label: merged[label] for label in labels}  # class order, whatever the sharding

    def _stream(self, labels, state, rounds=None):
        """One group on a live worker, resubmitted (with what the store then holds) if it dies."""
        for attempt in range(1, GROUP_ATTEMPTS + 1):
            worker = self._live_workers()[0]
            try:
                gen = worker.run_group.options(num_returns="streaming").remote(labels, state, rounds)
                for ref in gen:
                    yield from_wire(ray.get(ref))  # the driver writes it before asking for the next
                return
            except Exception as exc:
                _raise_user_error(exc)
                if attempt == GROUP_ATTEMPTS or not _is_worker_death(exc):
                    raise self._lost(f"classes {labels} failed on Ray: {_one_line(exc)}") from None
                state = _resume_state(self.group_state(labels), state)

    def _run_groups(self, groups: list[list[int]]) -> Iterator[list[int]]:
        """Every group on the workers, as many at once as there are workers, yielding each group
        once it is written and marked done (the workers go on meanwhile). Results are written
        here in the groups' order, as the local engine writes them: a group that finishes early
        waits in memory until the groups before it are written, so the store's rows (and the ids the
        export's audit columns carry) do not depend on which worker was faster. A group whose worker
        dies goes back to the front of the queue, its unwritten results dropped, and the next live
        worker takes it with what the store then holds; the dead worker joins again once Ray has
        restarted it."""
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
                    events.put(("item", worker, labels, attempt, from_wire(ray.get(ref))))
                events.put(("done", worker, labels, attempt, None))
            except Exception as exc:  # the worker died (RayActorError) or a stage failed
                events.put(("error", worker, labels, attempt, exc))

        def watch(worker):
            """Tell the loop when a lost worker answers again (Ray restarts it where there is room)."""
            while not stop.is_set():
                try:
                    _, error, _, _ = ray.get(worker.ready.remote(), timeout=5.0)
                    events.put(("alive", worker, None, 0, error))
                    return
                except Exception as exc:
                    if not _is_worker_death(exc) and not isinstance(exc, ray.exceptions.GetTimeoutError):
                        events.put(("alive", worker, None, 0, _one_line(exc)))
                        return
                    time.sleep(0.5)

        pending = [(labels, 1) for labels in groups]
        free, lost = list(self.workers), []
        running: dict[tuple, object] = {}
        seconds: dict[tuple, dict[int, float]] = {}
        started: dict[tuple, float] = {}
        stalled_since: float | None = None
        write_order = [tuple(labels) for labels in groups]
        waiting: dict[tuple, list] = {}  # results of groups not yet at the head of write_order
        finished: dict[tuple, float] = {}  # group -> wall seconds, done but not yet written as done
        ready: list[list[int]] = []  # groups written and marked done, not yet yielded

        def write_ready() -> list[list[int]]:
            """Write the head group's results, and move on while the head group is done; returns
            the groups finished now."""
            done = []
            while write_order:
                head = write_order[0]
                for payload in waiting.pop(head, []):
                    for label, s in self.consume(list(head), iter([payload])).items():
                        seconds[head][label] = seconds[head].get(label, 0.0) + s
                if head not in finished:
                    break
                self.finish(list(head), seconds.pop(head), finished.pop(head))
                done.append(list(write_order.pop(0)))
            return done

        def submit(worker, labels, attempt):
            key = tuple(labels)
            if key not in started:
                with self.store.transaction():
                    for label in labels:
                        self.store.set_class_status(label, "running")
                started[key], seconds[key] = time.time(), {}
            running[key] = worker
            state = self.group_state(labels)  # the store says what is left
            threading.Thread(target=pump, args=(worker, labels, state, attempt), daemon=True).start()

        try:
            while pending or running or ready:
                while pending and free:
                    labels, attempt = pending.pop(0)
                    submit(free.pop(0), labels, attempt)
                while ready:  # after the free workers have their next groups: they run meanwhile
                    yield ready.pop(0)
                if not (pending or running):
                    break
                if pending and not running:  # nothing can move until a worker comes back
                    stalled_since = stalled_since or time.monotonic()
                    waited = time.monotonic() - stalled_since
                    self.progress(f"waiting for a Ray worker ({len(lost)} lost)", int(waited), int(self.comeback_s),
                                  None)  # fmt: skip
                    if waited > self.comeback_s:
                        raise self._lost(
                            f"{len(lost)} Ray worker(s) lost and none came back within {self.comeback_s:.0f} s "
                            "(the cluster has no room to restart them)"
                        )
                    if self.cancel():
                        raise Cancelled("cancelled by the user; resume the run to continue")
                else:
                    stalled_since = None
                try:
                    kind, worker, labels, attempt, payload = events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if kind == "alive":
                    lost.remove(worker)
                    if payload:  # restarted on a node that cannot read the run's paths
                        raise self._lost(payload)
                    free.append(worker)
                    continue
                key = tuple(labels)
                if kind == "item":
                    waiting.setdefault(key, []).append(payload)
                    ready.extend(write_ready())
                elif kind == "done":
                    running.pop(key)
                    finished[key] = time.time() - started.pop(key)
                    free.append(worker)
                    ready.extend(write_ready())
                else:
                    running.pop(key)
                    waiting.pop(key, None)  # not written: the next worker makes them again, the same
                    _raise_user_error(payload)
                    if not _is_worker_death(payload):
                        raise self._lost(f"classes {labels} failed on Ray: {_one_line(payload)}")
                    if attempt >= GROUP_ATTEMPTS:
                        raise self._lost(f"classes {labels} lost their Ray worker {attempt} times")
                    lost.append(worker)
                    self.progress(f"a Ray worker was lost; classes {labels} go to the next live worker", 0, 1, None)
                    threading.Thread(target=watch, args=(worker,), daemon=True).start()
                    pending.insert(0, (labels, attempt + 1))  # the next live worker takes it
        finally:
            stop.set()


def driver_data(config: RunConfig) -> Dataset:
    """The dataset as the driver needs it: class names, labels and the file list (the pixels are
    read by the workers, at the generator's size)."""
    return load_dataset(config.data, test_fraction=config.test_fraction, seed=config.seed)


def _resume_state(fresh: stages.GroupState, before: stages.GroupState) -> stages.GroupState:
    """What to send again after a worker died: what the store holds now (``fresh``), keeping the
    anomalies ``before`` left out (a regeneration asks for one anomaly only)."""
    return stages.GroupState(fresh.prototypes, fresh.synthetic, {**before.rounds_done, **fresh.rounds_done},
                             fresh.settled | before.settled)  # fmt: skip


def _raise_user_error(exc: BaseException) -> None:
    """A stage that failed on a worker with a user error (a data file that changed, ...) is that error."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, USER_ERRORS):
        raise cause from None


def _is_worker_death(exc: BaseException) -> bool:
    errors = ray.exceptions
    return isinstance(exc, errors.RayActorError | errors.ActorUnavailableError | errors.WorkerCrashedError)
