"""EnginePool: one engine's workers kept across jobs of a run, closed when the run changes, after
idling, when a job fails, and at close. The workers here are a counting stand-in (the local
engine has none); tests/test_engines.py runs the pool on a real Ray."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

import curator.engine
from curator.config import RunConfig
from curator.engine import Cancelled, LocalEngine
from curator.engine.pool import EnginePool
from curator.store import RunStore

torch.set_num_threads(1)


class Workers:
    def __init__(self, log: list):
        self.log, self.killed = log, False
        log.append(("start", self))

    def kill(self) -> None:
        self.killed = True
        self.log.append(("kill", self))


class PooledEngine(LocalEngine):
    """The local engine with workers to keep (counted), as the Ray engine has."""

    log: list = []

    @classmethod
    def start_workers(cls, config, data=None, progress=None, **options):
        return Workers(cls.log)

    def __init__(self, store, *, pool=None, workers=None, **kwargs):  # workers: an option, as on Ray
        super().__init__(store, **kwargs)
        self.pool = pool


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    data = write_image_folder(root / "data", {"a": 6, "b": 6}, size=20)
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(root / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(root / "det")
    config = RunConfig(data=str(data), generator=str(root / "gen"), detector=str(root / "det"), ipc=2, k=2, steps=2,
                       tau=1.0, device="cpu", real_sample=2)  # fmt: skip
    paths = []
    for seed in (0, 1):
        engine = LocalEngine.create(RunConfig(**{**config.__dict__, "seed": seed}), str(root / "runs"))
        paths.append(str(engine.store.path))
        engine.close()
    return paths


@pytest.fixture
def pooled(monkeypatch):
    PooledEngine.log = []
    monkeypatch.setattr(curator.engine, "engine_class", lambda name: PooledEngine)
    return PooledEngine.log


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_two_jobs_on_a_run_share_its_workers_and_the_writer_lock_is_free_between_them(runs, pooled):
    pool = EnginePool(idle_s=60)
    with pool.lease(runs[0], engine="pooled") as first:
        first.run_class(0)
    assert pool.starts == 1 and pool.held is not None
    other = RunStore.open(runs[0])
    other.lock_for_writing()  # between jobs nobody holds the run (the CLI may resume it)
    other.close()
    with pool.lease(runs[0], engine="pooled") as second:
        assert second is not first and second.pool is first.pool  # the same workers
        second.run_class(1)
    assert pool.starts == 1 and [what for what, _ in pooled] == ["start"]
    pool.close()
    assert [what for what, _ in pooled] == ["start", "kill"] and pool.held is None


def test_another_run_closes_the_workers_of_the_last(runs, pooled):
    pool = EnginePool(idle_s=60)
    with pool.lease(runs[0], engine="pooled") as e:
        old = e.pool
    with pool.lease(runs[1], engine="pooled") as e:
        assert old.killed and e.pool is not old and not e.pool.killed
    with pool.lease(runs[1], engine="pooled", workers=1):  # other engine options: other workers
        pass
    assert pool.starts == 3 and [what for what, _ in pooled] == ["start", "kill", "start", "kill", "start"]
    pool.close()


def test_idle_workers_are_closed_after_the_timeout(runs, pooled):
    clock = Clock()
    pool = EnginePool(idle_s=30, clock=clock)
    with pool.lease(runs[0], engine="pooled") as e:
        workers = e.pool
        clock.now += 100  # a long job is not idle time
    assert not pool.close_idle() and not workers.killed
    clock.now += 29
    assert not pool.close_idle()
    clock.now += 2
    assert pool.close_idle() and workers.killed and pool.held is None
    with pool.lease(runs[0], engine="pooled"):
        pass
    clock.now += 31  # the timer did not fire yet: the next lease notices and starts afresh
    with pool.lease(runs[0], engine="pooled"):
        pass
    assert pool.starts == 3
    pool.close()


def test_the_idle_timer_closes_the_workers_by_itself(runs, pooled):
    pool = EnginePool(idle_s=0.2)
    with pool.lease(runs[0], engine="pooled") as e:
        workers = e.pool
    deadline = time.monotonic() + 10
    while not workers.killed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers.killed and pool.held is None


def test_a_failed_job_drops_its_workers_a_cancelled_one_keeps_them(runs, pooled):
    pool = EnginePool(idle_s=60)
    with pytest.raises(Cancelled), pool.lease(runs[0], engine="pooled") as e:
        kept = e.pool
        raise Cancelled("by the user")
    assert not kept.killed and pool.held is not None
    with pytest.raises(RuntimeError), pool.lease(runs[0], engine="pooled") as e:
        assert e.pool is kept
        raise RuntimeError("a worker broke")
    assert kept.killed and pool.held is None
    with pool.lease(runs[0], engine="pooled") as e:
        assert e.pool is not kept and pool.starts == 2
    pool.close()


def test_the_local_engine_keeps_nothing(runs):
    pool = EnginePool(idle_s=60)
    with pool.lease(runs[0], engine="local") as e:
        assert isinstance(e, LocalEngine)
    assert pool.starts == 0 and pool.held is None


def test_bad_idle_timeouts_are_refused():
    with pytest.raises(ValueError, match="idle_s"):
        EnginePool(idle_s=0)
