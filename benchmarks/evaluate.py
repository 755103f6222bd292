"""Evaluation protocols benchmark: sets x protocols x students x seeds, on the runs of ``benchmarks.quality``.

    .venv/bin/python -m benchmarks.evaluate                 # full: many hours on 2 CPU cores (see EVALUATE.md)
    .venv/bin/python -m benchmarks.evaluate --quick         # a plumbing check: IPC 1, 1 seed, 2 epochs

For each generator (default: the shipped one and the early-generator testbed) and IPC (1, 10) on
mnist5k, the default run (``benchmarks.quality.ensure_run``: the same run folders as the quality
benchmark) is evaluated by ``curator.evaluation.evaluate_run`` (the app's and the CLI's code) for
every protocol (hard, soft at ``--temperature``) and student (ConvNet-3 and a timm ResNet), over
the sets ``curated`` (the refined set: no person reviewed these runs, so it is the automatic set),
``unrefined`` and ``random_real``. Results are stored in each run store as each student finishes,
so an interrupted benchmark resumes where it stopped; ``EVALUATE.md`` is written from the store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import HERE, ensure_run, fingerprint, machine
from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR
from curator.data import ImageSet, load_dataset
from curator.evalsets import SET_TITLES, run_dataset
from curator.evaluation import StudentProgress, evaluate_run
from curator.models.detector import Detector
from curator.models.loading import load_generator
from curator.students import DEFAULT_TEMPERATURE
from curator.training import pick_device

EARLY_GENERATOR = str(Path(DEFAULT_GENERATOR).parent / "generator-early")
SETS = ("curated", "unrefined", "random_real")
TITLES = {**SET_TITLES, "curated": "refined (curated)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--generators", nargs="+", default=[DEFAULT_GENERATOR, EARLY_GENERATOR])
    p.add_argument("--detector", default=DEFAULT_DETECTOR)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--protocols", nargs="+", default=["hard", "soft"])
    p.add_argument("--students", nargs="+", default=["convnet", "resnet10t"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's (about 300 SGD steps)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=str(HERE / "_work"))
    p.add_argument("--out", default=None, help="folder for EVALUATE.md (default benchmarks/)")
    p.add_argument("--quick", action="store_true", help="shipped generator, IPC 1, 1 seed, 2 epochs, 200 test images")
    args = p.parse_args(argv)
    if args.quick:
        args.generators, args.ipc, args.seeds, args.epochs = args.generators[:1], [1], 1, args.epochs or 2
        args.out = args.out or str(Path(args.work) / "quick")
    args.out = args.out or str(HERE)
    return args


def small_test(data, per_class: int = 20):
    """The dataset with ``per_class`` test images per class (quick mode)."""
    keep = np.concatenate([np.flatnonzero(data.test.labels == c)[:per_class] for c in range(data.num_classes)])
    data.test = ImageSet(data.test.load(keep), data.test.labels[keep])
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    detector = Detector.load(args.detector, device)
    rows, runs = [], []
    t_all = time.time()
    for gen_path in args.generators:
        fp, generator = fingerprint(gen_path), load_generator(gen_path, device)
        for ipc in args.ipc:
            qargs = argparse.Namespace(data=args.data, generator=gen_path, detector=args.detector, device=args.device,
                                       quick=args.quick, work=args.work)  # fmt: skip
            t0 = time.time()
            full = load_dataset(args.data, size=generator.resolution, channels=generator.channels)
            pipe = ensure_run(qargs, ipc, fp, full, generator, detector)
            store = pipe.store
            runs.append(f"{Path(gen_path).name} IPC {ipc}: run `{store.path}` ready in {time.time() - t0:.0f} s")
            data = small_test(run_dataset(store)) if args.quick else run_dataset(store)
            for protocol in args.protocols:
                for student in args.students:
                    def show(p: StudentProgress, tag=f"{Path(gen_path).name} IPC {ipc} {protocol} {student}") -> None:
                        if p.epoch == p.epochs:
                            print(f"{tag}: {p.set_name} seed {p.seed} done ({p.done + 1}/{p.total})", flush=True)

                    recs = evaluate_run(
                        store, sets=args.sets, protocol=protocol, student=student, seeds=args.seeds,
                        temperature=args.temperature, epochs=args.epochs, device=args.device, data=data,
                        detector=detector, progress=show,
                    )  # fmt: skip
                    rows += [(Path(gen_path).name, ipc, r) for r in recs]
            pipe.close()
    write_report(args, rows, runs, out / "EVALUATE.md", time.time() - t_all)
    print(f"results: {out / 'EVALUATE.md'}")
    return 0


def _cell(r) -> str:
    n = len(r.students)
    return f"{100 * r.mean:.1f} ± {100 * r.std:.1f} ({n})" if n else "pending"


def _gap(rows, gen, ipc, proto, student, a, b) -> float:
    get = {(g, i, r.protocol, r.student, r.set_name): r for g, i, r in rows}
    ra, rb = get.get((gen, ipc, proto, student, a)), get.get((gen, ipc, proto, student, b))
    return 100 * (ra.mean - rb.mean) if ra and rb and ra.students and rb.students else float("nan")


def write_report(args, rows, runs, path: Path, wall: float) -> None:
    """EVALUATE.md: top-1 per (generator, IPC, set) x (protocol, student), seconds per student, and the gaps."""
    cols = [(p, s) for p in args.protocols for s in args.students]
    head = " | ".join(f"{p}{f' T={args.temperature:g}' if p == 'soft' else ''}, {s}" for p, s in cols)
    lines = [f"| generator | IPC | set | {head} |", "|---|---|---|" + "---|" * len(cols)]
    get = {(g, i, r.set_name, r.protocol, r.student): r for g, i, r in rows}
    keys = sorted({(g, i, r.set_name) for g, i, r in rows}, key=lambda k: (k[0], k[1], SETS.index(k[2])))
    for g, i, s in keys:
        cells = [(_cell(get[(g, i, s, p, st)]) if (g, i, s, p, st) in get else "n/a") for p, st in cols]
        lines.append(f"| {g} | {i} | {TITLES[s]} | {' | '.join(cells)} |")
    secs = ["| generator | IPC | " + " | ".join(f"{p}, {s}" for p, s in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g, i in sorted({(g, i) for g, i, _ in rows}):
        cells = []
        for p, st in cols:
            t = [x.seconds / len(x.students) for (gg, ii, x) in rows
                 if (gg, ii, x.protocol, x.student) == (g, i, p, st) and x.students]  # fmt: skip
            cells.append(f"{np.mean(t):.1f}" if t else "n/a")
        secs.append(f"| {g} | {i} | {' | '.join(cells)} |")
    gaps = ["| generator | IPC | protocol, student | refined − unrefined | refined − random real |",
            "|---|---|---|---|---|"]  # fmt: skip
    for g, i in sorted({(g, i) for g, i, _ in rows}):
        for p, st in cols:
            a = _gap(rows, g, i, p, st, "curated", "unrefined")
            b = _gap(rows, g, i, p, st, "curated", "random_real")
            gaps.append(f"| {g} | {i} | {p}, {st} | {a:+.1f} | {b:+.1f} |")
    command = " ".join(["python -m benchmarks.evaluate", *(sys.argv[1:])])
    text = f"""# Evaluation protocols: hard and soft labels, ConvNet-3 and a timm student

Generated by `benchmarks/evaluate.py` on {time.strftime("%Y-%m-%d %H:%M")} in {wall / 60:.1f} minutes.

- Command: `{command}`
- Machine: {machine()}; torch threads {args.threads}
- Data: `{args.data}`; detector (and soft-label teacher) `{args.detector}`; students trained by
  `curator.evaluation.evaluate_run`, stored in each run store (`curator evaluate RUN --show` prints them).
- Soft labels: KL at temperature {args.temperature:g} to the detector's softmax on the student's
  augmented views (`curator.students`); hard labels: cross-entropy. Same optimiser, schedule, epochs.
- "refined" is each run's curated set; no person reviewed these runs, so it equals the automatic set.
{"- **Quick mode**: a plumbing check, the numbers mean nothing." if args.quick else ""}

## Top-1 on the real test split (%), mean ± std (students)

{chr(10).join(lines)}

## Seconds per student (train + test)

{chr(10).join(secs)}

## Gaps (points of top-1)

{chr(10).join(gaps)}

## Runs

{chr(10).join("- " + r for r in runs)}
"""
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
