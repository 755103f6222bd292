"""Server-side timings of the app: class view build and UMAP.

    taskset -c 1 .venv/bin/python benchmarks/app_timings.py [RUN_FOLDER]

1. Class view with 10 anomalies of 20 candidates each: a tiny-model run (IPC 10, K 20, tau 1.0,
   so every image is an anomaly) in benchmarks/_work/, then ``Callbacks.show_class`` (the full
   output of the class view: gallery, anomaly table, one anomaly with its 20 candidates) and
   ``Callbacks.show_anomaly`` for each anomaly, median of repeats.
2. UMAP of RUN_FOLDER (default: the newest run under runs/ made with the default parameters):
   first fit in this process (numba compilation included), a second fit in the same process
   (cache deleted), then from the cache.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import make_tiny_detector, make_tiny_generator, write_image_folder  # noqa: E402

from curator.embedding import CACHE_DIR, run_embedding  # noqa: E402
from curator.store import RunStore  # noqa: E402
from curator.ui import resources  # noqa: E402
from curator.ui.callbacks import Callbacks  # noqa: E402
from curator.ui.resources import AppSettings  # noqa: E402

torch.set_num_threads(1)


def class_view_timing() -> None:
    work = REPO / "benchmarks" / "_work" / "classview"
    shutil.rmtree(work, ignore_errors=True)
    data = write_image_folder(work / "data", {"a": 30, "b": 30}, size=20)
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(work / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(work / "det")
    cb = Callbacks(AppSettings(runs_dir=work / "runs"))
    out = cb.start_run(
        "folder on the server", str(data), None, "model folders", str(work / "gen"), str(work / "det"),
        10, 20, 1.0, 0.5, 2, 0.7, 2.0, 0, None,
    )  # fmt: skip
    state = out[1]
    panel = cb.run_class(state, 0, progress=None)
    n_anom, n_cand = len(panel[2]), len(panel[8])
    assert n_anom == 10 and n_cand == 20, (n_anom, n_cand)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        cb.show_class(state, 0)
        times.append(time.perf_counter() - t0)
    per_anomaly = []
    for aid in panel[2]["anomaly"]:
        t0 = time.perf_counter()
        cb.show_anomaly(state, 0, int(aid))
        per_anomaly.append(time.perf_counter() - t0)
    print(
        f"class view ({n_anom} anomalies x {n_cand} candidates): show_class median "
        f"{1000 * statistics.median(times):.1f} ms (min {1000 * min(times):.1f}, max {1000 * max(times):.1f}); "
        f"show_anomaly median {1000 * statistics.median(per_anomaly):.1f} ms"
    )


def umap_timing(run: Path) -> None:
    store = RunStore.open(run)
    det = resources.detector(store.config.detector, resources.device_for(store.config))
    shutil.rmtree(run / CACHE_DIR, ignore_errors=True)
    first = run_embedding(store, det)
    shutil.rmtree(run / CACHE_DIR, ignore_errors=True)
    second = run_embedding(store, det)
    cached = [run_embedding(store, det) for _ in range(3)]
    print(
        f"UMAP of {run.name} ({len(first.frame)} points: {first.frame['kind'].value_counts().to_dict()}): "
        f"first fit in a fresh process {first.seconds:.1f} s, fit again in the same process {second.seconds:.1f} s, "
        f"from cache {min(c.seconds for c in cached):.2f} s"
    )


if __name__ == "__main__":
    class_view_timing()
    if len(sys.argv) > 1:
        run = Path(sys.argv[1])
    else:
        runs = sorted((REPO / "runs").glob("*/run.sqlite"), key=lambda p: p.stat().st_mtime)
        run = runs[-1].parent if runs else None
    if run is not None:
        umap_timing(run)
