"""Regression check of the default run against a golden record that holds on every x86 CPU.

PyTorch picks its SIMD kernels by CPU (``ATEN_CPU_CAPABILITY`` = default, avx2, avx512), and they
change float bits, so a hash of the run would measure the CPU, not the code. This test compares
instead, with the record in ``tests/golden/default-run/``:

- exactly, what the run decides: every stored image (class, prototype, kind, round, position,
  seed), the detector's predicted class and anomaly reason, every decision and automatic pick,
  and the exported files (class folder, label, source, prototype, seed, decision);
- within stated tolerances, what it measures: ``FLOAT_TOL`` (confidence within 1e-4, uniqueness
  and score within 1e-5) and the exported PNG pixels within ``PIXEL_TOL`` (1/255).

Measured on one AVX-512 machine under ``ATEN_CPU_CAPABILITY`` = default, avx2 and avx512, each with
1 and 2 torch threads (2026-12-04): discrete outcomes and pixels identical; floats of any two
apart by at most 2.0e-5 (confidence, on a low-confidence anomaly where the softmax is steep) and
1.7e-6 (uniqueness, score). ``test_the_golden_decisions_do_not_hang_on_float_bits`` checks that no
decision of the record lies within those tolerances of flipping.

A change that alters what the default run computes fails here. Regenerate the record on purpose,
saying why in the commit, with (about 30 s, one torch thread)::

    .venv/bin/python -m tests.test_regression --write

The run takes ``OMP_NUM_THREADS`` from the environment (default 1), so the same test checks other
thread counts, e.g. ``OMP_NUM_THREADS=2 pytest tests/test_regression.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "default-run"
# The default run with the shipped models (seed 0); ``--ipc 10 --k 20`` are the defaults, spelled out.
RUN_ARGS = ["run", "--data", "mnist5k", "--ipc", "10", "--k", "20"]
# Absolute tolerances, 5 times or more the largest difference measured across CPU kernels and threads.
FLOAT_TOL = {"confidence": 1e-4, "uniqueness": 1e-5, "score": 1e-5}
PIXEL_TOL = 1  # exported PNG pixels, in 8-bit steps (1/255)
FLOATS = list(FLOAT_TOL)
# One row per stored image (synthetic images and candidates): identity, detector outcome, decision.
IMAGE_KEY = ["label", "prototype", "round", "position"]  # round 0: the synthetic image
# One row per exported file; the file name itself is free to change, its class folder is not.
EXPORT_KEY = ["label", "prototype_id", "source", "seed"]


def run_default(out: Path, run_id: str = "golden") -> Path:
    """``python -m curator run`` the default run as a real process; returns the run folder."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("CURATOR_CRASH_AFTER_COMMITS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "curator", *RUN_ARGS, "--out", str(out), "--run-id", run_id],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"the default run failed:\n{proc.stderr}")
    return out / run_id


def image_rows(run: Path) -> pd.DataFrame:
    """Every stored image of the run with its detector outcome, scores and decision, as a table."""
    from curator.store import RunStore

    store = RunStore.open(run)
    try:
        idx = {p.id: p.idx for p in store.prototypes()}
        rows = []
        for a in store.synthetic():
            d = store.decision(a.id)
            auto = store.auto_pick(a.id) if a.is_anomaly else None
            chosen = d.candidate_id if d is not None else None
            for r in [a, *store.candidates(a.id)]:
                rows.append({
                    "label": r.label, "prototype": idx[r.prototype_id], "kind": r.kind, "round": r.round,
                    "position": r.position, "seed": r.seed, "predicted": r.predicted, "reason": r.reason or "",
                    "decision": f"{d.choice}/{d.source}" if r is a and d is not None else "",
                    "chosen": int(r.id == chosen), "auto_pick": int(r.id == auto),
                    "confidence": r.confidence, "uniqueness": r.uniqueness, "score": r.score,
                })  # fmt: skip
    finally:
        store.close()
    return pd.DataFrame(rows).sort_values(IMAGE_KEY, ignore_index=True)


def export_rows(run: Path, out: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Export the run; its metadata rows (class folder instead of file name) and pixels [N, H, W(, C)]."""
    from curator.export import export_run
    from curator.store import RunStore

    store = RunStore.open(run)
    try:
        export_run(store, out)
    finally:
        store.close()
    rows = pd.read_csv(out / "provenance.csv", keep_default_na=False)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    if sorted(rows["file_name"]) != files:
        odd = sorted(set(files) ^ set(rows["file_name"]))
        raise AssertionError(f"the export's metadata and its PNG files differ: {odd}")
    rows.insert(0, "folder", rows["file_name"].map(lambda f: Path(f).parts[0]))
    rows = rows.sort_values(EXPORT_KEY, ignore_index=True)
    pixels = np.stack([np.asarray(Image.open(out / f)) for f in rows["file_name"]])
    return rows.drop(columns=["file_name", "run_id"]), pixels


def write_golden(run: Path, work: Path) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    images = image_rows(run)
    export, pixels = export_rows(run, work / "export")
    images.to_csv(GOLDEN / "images.csv", index=False, float_format="%.8f")
    export.to_csv(GOLDEN / "export.csv", index=False, float_format="%.8f")
    np.savez_compressed(GOLDEN / "pixels.npz", pixels=pixels)


def read_golden(name: str) -> pd.DataFrame:
    return pd.read_csv(GOLDEN / name, keep_default_na=False, dtype={"reason": str, "decision": str})


def assert_same(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    """Discrete columns equal exactly, float columns within FLOAT_TOL; the message names the rows."""
    assert list(got.columns) == list(want.columns), f"{what}: columns {list(got.columns)} != {list(want.columns)}"
    assert len(got) == len(want), f"{what}: {len(got)} rows, the golden record has {len(want)}"
    discrete = [c for c in want.columns if c not in FLOATS]
    g, w = got[discrete].fillna("").astype(str), want[discrete].fillna("").astype(str)
    bad = (g != w).any(axis=1)
    assert not bad.any(), f"{what}: rows differ\ngot:\n{g[bad].head(10)}\ngolden:\n{w[bad].head(10)}"
    for c in FLOATS:
        gv = pd.to_numeric(got[c].replace("", np.nan)).to_numpy(float)
        wv = pd.to_numeric(want[c].replace("", np.nan)).to_numpy(float)
        assert (np.isnan(gv) == np.isnan(wv)).all(), f"{what}: {c} present on other rows"
        err = np.nan_to_num(np.abs(gv - wv))
        i, tol = int(err.argmax()), FLOAT_TOL[c]
        assert err[i] <= tol, f"{what}: {c} differs by {err[i]:.3g} (> {tol}) on\n{got.loc[i, discrete]}"


def test_the_default_run_matches_the_golden_record(tmp_path):
    run = run_default(tmp_path)
    assert_same(image_rows(run), read_golden("images.csv"), "stored images")
    export, pixels = export_rows(run, tmp_path / "export")
    assert_same(export, read_golden("export.csv"), "exported files")
    want = np.load(GOLDEN / "pixels.npz")["pixels"]
    assert pixels.shape == want.shape, f"exported images: shape {pixels.shape}, golden {want.shape}"
    diff = np.abs(pixels.astype(int) - want.astype(int))
    worst = diff.reshape(len(diff), -1).max(axis=1)
    assert worst.max() <= PIXEL_TOL, f"pixels differ by up to {worst.max()}/255 in {(worst > PIXEL_TOL).sum()} images"


def test_the_golden_record_has_every_kind_of_outcome():
    """The record is worth comparing against: anomalies of both reasons, resolved by picks, exported."""
    images = read_golden("images.csv")
    export = read_golden("export.csv")
    assert {"label_mismatch", "low_confidence"} <= set(images["reason"])
    assert (images["kind"] == "candidate").any() and images["chosen"].sum() > 0
    assert set(export["source"]) == {"original", "refined"}
    assert len(np.load(GOLDEN / "pixels.npz")["pixels"]) == len(export)


def test_the_golden_decisions_do_not_hang_on_float_bits():
    """Within the tolerances no float of the record can cross a decision, so a CPU whose floats are
    within them must decide the same: no confidence lies within its tolerance of tau (the anomaly
    test and a candidate's preference both compare with tau), and each automatic pick beats every
    other candidate it was chosen from by more than twice the score tolerance."""
    from curator.config import RunConfig

    images = read_golden("images.csv")
    conf = images["confidence"].astype(float)
    tau = RunConfig().tau
    edge = (conf - tau).abs() <= FLOAT_TOL["confidence"]
    assert not edge.any(), f"confidences within tolerance of tau {tau}:\n{images[edge]}"
    cands = images[images["kind"] == "candidate"].assign(score=lambda d: d["score"].astype(float))
    for (label, proto), group in cands.groupby(["label", "prototype"]):
        consistent = group[group["predicted"] == group["label"]]
        passing = consistent[consistent["confidence"].astype(float) >= tau]
        eligible = passing if len(passing) else consistent
        picked = group[group["auto_pick"] == 1]
        assert len(picked) == 1 and picked.index[0] in eligible.index, (label, proto)
        others = eligible.drop(picked.index)["score"]
        gap = picked["score"].iloc[0] - (others.max() if len(others) else -np.inf)
        assert gap > 2 * FLOAT_TOL["score"], f"class {label}, prototype {proto}: the pick wins by only {gap:.2g}"


if __name__ == "__main__":
    import tempfile

    ap = argparse.ArgumentParser(description="Regenerate the golden record of the default run (tests/golden/).")
    ap.add_argument("--write", action="store_true", help="run the default run and overwrite the record")
    if not ap.parse_args().write:
        ap.error("nothing to do: pass --write")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        write_golden(run_default(Path(tmp)), Path(tmp))
    print(f"wrote {sorted(p.name for p in GOLDEN.iterdir())} in {GOLDEN}")
