"""Quality benchmark: does detector-guided refinement make a better distilled set?

    taskset -c 1 .venv/bin/python -m benchmarks.quality            # full: hours on one CPU core
    .venv/bin/python -m benchmarks.quality --jobs 2 --threads 1      # both cores, one student each
    .venv/bin/python -m benchmarks.quality --quick                   # seconds: a plumbing check

For each IPC (default 1, 10, 50) on ``--data`` (default mnist5k) it builds these sets:

* ``random_real``: IPC random real training images per class (a new draw per seed);
* ``nearest_real``: the real image nearest each k-means prototype (``nearest_to_prototypes``,
  the same prototypes the run used);
* ``unrefined``: the initial synthesis, one SDEdit image per prototype, anomalies included;
* ``refined``: the run's curated set with automatic picks (``review.final_set``);
* ``refined_lam0`` / ``refined_lam_high``: ablations, selection re-run with lambda = 0
  (confidence only) and lambda = ``--lam-high`` on the same stored candidates (candidates do not
  depend on lambda, so no generation is needed; ``reselect``).

The pipeline runs once per IPC (seed 0, the RunConfig defaults otherwise) into
``benchmarks/_work/runs/``. Each set trains one student per seed (``curator.evaluation``,
ConvNet-3, default protocol) and is tested on the real test split. Each set's label consistency
is the share of its images that the shipped detector, and separately an independently trained
classifier (``benchmarks.classifier``, cached under ``_work/``), assign to the intended label.

Resumable: a row is appended to ``quality.csv`` as each student finishes, and rows already there
(same generator fingerprint, IPC, method, seed) are skipped; the pipeline runs resume too. After
each IPC, ``RESULTS.md`` is rewritten from the CSV (tables, targets met or missed, machine, date,
command). A changed generator gets a new fingerprint, so its rows and runs start afresh.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from curator import evalsets, stages
from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR, RunConfig
from curator.data import Dataset, ImageSet, load_dataset
from curator.engine import LocalEngine
from curator.evaluation import default_epochs, top1_accuracy, train_student
from curator.models.detector import Detector
from curator.models.loading import load_generator
from curator.prototypes import nearest_to_prototypes
from curator.review import summarize
from curator.store import RunStore
from curator.training import pick_device

HERE = Path(__file__).resolve().parent
METHODS = ("random_real", "nearest_real", "unrefined", "refined", "refined_lam0", "refined_lam_high")
COLUMNS = [
    "generator", "ipc", "method", "seed", "top1", "n_images", "detector_consistency",
    "independent_consistency", "epochs", "student_seconds", "device", "finished_at",
]  # fmt: skip


@dataclass
class Labelled:
    """One set to evaluate: images [N, C, H, W] in [0, 1] and class indices."""

    images: torch.Tensor
    labels: np.ndarray


# --- the sets ----------------------------------------------------------------------------------
def random_real(data: Dataset, ipc: int, seed: int) -> Labelled:
    """IPC random real training images per class (``curator.evalsets.random_real``)."""
    s = evalsets.random_real(data, ipc, seed)
    return Labelled(s.images, s.labels)


def nearest_real(engine: LocalEngine) -> Labelled:
    """The real training image nearest each of the run's prototypes, in the generator's init space."""
    images, labels = [], []
    for c in engine.labels():
        real = engine.data.train.of_class(c)
        centres = torch.stack([engine.store.prototype_latent(p.id) for p in engine.store.prototypes(c)])
        idx = nearest_to_prototypes(engine.generator.encode(real), centres)
        images.append(real[idx])
        labels += [c] * len(idx)
    return Labelled(torch.cat(images), np.asarray(labels, dtype=np.int64))


def reselect(engine: LocalEngine, label: int, lam: float, centre: str | None = None) -> list:
    """Rows of the class's set had automatic selection used ``lam``: passed originals plus the greedy
    pick of each anomaly (unresolved left out), from the stored candidates. Person's decisions are
    ignored: this is the automatic pipeline's set. ``centre`` ("class" or "global") overrides the
    run's ``uniqueness_centre``."""
    passed, anomalies, cands, sels = reselect_detail(engine, label, lam, centre)
    return passed + [c[s.pick] for c, s in zip(cands, sels) if s.pick is not None]


@contextmanager
def centred_on(engine: LocalEngine, centre: str | None):
    """Within the block, ``engine.feature_center`` is the centre of ``centre`` ("class" or "global"; None: the
    run's own setting). Only the in-memory config changes; the run store is untouched."""
    saved = engine.config
    if centre is not None:
        engine.config = replace(saved, uniqueness_centre=centre)
    try:
        yield engine
    finally:
        engine.config = saved


def reselect_detail(engine: LocalEngine, label: int, lam: float, centre: str | None = None) -> tuple:
    """``reselect``'s parts: (passed originals, anomalies with candidates, their candidates, the
    ``Selection`` of each anomaly: pick and every candidate's scores)."""
    store = engine.store
    passed = [r for r in store.synthetic(label) if not r.is_anomaly]
    anomalies = [a for a in store.anomalies(label) if store.candidates(a.id)]
    cands = [store.candidates(a.id) for a in anomalies]
    with centred_on(engine, centre):  # the product's own selection and centring (stages.select_class)
        sels = stages.select_class(
            label, stages.stacked_features(passed), [stages.Candidates.of(c) for c in cands],
            engine.feature_center(label), lam, engine.config.tau,
        )  # fmt: skip
    return passed, anomalies, cands, sels


def _labelled(s: evalsets.TrainSet) -> Labelled:
    """A set built by ``curator.evalsets`` (the one place sets are built from a run)."""
    return Labelled(s.images, s.labels)


def _rows_to_set(store: RunStore, rows_by_label: dict[int, list]) -> Labelled:
    images = [store.load_image(r) for rows in rows_by_label.values() for r in rows]
    labels = [c for c, rows in rows_by_label.items() for _ in rows]
    if not images:
        return Labelled(torch.zeros(0, 1, 1, 1), np.zeros(0, dtype=np.int64))
    return Labelled(torch.stack(images), np.asarray(labels, dtype=np.int64))


def synthetic_sets(engine: LocalEngine, lam_high: float) -> dict[str, Labelled]:
    store, labels = engine.store, engine.labels()
    return {
        "unrefined": _labelled(evalsets.unrefined_set(store)),
        "refined": _labelled(evalsets.curated_set(store)),
        "refined_lam0": _rows_to_set(store, {c: reselect(engine, c, 0.0) for c in labels}),
        "refined_lam_high": _rows_to_set(store, {c: reselect(engine, c, lam_high) for c in labels}),
    }


# --- the run per IPC ---------------------------------------------------------------------------
def fingerprint(generator: str) -> str:
    """First 10 hex digits of the SHA-1 of the generator's weight files (``*.safetensors``, ``*.bin``
    under its folder), so that rows and runs are per model; of the name for a hub id or no weights."""
    h = hashlib.sha1(str(generator).encode() if not Path(generator).is_dir() else b"")
    root = Path(generator)
    files = sorted(f for ext in ("*.safetensors", "*.bin") for f in root.rglob(ext)) if root.is_dir() else []
    for f in files:
        h.update(f.read_bytes())
    if root.is_dir() and not files:
        h.update(str(root.resolve()).encode())
    return h.hexdigest()[:10]


def run_path(args: argparse.Namespace, ipc: int, fp: str, variant: str = "") -> Path:
    """``WORK/runs/<data>-ipc<IPC>-<fingerprint>[-variant][-quick]``: one run per dataset, IPC, generator
    and variant (see ``benchmarks.refinement_gap``)."""
    name = f"{Path(args.data).name}-ipc{ipc}-{fp}{'-' + variant if variant else ''}{'-quick' if args.quick else ''}"
    return Path(args.work) / "runs" / name


def ensure_run(
    args: argparse.Namespace, ipc: int, fp: str, data: Dataset, generator, detector, variant: str = "",
    overrides: dict | None = None,
) -> LocalEngine:  # fmt: skip
    """Create, resume or reopen the run of this IPC (``run_path``) and finish it. ``overrides``
    changes RunConfig defaults for a named ``variant``."""
    path = run_path(args, ipc, fp, variant)
    root, run_id = path.parent, path.name
    kw = dict(data=data, generator=generator, detector=detector)
    if (root / run_id / "run.sqlite").is_file():
        engine = LocalEngine(RunStore.open(root / run_id), **kw)
    else:
        cfg = RunConfig(data=args.data, generator=args.generator, detector=args.detector, ipc=ipc, device=args.device,
                        **(overrides or {}))  # fmt: skip
        if args.quick:
            cfg.steps, cfg.k = 4, 4
        engine = LocalEngine.create(cfg, str(root), run_id, **kw)
    engine.run()
    return engine


def consistency(images: torch.Tensor, labels: np.ndarray, detector: Detector, judge) -> tuple[float, float]:
    """Shares in [0, 1] of images the detector and the independent judge assign to their label."""
    from benchmarks.classifier import predict

    if len(images) == 0:
        return float("nan"), float("nan")
    det = float((detector.inspect(images).predicted == labels).mean())
    ind = float((predict(judge, images) == labels).mean())
    return det, ind


def _student_job(images, labels, num_classes, test, seed, epochs, device, threads) -> tuple[float, float]:
    """One student (run in this process or a worker): (top-1 in [0, 1], seconds)."""
    torch.set_num_threads(threads)
    t0 = time.time()
    model = train_student(images, labels, num_classes, seed=seed, epochs=epochs, device=device)
    return top1_accuracy(model, test), time.time() - t0


# --- CSV ---------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict, columns: list[str] = COLUMNS) -> None:
    """Append one row (header first if the file is new) and flush it to disk."""
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _key(row: dict) -> tuple[str, int, str, int]:
    return row["generator"], int(row["ipc"]), row["method"], int(row["seed"])


# --- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--seeds", type=int, default=3, help="students per set, seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the evaluation protocol)")
    p.add_argument("--lam-high", dest="lam_high", type=float, default=2.0, help="lambda of the uniqueness ablation")
    add_common_args(p, "quality.csv and RESULTS.md")
    return finish_args(p.parse_args(argv))


def add_common_args(p: argparse.ArgumentParser, outputs: str) -> None:
    """Models, device, parallelism, folders and --quick: the options the quality benchmarks share."""
    p.add_argument("--generator", default=DEFAULT_GENERATOR)
    p.add_argument("--detector", default=DEFAULT_DETECTOR)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (pipeline and students)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="students trained side by side, one process each")
    p.add_argument("--work", default=str(HERE / "_work"), help="runs and the cached classifier")
    p.add_argument("--out", default=None, help=f"folder for {outputs} (default benchmarks/)")
    p.add_argument("--quick", action="store_true", help="IPC 1, 1 seed, 2 epochs, 4 steps, K 4, 200 test images")


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """--quick's settings, and the output folder's default."""
    if args.quick:
        args.ipc, args.seeds, args.epochs = [1], 1, args.epochs or 2
        args.out = args.out or str(Path(args.work) / "quick")
    args.out = args.out or str(HERE)
    return args


@dataclass
class Bench:
    """What a quality benchmark loads once: models, data, the independent judge."""

    fp: str
    generator: object
    detector: Detector
    data: Dataset
    judge: torch.nn.Module
    judge_meta: dict


def load_bench(args: argparse.Namespace) -> Bench:
    """Threads, output folder, generator fingerprint, models and data (--quick: 20 test images per
    class), and the independent classifier (trained once, cached under WORK)."""
    from benchmarks.classifier import ACCURACY_BAR, load_or_train

    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    generator = load_generator(args.generator, device)
    detector = Detector.load(args.detector, device)
    data = load_dataset(args.data, size=generator.resolution, channels=generator.channels)
    if args.quick:  # 20 test images per class keep the check to seconds
        keep = np.concatenate([np.flatnonzero(data.test.labels == c)[:20] for c in range(data.num_classes)])
        data.test = ImageSet(data.test.images[keep], data.test.labels[keep])
    judge_kw = dict(epochs=1, limit=500) if args.quick else dict(epochs=20)
    tag = "quick" if args.quick else "full"
    judge_path = Path(args.work) / f"independent-{Path(args.data).name}-{tag}.pt"
    judge, judge_meta = load_or_train(data, judge_path, **judge_kw)
    print(f"independent classifier: {100 * judge_meta['test_accuracy']:.2f} % on the test split", flush=True)
    if not args.quick and judge_meta["test_accuracy"] < ACCURACY_BAR:
        print(f"warning: the independent classifier is below {100 * ACCURACY_BAR} %", file=sys.stderr)
    return Bench(fingerprint(args.generator), generator, detector, data, judge, judge_meta)


def student_pool(jobs: int) -> ProcessPoolExecutor | None:
    """Worker processes for ``jobs`` students side by side (spawned: torch and fork do not mix), or
    None to train them in this process."""
    return ProcessPoolExecutor(jobs, mp_context=torch.multiprocessing.get_context("spawn")) if jobs > 1 else None


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import write_results

    args = parse_args(argv)
    out = Path(args.out)
    csv_path = out / "quality.csv"
    b = load_bench(args)
    fp, generator, detector, data, judge, judge_meta = b.fp, b.generator, b.detector, b.data, b.judge, b.judge_meta
    command = " ".join(["python -m benchmarks.quality", *(argv if argv is not None else sys.argv[1:])])
    pool = student_pool(args.jobs)
    try:
        for ipc in args.ipc:
            done = {_key(r) for r in read_rows(csv_path)}
            todo = [(m, s) for m in METHODS for s in range(args.seeds) if (fp, ipc, m, s) not in done]
            if todo:
                run_ipc(args, ipc, fp, todo, data, generator, detector, judge, csv_path, pool)
            write_results(args, csv_path, out / "RESULTS.md", fp, judge_meta, detector, command)
    finally:
        if pool:
            pool.shutdown()
    print(f"results: {out / 'RESULTS.md'} and {csv_path}")
    return 0


def run_ipc(args, ipc, fp, todo, data, generator, detector, judge, csv_path, pool) -> None:
    """Finish the IPC's run, build its sets, and train the ``todo`` (method, seed) students, each
    row appended to the CSV as it finishes (in this process, or ``pool``'s workers)."""
    t0 = time.time()
    engine = ensure_run(args, ipc, fp, data, generator, detector)
    print(f"IPC {ipc}: run {engine.store.run_id} ready ({time.time() - t0:.0f} s)", flush=True)
    fixed = {"nearest_real": nearest_real(engine), **synthetic_sets(engine, args.lam_high)}
    sets = {(m, s): random_real(data, ipc, s) if m == "random_real" else fixed[m] for m, s in todo}

    def set_key(m: str, s: int) -> tuple[str, int]:  # only random_real differs between seeds
        return (m, s if m == "random_real" else 0)

    cons = {}
    for (m, s), st in sets.items():
        if set_key(m, s) not in cons:
            cons[set_key(m, s)] = consistency(st.images, st.labels, detector, judge)
    device = str(pick_device(args.device))

    def record(m: str, s: int, acc: float, secs: float, epochs: int, n: int) -> None:
        det, ind = cons[set_key(m, s)]
        row = dict(generator=fp, ipc=ipc, method=m, seed=s, top1=f"{acc:.4f}", n_images=n,
                   detector_consistency=f"{det:.4f}", independent_consistency=f"{ind:.4f}", epochs=epochs,
                   student_seconds=f"{secs:.1f}", device=device,
                   finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        append_row(csv_path, row)
        print(f"IPC {ipc} {m:17s} seed {s}: top-1 {100 * acc:.2f} % ({n} images, {secs:.0f} s)", flush=True)

    jobs = []
    for (m, s), st in sets.items():
        epochs = args.epochs or default_epochs(len(st.images))
        job = (st.images, st.labels, data.num_classes, data.test, s, epochs, device, args.threads)
        if len(st.images) == 0:
            record(m, s, float("nan"), 0.0, epochs, 0)
        elif pool is None:
            record(m, s, *_student_job(*job), epochs, len(st.images))
        else:
            jobs.append((pool.submit(_student_job, *job), m, s, epochs, len(st.images)))
    futures = {f: rest for f, *rest in jobs}
    for f in as_completed(futures):
        m, s, epochs, n = futures[f]
        record(m, s, *f.result(), epochs, n)
    engine.store.close()


def pipeline_stats(args: argparse.Namespace, ipc: int, fp: str) -> dict | None:
    """Anomalies, resolutions and wall time of the IPC's run, or None when it does not exist."""
    path = run_path(args, ipc, fp)
    if not (path / "run.sqlite").is_file():
        return None
    store = RunStore.open(path)
    try:
        s = summarize(store)
        cfg = store.config
    finally:
        store.close()
    return {
        "images": sum(x.images for x in s),
        "anomalies": sum(x.anomalies for x in s),
        "resolved": sum(x.auto for x in s),
        "unresolved": sum(x.unresolved for x in s),
        "wall_seconds": sum(x.wall_seconds or 0 for x in s),
        "config": f"tau {cfg.tau}, lambda {cfg.lam}, K {cfg.k}, strength {cfg.strength}, "
        f"guidance {cfg.guidance}, steps {cfg.steps}",
    }


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPU(s), {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
