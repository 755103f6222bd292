"""Crash safety, in the spirit of SQLite's crash tests: a real ``curator run`` process is SIGKILLed
right after its N-th store commit (``CURATOR_CRASH_AFTER_COMMITS=N``), for every N of a small run,
then resumed and exported. Each export must be byte-identical to an uninterrupted run's, and the
store must pass ``PRAGMA integrity_check`` and ``RunStore.check``.

``CURATOR_CRASH_STEP`` (default 1: every commit) makes the sweep coarser; ``make crash-test`` runs
the same sweep on a larger run (benchmarks/crash.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.crash import (
    INTERLEAVINGS,
    RUN_ID,
    action_sweep,
    crash_sweep,
    export_bytes,
    run_cli,
    tiny_setup,
    uninterrupted,
)
from curator import store as store_module
from curator.cli import main as cli_main
from curator.config import RunConfig
from curator.engine import LocalEngine
from curator.errors import StoreError
from curator.store import NewImage, RunStore


@pytest.fixture
def one_thread():
    """Resume in this process with the killed process's one torch thread: float sums depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("crash")
    args = tiny_setup(root, ["a", "b"])
    # tau 1.0 flags every image; batch 2 with K 4 stores candidates in several chunks; 2 rounds
    # regenerate anomalies the tiny detector leaves unresolved.
    args += ["--ipc", "2", "--k", "4", "--steps", "2", "--tau", "1.0", "--batch-size", "2", "--rounds", "2"]
    return root, args


@pytest.fixture(scope="module")
def reference(small) -> dict[str, bytes]:
    """The export of the small run done in one go (a real process, one thread)."""
    root, args = small
    return uninterrupted(["run", *args], root)


def test_kill_after_every_commit_resumes_to_the_same_export(small, reference, tmp_path, one_thread):
    root, args = small
    step = int(os.environ.get("CURATOR_CRASH_STEP", "1"))
    kills = crash_sweep(["run", *args], reference, tmp_path, step=step)
    print(f"crash sweep: {kills} kill points, step {step}")
    assert kills >= 8  # the run has at least this many commits; fewer means commits were merged away


@pytest.mark.parametrize("name", list(INTERLEAVINGS))
def test_a_persons_actions_killed_after_every_commit_end_on_the_pick_as_it_stands(
    small, reference, tmp_path, one_thread, name
):
    """Decide, regenerate and undo in several orders, killed after each commit: resumed, every copy
    passes ``RunStore.check`` and, every decision undone, each anomaly is back on the stored pick."""
    root, _ = small
    step = int(os.environ.get("CURATOR_CRASH_STEP", "1"))
    kills = action_sweep(root / "ref" / RUN_ID, INTERLEAVINGS[name], tmp_path, step=step)
    print(f"{name}: {kills} kill points, step {step}")
    assert kills >= len(INTERLEAVINGS[name]) // step  # at least one commit per action


BULK_KILLED_BEFORE_COMMIT = """
import os, signal, sys
from curator.review import bulk_accept, bulk_targets, review_queue
from curator.store import RunStore
store = RunStore.open(sys.argv[1])
with store.transaction():  # the bulk joins this transaction: every row is written, none committed
    print(bulk_accept(store, bulk_targets(review_queue(store), 0.0, 0.0)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_bulk_accept_killed_midway_leaves_none_of_it_and_then_runs_whole(small, reference, tmp_path):
    """A kill inside the bulk's transaction (after its last row, before its commit) keeps none of it;
    the kills after each commit are in ``INTERLEAVINGS`` ("decide, bulk accept, undo")."""
    from benchmarks.crash import run_python
    from curator.review import bulk_accept, bulk_targets, review_queue

    root, _ = small
    run = tmp_path / RUN_ID
    shutil.copytree(root / "ref" / RUN_ID, run)
    proc = run_python(["-c", BULK_KILLED_BEFORE_COMMIT, str(run)])
    assert proc.returncode == -9, proc.stderr
    written = int(proc.stdout.split()[0])
    assert written > 1  # the sweep needs a batch of several decisions to see a partial one
    store = RunStore.open(run)
    try:
        assert all(d.source == "auto" for d in store.decisions().values())
        assert store.undo_last() is None and store.check() == []
        assert bulk_accept(store, bulk_targets(review_queue(store), 0.0, 0.0)) == written
        assert store.undo_last().count == written
        assert all(d.source == "auto" for d in store.decisions().values()) and store.check() == []
    finally:
        store.close()


def test_partly_saved_real_features_are_recomputed_not_used(tmp_path, mnist, tiny_generator, tiny_detector):
    """A run killed while real-image features were being saved (old stores: one row set per class)
    must centre on every class's features after the resume, not on the classes that were saved."""
    cfg = RunConfig(ipc=3, k=4, steps=3, strength=0.6, tau=1.0, classes=["0", "1"], batch_size=8, real_sample=5)

    def scores(engine: LocalEngine) -> list[tuple]:
        engine.run()
        rows = [c for a in engine.store.anomalies() for c in engine.store.candidates(a.id)]
        picks = [engine.store.decision(a.id).candidate_id for a in engine.store.anomalies()]
        return [(r.uniqueness, r.score) for r in rows] + picks

    whole = LocalEngine.create(cfg, str(tmp_path / "a"), data=mnist, generator=tiny_generator, detector=tiny_detector)
    want = scores(whole)
    killed = LocalEngine.create(cfg, str(tmp_path / "b"), data=mnist, generator=tiny_generator, detector=tiny_detector)
    _, idx, feats = whole.store.real_features(0)
    with killed.store.transaction() as db:  # what the old per-class commits left behind: class 0 only
        db.executemany(
            "INSERT INTO real_features(label, train_index, feature) VALUES (0, ?, ?)",
            [(int(i), f.tobytes()) for i, f in zip(idx, feats)],
        )
    assert scores(killed) == want
    assert killed.store.check() == []


def test_a_second_writer_is_refused_with_one_line_and_readers_still_work(small, reference):
    root, _ = small
    run = root / "ref" / RUN_ID
    holder = RunStore.open(run)
    holder.lock_for_writing()
    try:
        proc = run_cli(["run", "--resume", str(run)])
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and f"process {os.getpid()}" in lines[0], lines
        assert "Traceback" not in proc.stderr
        summary = run_cli(["summary", str(run)])
        assert summary.returncode == 0 and "done" in summary.stdout
        with pytest.raises(StoreError, match="being written by"):
            RunStore.open(run).lock_for_writing()  # a second writer in this process too
    finally:
        holder.close()
    again = RunStore.open(run)
    again.lock_for_writing()  # released by close()
    again.close()


def test_the_schema_refuses_a_second_synthetic_image_per_prototype(small, reference, tmp_path):
    root, _ = small
    run = tmp_path / RUN_ID
    shutil.copytree(root / "ref" / RUN_ID, run)
    store = RunStore.open(run)
    row = store.synthetic(0)[0]
    twin = dict(
        label=0, prototype_id=row.prototype_id, kind="synthetic", parent_id=None, round=0, position=0,
        seed=1, image=store.load_image(row), confidence=0.5, predicted=0, reason=None,
        feature=np.zeros(4, np.float32),
    )  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError):
        store.add_images([NewImage(**twin)])
    # A database written before the rule existed, holding twins, is refused with one line.
    store.db.execute("DROP INDEX one_synthetic_per_prototype")
    store.add_images([NewImage(**twin)])
    store.close()
    with pytest.raises(StoreError, match="duplicate rows"):
        RunStore.open(run)
    assert cli_main(["summary", str(run)]) == 2


def test_an_unreadable_run_database_is_one_line(tmp_path, capsys):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "run.sqlite").write_bytes(b"this is not a database" * 100)
    for argv in (["summary", str(run)], ["run", "--resume", str(run)], ["export", str(run)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot read the run database" in err[0] and "run.sqlite" in err[0], err


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_to_the_same_export(
    small, reference, tmp_path, monkeypatch, capsys, one_thread
):
    root, args = small
    real_save, calls = store_module.save_png, []

    def save_until_full(image, path):
        calls.append(path)
        if len(calls) > 9:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(image, path)

    monkeypatch.setattr(store_module, "save_png", save_until_full)
    assert cli_main(["run", *args, "--out", str(tmp_path), "--run-id", RUN_ID]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: disk full") and "--resume" in err[-1], err
    assert [line for line in err if line.startswith("error")] == [err[-1]]
    monkeypatch.setattr(store_module, "save_png", real_save)
    assert cli_main(["run", "--resume", str(tmp_path / RUN_ID)]) == 0
    assert export_bytes(tmp_path / RUN_ID, tmp_path / "export") == reference
