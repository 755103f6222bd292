"""Timings of the per-class embedding view (``curator.embedding.class_embedding``).

    python benchmarks/class_embedding_timing.py [RUN_FOLDER]

RUN_FOLDER defaults to a run of mnist5k with the default parameters (every class, IPC 10, K 20,
the shipped models) in benchmarks/_work/class_embedding/runs/mnist5k-default, made first when it
is not there (about 15 s on 2 CPU cores). Then, in this process: the first class view (the first
UMAP use in the process: umap's import and numba's compilation included), every class fitted
again with its cache deleted (warm), and every class read from its cache (best of 3).

Without RUN_FOLDER a second, larger run follows (``mnist5k-large``: classes 0 and 1, tau 1.0 so
all 10 images of a class are anomalies with 20 candidates each, and 500 real images per class
kept, so the class view samples ``MAX_CLASS_REAL`` of them): the largest class view the default
IPC and K produce, about 520 points.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curator.config import RunConfig  # noqa: E402
from curator.embedding import CACHE_DIR, class_embedding  # noqa: E402
from curator.engine import LocalEngine  # noqa: E402
from curator.models.detector import Detector  # noqa: E402
from curator.store import RunStore  # noqa: E402

DEFAULT_RUN = REPO / "benchmarks" / "_work" / "class_embedding" / "runs" / "mnist5k-default"


LARGE_RUN = DEFAULT_RUN.with_name("mnist5k-large")
LARGE = dict(classes=["0", "1"], tau=1.0, real_sample=500)


def default_run(path: Path = DEFAULT_RUN, **overrides) -> Path:
    """The mnist5k run with the default parameters (but ``overrides``) at ``path``, made when needed."""
    if (path / "run.sqlite").is_file():
        store = RunStore.open(path)
        names = store.config.classes or store.class_names
        done = all(c.status == "done" for c in store.classes() if c.name in names or str(c.label) in names)
        store.close()
        if done:
            return path
        shutil.rmtree(path)
    engine = LocalEngine.create(RunConfig(**overrides), str(path.parent), run_id=path.name)
    engine.run()
    engine.store.close()
    return path


def class_timings(run: Path) -> list[dict]:
    """Per class: points, method, warm fit and cached read (seconds); the first class also cold when
    this is the first UMAP use in the process."""
    cold_start = "umap" not in sys.modules
    store = RunStore.open(run)
    det = Detector.load(store.config.detector)
    labels = [c.label for c in store.classes() if c.status == "done"]
    for label in labels:
        (run / CACHE_DIR / f"class-{label}.npz").unlink(missing_ok=True)
    rows = []
    cold = class_embedding(store, det, labels[0])  # the first UMAP use in this process
    for label in labels:
        (run / CACHE_DIR / f"class-{label}.npz").unlink(missing_ok=True)
        warm = class_embedding(store, det, label)
        cached = [class_embedding(store, det, label) for _ in range(3)]
        assert warm.fitted and not any(c.fitted for c in cached)
        kinds = warm.frame["kind"].value_counts()
        rows.append(
            dict(
                label=label,
                points=len(warm.frame),
                real=int(kinds.get("real", 0)),
                candidates=int(kinds.get("candidate", 0) + kinds.get("pick", 0)),
                method=warm.method,
                cold=cold.seconds if label == labels[0] and cold_start else None,
                warm=warm.seconds,
                cached=min(c.seconds for c in cached),
            )
        )
    store.close()
    return rows


def report(run: Path, rows: list[dict], seconds: float) -> None:
    print(f"class views of {run} ({seconds:.1f} s in all)")
    print("class  points  real  candidates  method  cold_s  warm_s  cached_s")
    for r in rows:
        cold = f"{r['cold']:6.2f}" if r["cold"] is not None else "     –"
        print(
            f"{r['label']:5d}  {r['points']:6d}  {r['real']:4d}  {r['candidates']:10d}  {r['method']:>6}  "
            f"{cold}  {r['warm']:6.2f}  {r['cached']:8.3f}"
        )
    warm = [r["warm"] for r in rows]
    print(f"warm fit: max {max(warm):.2f} s, mean {sum(warm) / len(warm):.2f} s (requirement: under 2 s)")


def main() -> None:
    torch.set_num_threads(2)
    runs = [Path(sys.argv[1])] if len(sys.argv) > 1 else [default_run(), default_run(LARGE_RUN, **LARGE)]
    for run in runs:
        t0 = time.perf_counter()
        rows = class_timings(run)
        report(run, rows, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
