"""The local engine and the Ray engine give the same run: images, anomalies, scores, picks and export.

Ray runs on a local cluster started by the test (2 CPUs, no network). Every process computes with
one torch thread, as float sums depend on the thread count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.crash import RUN_ID, export_bytes, run_cli, tiny_setup
from curator.cli import main as cli_main
from curator.config import RunConfig
from curator.engine import create_run
from curator.store import RunStore

ray = pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")
ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["a", "b", "c", "d"]
# batch 1 at IPC 2: groups of two classes, so two workers run two groups at once
PARAMS = dict(ipc=2, k=4, steps=2, tau=1.0, batch_size=1, rounds=2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from curator.engine.ray import connect

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    connect(None, num_cpus=2)
    root = tmp_path_factory.mktemp("engines")
    flags = tiny_setup(root, CLASSES)
    yield root, flags
    ray.shutdown()
    torch.set_num_threads(before)


def config_of(flags: list[str]) -> RunConfig:
    paths = dict(zip(flags[::2], flags[1::2]))
    return RunConfig(data=paths["--data"], generator=paths["--generator"], detector=paths["--detector"], **PARAMS)


def run_with(root: Path, flags: list[str], name: str, engine: str, **options) -> dict[str, bytes]:
    """Run ``RUN_ID`` under ``root/name`` (the same id everywhere: the export names it) and export it."""
    e = create_run(config_of(flags), str(root / name), RUN_ID, engine=engine, **options)
    try:
        e.run()
    finally:
        e.close()
    return export_bytes(root / name / RUN_ID, root / f"export-{name}")


@pytest.fixture(scope="module")
def local(cluster):
    root, flags = cluster
    return run_with(root, flags, "local", "local")


def test_ray_with_one_and_two_workers_equals_local(cluster, local):
    root, flags = cluster
    assert "<store>" in local and any(k.endswith(".png") for k in local)
    for workers in (1, 2):
        got = run_with(root, flags, f"ray{workers}", "ray", workers=workers)
        assert got.keys() == local.keys()
        assert [k for k in local if got[k] != local[k]] == [], f"ray with {workers} worker(s) differs"


def test_a_killed_worker_is_restarted_and_the_run_ends_the_same(cluster, local):
    root, flags = cluster
    killed, before = [], {}

    def kill_once(stage, done, total, label):
        if stage == "refinement" and not killed:
            before.update({r.id: r.file for r in engine.store.synthetic()})
            pid = engine.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    engine = create_run(config_of(flags), str(root / "ray-kill"), RUN_ID, engine="ray", workers=1, progress=kill_once)
    try:
        engine.run()
        after_pids = engine.worker_pids()
        kept = {r.id: r.file for r in engine.store.synthetic()}
    finally:
        engine.close()
    assert killed and after_pids[0] != killed[0]  # Ray restarted the worker
    assert all(kept.get(i) == f for i, f in before.items())  # what was written before the kill was not redone
    got = export_bytes(root / "ray-kill" / RUN_ID, root / "export-ray-kill")
    assert [k for k in local if got.get(k) != local[k]] == []


def test_pooled_ray_workers_serve_several_jobs_and_stream_groups_in_order(cluster, local):
    """The app's EnginePool on Ray: the run, then a Regenerate, on the same workers (started once,
    models loaded once); the run's groups arrive in order, and the run equals the local one."""
    from curator.engine import LocalEngine
    from curator.engine.pool import EnginePool

    root, flags = cluster
    made = LocalEngine.create(config_of(flags), str(root / "pooled"), RUN_ID)
    path = str(made.store.path)
    made.close()
    pool = EnginePool(idle_s=60)
    try:
        with pool.lease(path, engine="ray", workers=2) as engine:
            pids = engine.worker_pids()
            assert list(engine.run_stream()) == [[0, 1], [2, 3]]  # batch 1 at IPC 2: groups of two
        got = export_bytes(root / "pooled" / RUN_ID, root / "export-pooled")
        assert [k for k in local if got.get(k) != local[k]] == []
        store = RunStore.open(path)
        aid = store.anomalies(0)[0].id
        store.close()
        with pool.lease(path, engine="ray", workers=2) as engine:
            assert engine.worker_pids() == pids and engine.regenerate(aid) == PARAMS["rounds"] + 1
        assert pool.starts == 1
        workers = pool._slot.workers
    finally:
        pool.close()
    assert workers.workers == [] and pool.held is None


@pytest.mark.parametrize("first, then", [("local", "ray"), ("ray", "local")])
def test_a_killed_driver_resumes_on_either_engine(cluster, local, first, then):
    root, flags = cluster
    out = root / f"kill-{first}"
    args = ["run", *flags, *[f"--{k.replace('_', '-')}={v}" for k, v in PARAMS.items()], "--out", str(out)]
    args += ["--run-id", RUN_ID, "--engine", first]
    proc = run_cli(args, crash_after=7)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert cli_main(["run", "--resume", str(out / RUN_ID), "--engine", then]) == 0
    got = export_bytes(out / RUN_ID, root / f"export-kill-{first}")
    assert [k for k in local if got.get(k) != local[k]] == []


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Token authentication" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_engine_input_is_one_line(cluster, tmp_path):
    root, flags = cluster
    base = ["run", *flags, "--ipc", "1", "--k", "1", "--steps", "1", "--out", str(tmp_path)]
    _one_line(run_cli([*base, "--engine", "spark"], timeout=60), "--engine", "spark")
    t0 = time.monotonic()
    _one_line(run_cli([*base, "--engine", "ray", "--ray-address", "127.0.0.1:9"], timeout=120), "127.0.0.1:9")
    assert time.monotonic() - t0 < 60  # refused at once, or given up after a bounded wait
    no_ray = "import sys; sys.modules['ray'] = None; from curator.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", no_ray, *base, "--engine", "ray"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    _one_line(proc, "ray")
    assert not any(tmp_path.iterdir())  # nothing written

    made = root / "other"
    assert cli_main(["run", *flags, "--ipc", "1", "--k", "1", "--steps", "1", "--out", str(made), "--run-id", "x"]) == 0
    proc = run_cli(["run", "--resume", str(made / "x"), "--engine", "ray", "--ipc", "2"], timeout=120)
    _one_line(proc, "--ipc 2", "the run has 1")


def test_workers_get_absolute_paths_and_names_pass_through(tmp_path, monkeypatch):
    from curator.engine.ray import worker_paths

    (tmp_path / "gen").mkdir()
    (tmp_path / "map.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    config = RunConfig(data="mnist5k", generator="gen", detector="./det", class_map="map.json")
    sent, paths = worker_paths(config)
    assert (sent.data, sent.generator, sent.detector, sent.class_map) == (
        "mnist5k", str(tmp_path / "gen"), str(tmp_path / "det"), str(tmp_path / "map.json"))  # fmt: skip
    assert paths == sorted([str(tmp_path / "gen"), str(tmp_path / "det"), str(tmp_path / "map.json")])
    # a Hugging Face id and a class-map name are names, not paths: sent as they are, not checked
    sent, paths = worker_paths(RunConfig(generator="org/some-model", class_map="imagenette"))
    assert (sent.generator, sent.class_map) == ("org/some-model", "imagenette")
    assert all(p != "org/some-model" for p in paths)


def test_images_travel_as_uint8_and_store_the_same_png(tmp_path):
    import numpy as np

    from curator import stages
    from curator.engine.ray import from_wire, to_wire
    from curator.store import save_png

    images = torch.rand(3, 3, 40, 40)
    images[0, 0, 0, :3] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255])  # rounding ties
    item = stages.ImagesDone("synthesis", (), images, ())
    sent = to_wire(item)
    assert sent.images.dtype == torch.uint8 and sent.images.nelement() == images.nelement()
    back = from_wire(sent)
    for i in range(3):
        save_png(images[i], tmp_path / f"a{i}.png")
        save_png(back.images[i], tmp_path / f"b{i}.png")
        assert (tmp_path / f"a{i}.png").read_bytes() == (tmp_path / f"b{i}.png").read_bytes()
    assert np.abs(back.images - images).max() <= 0.5 / 255 + 1e-6
