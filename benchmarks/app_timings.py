"""Server-side timings of the app's review panel (issue #10), through the app's own handlers.

    .venv/bin/python benchmarks/app_timings.py [--threads N]

Everything runs in this process on ``Callbacks`` (no server, no browser), with runs in
benchmarks/_work/app_timings/:

1. Class view with 10 anomalies of 20 candidates each: a tiny-model run (IPC 10, K 20, tau 1.0,
   so every image is an anomaly), then ``Callbacks.show_class`` (the whole panel: gallery,
   anomaly table, one anomaly with its 20 candidate cards) and ``Callbacks.show_anomaly`` for
   each anomaly, median of repeats.
2. The default run: ``Callbacks.start_run`` with "built-in (mnist5k)", "shipped models" and
   RunConfig's defaults, then ``Callbacks.run_all`` (the "Run all classes" button) iterated with a
   progress recorder: seconds until the first yield that opens an anomaly (its anomaly id output
   is a number), the whole run, and the longest gap between two progress updates (the run's start
   and end count as updates), with the stage it fell in.
3. Panel switches on that run (K = 20): ``Callbacks.step_anomaly`` (N) around the review queue
   and ``Callbacks.show_anomaly`` on each anomaly, medians.
4. Per-class map (``Callbacks.class_embedding``: UMAP fit and the plotly figure): cold (the first
   UMAP use in this process, numba's compilation included), warm (``RUN/embedding/class-*.npz``
   deleted, every class fitted again in this process) and from the cache; the whole run's UMAP
   (numba warm by then) and from its cache.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import make_tiny_detector, make_tiny_generator, write_image_folder  # noqa: E402

from curator.config import RunConfig  # noqa: E402
from curator.embedding import CACHE_DIR  # noqa: E402
from curator.review import review_queue  # noqa: E402
from curator.store import RunStore  # noqa: E402
from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES, Callbacks  # noqa: E402
from curator.ui.resources import AppSettings  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "app_timings"
# run_class / run_all / regenerate outputs: the job's message, then the panel (Callbacks.panel)
ANOMALY_TABLE, ANOMALY_ID, CANDIDATE_TABLE = 3, 4, 9
# the panel alone (show_class, show_anomaly, step_anomaly, ...)
P_ANOMALY_ID, P_CARDS = 3, 7


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def class_view_timing() -> None:
    work = WORK / "classview"
    shutil.rmtree(work, ignore_errors=True)
    data = write_image_folder(work / "data", {"a": 30, "b": 30}, size=20)
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(work / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(work / "det")
    cb = Callbacks(AppSettings(runs_dir=work / "runs"))
    out = cb.start_run(
        DATA_SOURCES[1], str(data), None, MODEL_SOURCES[1], str(work / "gen"), str(work / "det"),
        10, 20, 1.0, 0.5, 2, 0.7, 2.0, 0, None,
    )  # fmt: skip
    state = out[1]
    out = cb.run_class(state, 0, progress=None)
    n_anom, n_cand = len(out[ANOMALY_TABLE]), len(out[CANDIDATE_TABLE])
    assert n_anom == 10 and n_cand == 20, (out[0], n_anom, n_cand)
    times = [timed(cb.show_class, state, 0)[0] for _ in range(20)]
    per_anomaly = [timed(cb.show_anomaly, state, 0, int(aid))[0] for aid in out[ANOMALY_TABLE]["anomaly"]]
    print(
        f"class view ({n_anom} anomalies x {n_cand} candidates, tiny models): show_class median "
        f"{ms(statistics.median(times))} (min {ms(min(times))}, max {ms(max(times))}); "
        f"show_anomaly median {ms(statistics.median(per_anomaly))}",
        flush=True,
    )


class ProgressRecorder:
    """Stands in for ``gr.Progress``: records when each update came and what it said."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.updates: list[tuple[float, str]] = [(0.0, "start")]

    def __call__(self, value=None, desc: str | None = None, unit: str | None = None, **_) -> None:
        self.updates.append((time.perf_counter() - self.t0, desc or ""))

    def longest_gap(self, end: float) -> tuple[float, str, str]:
        """(seconds, the update before the gap, the one after it); the end of the run counts as one."""
        points = self.updates + [(end, "end")]
        gaps = [(b[0] - a[0], a[1], b[1]) for a, b in zip(points, points[1:])]
        return max(gaps)


def default_run_timing(cb: Callbacks) -> dict:
    """Start the default run and run every class as the "Run all classes" button does."""
    d = RunConfig()
    t_start, out = timed(
        cb.start_run,
        DATA_SOURCES[0], None, None, MODEL_SOURCES[0], None, None,
        d.ipc, d.k, d.tau, d.lam, d.steps, d.strength, d.guidance, d.seed, None, d.uniqueness_centre,
    )  # fmt: skip
    assert out[0].startswith("✔"), out[0]
    state = out[1]
    print(f"start_run (mnist5k, shipped models, defaults; models loaded): {t_start:.1f} s · {out[0]}", flush=True)
    rec = ProgressRecorder()
    first, last_msg, yields = None, "", 0
    for out in cb.run_all(state, 0, None, progress=rec):
        yields += 1
        last_msg = out[0]
        if first is None and isinstance(out[ANOMALY_ID], int):
            first = (time.perf_counter() - rec.t0, out[ANOMALY_ID], out[0])
    total = time.perf_counter() - rec.t0
    gap, before, after = rec.longest_gap(total)
    timeline = WORK / "run_all_progress.txt"
    timeline.write_text("".join(f"{t:8.2f}  {desc}\n" for t, desc in rec.updates + [(total, "end")]))
    assert first is not None, f"no anomaly opened: {last_msg}"
    print(
        f"run_all: first reviewable anomaly #{first[1]} after {first[0]:.1f} s ({first[2]}); all classes in "
        f"{total:.1f} s ({yields} yields; {last_msg}); {len(rec.updates) - 1} progress updates, longest gap "
        f"{gap:.2f} s, between “{before}” and “{after}” (timeline: {timeline.relative_to(REPO)})",
        flush=True,
    )
    return dict(state=state, first_s=first[0], total_s=total, gap_s=gap, gap_between=(before, after))


def queue(state: dict) -> list:
    store = RunStore.open(state["run"])
    try:
        return review_queue(store)
    finally:
        store.close()


def switch_timing(cb: Callbacks, state: dict) -> tuple[float, float, int, int]:
    ids = [q.anomaly_id for q in queue(state)]
    assert ids, "the default run has no anomaly"
    aid = ids[0]
    steps = []
    for _ in range(max(30, 3 * len(ids))):
        t, out = timed(cb.step_anomaly, state, None, aid, 1)
        aid = out[P_ANOMALY_ID]
        assert isinstance(aid, int), out[0]
        steps.append(t)
    shows = [timed(cb.show_anomaly, state, None, a)[0] for a in ids * 3]
    cards = cb.show_anomaly(state, None, ids[0])[P_CARDS].count("data-cid=")
    print(
        f"panel switch on the default run ({len(ids)} anomalies, {cards} candidate cards each): step_anomaly (N) "
        f"median {ms(statistics.median(steps))} (max {ms(max(steps))}); show_anomaly median "
        f"{ms(statistics.median(shows))} (max {ms(max(shows))})",
        flush=True,
    )
    return statistics.median(steps), statistics.median(shows), len(ids), cards


def embedding_timing(cb: Callbacks, state: dict, first_label: int) -> dict:
    run = Path(state["run"])
    shutil.rmtree(run / CACHE_DIR, ignore_errors=True)
    assert "umap" not in sys.modules, "UMAP was used before: the cold figure would be warm"
    cold, out = timed(cb.class_embedding, state, first_label)
    assert out[0].startswith("✔"), out[0]
    print(f"class map, cold (first UMAP use in the process), class {first_label}: {cold:.1f} s · {out[0]}", flush=True)
    store = RunStore.open(run)
    labels = [c.label for c in store.classes() if c.status == "done"]
    store.close()
    warm, cached, points = [], [], []
    for lab in labels:
        (run / CACHE_DIR / f"class-{lab}.npz").unlink(missing_ok=True)
        t, out = timed(cb.class_embedding, state, lab)
        assert "fitted now" in out[0], out[0]
        warm.append(t)
        points.append(int(out[2].split()[0]))
        c = [timed(cb.class_embedding, state, lab) for _ in range(3)]
        assert all("from cache" in o[0] for _, o in c), c[0][1][0]
        cached.append(min(t for t, _ in c))
    print(
        f"class map, warm (cache deleted, fitted again), {len(labels)} classes of {min(points)}-{max(points)} points: "
        f"median {statistics.median(warm):.2f} s, max {max(warm):.2f} s; from cache median "
        f"{ms(statistics.median(cached))}, max {ms(max(cached))}",
        flush=True,
    )
    t_run, out = timed(cb.embedding, state, "class")
    t_run_cached, out2 = timed(cb.embedding, state, "class")
    print(f"whole-run map (numba warm): {t_run:.1f} s · {out[0]} · {out[2]}; again: {t_run_cached:.2f} s · {out2[0]}")
    return dict(cold=cold, warm_median=statistics.median(warm), warm_max=max(warm), cached=max(cached))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    class_view_timing()
    shutil.rmtree(WORK / "runs", ignore_errors=True)
    cb = Callbacks(AppSettings(runs_dir=WORK / "runs"))
    run = default_run_timing(cb)
    switch_timing(cb, run["state"])
    first_label = queue(run["state"])[0].label
    emb = embedding_timing(cb, run["state"], first_label)
    summary = {k: v for k, v in run.items() if k != "state"} | emb
    print("summary:", {k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()})


if __name__ == "__main__":
    main()
