"""Regression fingerprint of the default run: its images, anomalies, scores, picks and export.

Taken before the engine redesign (issue #9) and kept since: a change that alters what the default
run computes must show up here, and update ``EXPECTED`` on purpose, saying why in its commit.
The export is fingerprinted by content (images, and the metadata rows without file names), so the
naming of files is free to change.
"""

from __future__ import annotations

import hashlib
import io

import pandas as pd

from benchmarks.crash import run_cli, store_digest
from curator.export import export_run
from curator.store import RunStore

# `python -m curator run --data mnist5k --ipc 10 --k 20` with the shipped models, seed 0, one thread.
EXPECTED = "6aed3df575800bb710eaf64a0a3adf65072e0595772c1fdb0ec74e2bc4c6013d"


def fingerprint(run, out) -> str:
    store = RunStore.open(run)
    try:
        h = hashlib.sha256(store_digest(store))
        export_run(store, out)
    finally:
        store.close()
    for digest in sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.png")):
        h.update(digest.encode())
    rows = pd.read_csv(out / "provenance.csv").drop(columns=["file_name", "run_id"])
    buf = io.StringIO()
    rows.sort_values(list(rows.columns)).to_csv(buf, index=False)
    h.update(buf.getvalue().encode())
    return h.hexdigest()


def test_the_default_run_is_unchanged(tmp_path):
    proc = run_cli(["run", "--data", "mnist5k", "--ipc", "10", "--k", "20", "--out", str(tmp_path), "--run-id", "fp"])
    assert proc.returncode == 0, proc.stderr
    got = fingerprint(tmp_path / "fp", tmp_path / "export")
    assert got == EXPECTED, f"the default run changed: fingerprint {got}"
