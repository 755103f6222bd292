"""The command line, as a user runs it: end to end on mnist5k, bad input, and resume after a kill."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import DIGITS, make_tiny_detector, make_tiny_generator

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def curator(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curator", *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout
    )


def test_end_to_end_run_on_two_classes_then_export(tmp_path):
    res = curator(
        "run",
        "--data",
        "mnist5k",
        "--classes",
        "0,1",
        "--ipc",
        "3",
        "--k",
        "4",
        "--steps",
        "6",
        "--tau",
        "0.999",
        "--out",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["class", "images", "mismatch", "low_conf"])
    table = [line.split() for line in lines[header + 1 : header + 4]]
    assert [row[0] for row in table] == ["0", "1", "all"]
    assert [int(row[1]) for row in table] == [3, 3, 6]
    run_dir = next((tmp_path / "runs").iterdir())
    res = curator("export", str(run_dir), "--out", str(tmp_path / "export"), "--zip")
    assert res.returncode == 0, res.stderr
    meta = pd.read_parquet(tmp_path / "export" / "metadata.parquet")  # typed: class names stay strings
    assert set(meta.class_name) <= {"0", "1"} and len(meta) >= 1
    assert len(pd.read_csv(tmp_path / "export" / "provenance.csv")) == len(meta)
    assert (tmp_path / "export.zip").is_file()


def test_bad_input_gives_a_message_not_a_traceback(tmp_path, capsys):
    from curator.cli import main

    def run(*args: str) -> str:
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        return err

    runs = str(tmp_path / "runs")
    assert "dataset path does not exist" in run("run", "--data", str(tmp_path / "nope"), "--out", runs)
    assert "parameter ipc must be at least 1" in run("run", "--ipc", "0", "--out", runs)
    err = run("run", "--ipc", "500", "--classes", "3", "--out", runs)
    assert "IPC = 500 is larger" in err and "'3' (400 images)" in err
    assert "missing-model" in run("run", "--generator", str(tmp_path / "missing-model"), "--out", runs)
    assert "no run at" in run("export", str(tmp_path / "no-run"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _poll(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_resume_after_the_process_is_killed_mid_class(tmp_path):
    make_tiny_generator(DIGITS).save_pretrained(tmp_path / "gen")
    make_tiny_detector(DIGITS).save(tmp_path / "det")
    runs = tmp_path / "runs"
    args = [
        "run",
        "--classes",
        "0,1",
        "--ipc",
        "4",
        "--k",
        "8",
        "--steps",
        "8",
        "--tau",
        "1.0",
        "--batch-size",
        "4",
        "--generator",
        str(tmp_path / "gen"),
        "--detector",
        str(tmp_path / "det"),
        "--out",
        str(runs),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "curator", *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    db = None
    while time.time() < deadline and proc.poll() is None:
        dbs = list(runs.glob("*/run.sqlite"))
        if dbs:
            db = dbs[0]
            if (
                _poll(
                    db,
                    "SELECT COUNT(*) FROM images i JOIN classes c ON c.label = i.label "
                    "WHERE i.kind = 'candidate' AND c.status = 'running'",
                )
                > 0
            ):
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed mid-class"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    before = {r[0]: (r[1], r[2]) for r in con.execute("SELECT id, file, seed FROM images")}
    running = con.execute("SELECT label FROM classes WHERE status='running'").fetchone()[0]
    done_before = [r[0] for r in con.execute("SELECT label FROM classes WHERE status='done'")]
    # a person decides on an anomaly that already has candidates, before resuming
    anomaly = con.execute("SELECT parent_id FROM images WHERE kind='candidate' LIMIT 1").fetchone()[0]
    cand = con.execute("SELECT MAX(id) FROM images WHERE parent_id=?", (anomaly,)).fetchone()[0]
    con.close()
    from curator.review import user_decide
    from curator.store import RunStore

    store = RunStore.open(db.parent)
    user_decide(store, anomaly, "candidate", cand)
    store.close()
    res = curator("run", "--resume", str(db.parent))
    assert res.returncode == 0, res.stderr
    store = RunStore.open(db.parent)
    assert [r.status for r in store.classes()[:2]] == ["done", "done"]
    after = {r.id: (r.file, r.seed) for r in store.synthetic() + store.all_candidates()}
    kept = [i for i in before if before[i] == after.get(i)]
    assert len(kept) == len(before), "rows written before the kill were redone or lost"
    d = store.decision(anomaly)
    assert (d.choice, d.candidate_id, d.source) == ("candidate", cand, "user")
    assert running not in done_before
    assert len(store.synthetic(running)) == 4
    for a in store.anomalies():
        assert len(store.candidates(a.id)) == 8
