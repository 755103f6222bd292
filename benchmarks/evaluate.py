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
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import HERE, ensure_run, fingerprint, machine, run_path
from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR
from curator.data import ImageSet, load_dataset
from curator.evalsets import SET_TITLES, run_dataset
from curator.evaluation import StudentProgress, evaluate_run
from curator.models.detector import Detector
from curator.models.loading import load_generator
from curator.store import RunStore
from curator.students import DEFAULT_TEMPERATURE
from curator.training import pick_device

APP_IPC = 10  # the default run's IPC (RunConfig), the one the app's default evaluation is timed on
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
    p.add_argument("--report-only", action="store_true", help="rewrite EVALUATE.md from the stores; train nothing")
    p.add_argument("--no-app-default", dest="app_default", action="store_false",
                   help="skip timing the app's default evaluation of the default run (IPC 10, shipped generator)")
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


def plan(args) -> list[tuple[str, int, str, str, list[int]]]:
    """(generator, IPC, protocol, student, seeds) in the order they are trained: the most important
    rows first, so that a benchmark stopped early has filled them. ConvNet-3 before the timm student,
    IPC 1 before IPC 10 (10x the compute a student), and seed 0 of every row of an IPC before
    seeds 1.. . Seeds join a stored evaluation, so each step trains only the students it lacks."""
    steps = []
    for student in args.students:
        for ipc in sorted(args.ipc):
            seed_steps = [[0], list(range(args.seeds))] if args.seeds > 1 else [[0]]
            for k, seeds in enumerate(seed_steps):
                for gen in args.generators:
                    for protocol in args.protocols:
                        if not steps or steps[-1] != (gen, ipc, protocol, student, seeds):
                            steps.append((gen, ipc, protocol, student, seeds))
                if k == 0 and (student, ipc) == ("convnet", APP_IPC) and args.app_default and not args.quick:
                    steps.append((args.generators[0], ipc, "app-default", student, [0]))
    return steps


class Runs:
    """The benchmark's runs (``benchmarks.quality.ensure_run``), each made or finished once, kept open.
    Runs only read (``create`` False: the report) are opened as plain stores, without the engine and
    its writer lock, so ``--report-only`` works while a benchmark is training in them."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.detector = Detector.load(args.detector, device)
        self.open: dict[tuple[str, int], tuple] = {}  # engines: (pipe, data)
        self.readers: dict[tuple[str, int], tuple] = {}  # read-only: (store, data)
        self.lines: dict[tuple[str, int], str] = {}

    def _qargs(self, gen_path: str) -> argparse.Namespace:
        a = self.args
        return argparse.Namespace(data=a.data, generator=gen_path, detector=a.detector, device=a.device,
                                  quick=a.quick, work=a.work)  # fmt: skip

    def _data(self, store: RunStore):
        return small_test(run_dataset(store)) if self.args.quick else run_dataset(store)

    def get(self, gen_path: str, ipc: int, create: bool = True):
        """(store, test data) of the run, or None when it does not exist and ``create`` is False."""
        key = (gen_path, ipc)
        if key in self.open:
            pipe, data = self.open[key]
            return pipe.store, data
        qargs, fp = self._qargs(gen_path), fingerprint(gen_path)
        if not create:
            if key not in self.readers:
                path = run_path(qargs, ipc, fp)
                if not (path / "run.sqlite").is_file():
                    return None
                store = RunStore.open(path)
                self.readers[key] = (store, self._data(store))
                self.lines[key] = f"{Path(gen_path).name} IPC {ipc}: run `{path}` (read from its store)"
            return self.readers[key]
        if key in self.readers:
            self.readers.pop(key)[0].close()
        t0 = time.time()
        generator = load_generator(gen_path, self.device)
        full = load_dataset(self.args.data, size=generator.resolution, channels=generator.channels)
        pipe = ensure_run(qargs, ipc, fp, full, generator, self.detector)
        self.open[key] = (pipe, self._data(pipe.store))
        took = time.time() - t0
        where = os.path.relpath(pipe.store.path) if str(pipe.store.path).startswith(os.getcwd()) else pipe.store.path
        self.lines[key] = f"{Path(gen_path).name} IPC {ipc}: run `{where}` ready in {took:.0f} s"
        return pipe.store, self.open[key][1]

    def close(self) -> None:
        for pipe, _ in self.open.values():
            pipe.close()
        for store, _ in self.readers.values():
            store.close()


def app_default_cost(args, store, data, run_line: str) -> None:
    """Time the app's default evaluation of the default run, end to end as the Evaluate tab runs it:
    the run's data read (``run_dataset``), then ``evaluate_run`` of every set, hard labels, ConvNet-3,
    1 seed. Students already stored (by earlier steps) are not retrained: their stored seconds are
    added, and the JSON (``WORK/evaluate-app-default.json``) says which were trained here."""
    from curator.evalsets import SETS as ALL_SETS

    t0 = time.time()
    data = small_test(run_dataset(store)) if args.quick else run_dataset(store)
    t_data = time.time() - t0
    before = {r.set_name: len(r.students) for r in evaluate_run(store, sets=ALL_SETS, seeds=[0], data=data,
                                                                train=False) if r.students}  # fmt: skip
    recs = evaluate_run(store, sets=ALL_SETS, protocol="hard", student="convnet", seeds=[0], data=data,
                        device=args.device)  # fmt: skip
    wall = time.time() - t0
    reused = {r.set_name: next(s.seconds for s in r.students if s.seed == 0) for r in recs if r.set_name in before}
    info = {"run": run_line, "data_seconds": round(t_data, 1), "call_seconds": round(wall, 1),
            "reused_student_seconds": {k: round(v, 1) for k, v in reused.items()},
            "trained_here": [r.set_name for r in recs if r.set_name not in before],
            "total_seconds": round(wall + sum(reused.values()), 1), "n_train": {r.set_name: r.n_train for r in recs},
            "load": os.getloadavg()[0]}  # fmt: skip
    (Path(args.work) / "evaluate-app-default.json").write_text(json.dumps(info, indent=2))


def stored_rows(args, runs: Runs) -> list[tuple[str, int, object]]:
    """Every stored evaluation of the benchmark's current sets, read from the run stores (trains nothing)."""
    rows = []
    for gen_path in args.generators:
        for ipc in args.ipc:
            got = runs.get(gen_path, ipc, create=False)
            if got is None:
                continue
            store, data = got
            for protocol in args.protocols:
                for student in args.students:
                    recs = evaluate_run(store, sets=args.sets, protocol=protocol, student=student, seeds=args.seeds,
                                        temperature=args.temperature, epochs=args.epochs, device=args.device,
                                        data=data, train=False)  # fmt: skip
                    rows += [(Path(gen_path).name, ipc, r) for r in recs]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    runs = Runs(args, device)
    t_all = time.time()
    command = " ".join(["python -m benchmarks.evaluate", *(sys.argv[1:] if argv is None else argv)])
    try:
        steps = [] if args.report_only else plan(args)
        for n, (gen_path, ipc, protocol, student, seeds) in enumerate(steps, 1):
            store, data = runs.get(gen_path, ipc)
            tag = f"[{n}/{len(steps)}] {Path(gen_path).name} IPC {ipc} {protocol} {student}"

            def show(p: StudentProgress, tag=tag) -> None:
                if p.epoch == p.epochs:
                    print(f"{tag}: {p.set_name} seed {p.seed} done ({p.done + 1}/{p.total})", flush=True)

            if protocol == "app-default":
                app_default_cost(args, store, data, runs.lines[(gen_path, ipc)])
                continue
            evaluate_run(
                store, sets=args.sets, protocol=protocol, student=student, seeds=seeds,
                temperature=args.temperature, epochs=args.epochs, device=args.device, data=data,
                detector=runs.detector, progress=show,
            )  # fmt: skip
            write_report(args, stored_rows(args, runs), runs, out / "EVALUATE.md", time.time() - t_all, command)
        write_report(args, stored_rows(args, runs), runs, out / "EVALUATE.md", time.time() - t_all, command)
    finally:
        runs.close()
    print(f"results: {out / 'EVALUATE.md'}")
    return 0


def _cell(r) -> str:
    n = len(r.students)
    return f"{100 * r.mean:.1f} ± {100 * r.std:.1f} ({n})" if n else "not yet measured"


def _gap(rows, gen, ipc, proto, student, a, b) -> float:
    get = {(g, i, r.protocol, r.student, r.set_name): r for g, i, r in rows}
    ra, rb = get.get((gen, ipc, proto, student, a)), get.get((gen, ipc, proto, student, b))
    return 100 * (ra.mean - rb.mean) if ra and rb and ra.students and rb.students else float("nan")


def _fmt(x: float) -> str:
    return "not yet measured" if x != x else f"{x:+.1f}"


def _app_default(work: Path) -> str:
    path = work / "evaluate-app-default.json"
    if not path.is_file():
        return "Not yet measured (the plan times it after the ConvNet-3 IPC 10 seed-0 rows)."
    d = json.loads(path.read_text())
    reused = d["reused_student_seconds"]
    return (
        f"The Evaluate tab's defaults (all four sets, hard labels, ConvNet-3, 1 seed, default epochs) on the\n"
        f"default run ({d['run']}): **{d['total_seconds'] / 60:.1f} minutes** end to end, of which reading the\n"
        f"run's data {d['data_seconds']:.1f} s; set sizes {d['n_train']}. Students trained in the timed call:\n"
        f"{', '.join(d['trained_here']) or 'none'} (call {d['call_seconds']:.0f} s); students already stored by\n"
        f"earlier steps, their stored seconds added: {reused or 'none'}. Load average at the end: {d['load']:.1f}."
    )


def write_report(args, rows, runs: Runs, path: Path, wall: float, command: str) -> None:
    """EVALUATE.md, from the stores: top-1 per (generator, IPC, set) x (protocol, student), how many
    seeds each cell has, what is not measured yet, seconds per student, gaps, the app's cost."""
    cols = [(p, s) for p in args.protocols for s in args.students]
    head = " | ".join(f"{p}{f' T={args.temperature:g}' if p == 'soft' else ''}, {s}" for p, s in cols)
    lines = [f"| generator | IPC | set | {head} |", "|---|---|---|" + "---|" * len(cols)]
    get = {(g, i, r.set_name, r.protocol, r.student): r for g, i, r in rows}
    keys = [(Path(g).name, i, s) for g in args.generators for i in args.ipc for s in args.sets]
    for g, i, s in keys:
        cells = [(_cell(get[(g, i, s, p, st)]) if (g, i, s, p, st) in get else "not yet measured") for p, st in cols]
        lines.append(f"| {g} | {i} | {TITLES[s]} | {' | '.join(cells)} |")
    full, partial, missing = [], [], []
    for g in args.generators:
        for i in args.ipc:
            for p, st in cols:
                n = [len(get[k].students) if (k := (Path(g).name, i, s, p, st)) in get else 0 for s in args.sets]
                what = f"{Path(g).name} IPC {i} {p} {st}"
                if min(n) >= args.seeds:
                    full.append(what)
                elif max(n) > 0:
                    partial.append(f"{what} ({'/'.join(map(str, n))} seeds of {', '.join(args.sets)})")
                else:
                    missing.append(what)
    secs = ["| generator | IPC | " + " | ".join(f"{p}, {s}" for p, s in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g in args.generators:
        for i in args.ipc:
            cells = []
            for p, st in cols:
                t = [x.seconds / len(x.students) for (gg, ii, x) in rows
                     if (gg, ii, x.protocol, x.student) == (Path(g).name, i, p, st) and x.students]  # fmt: skip
                n = sum(len(x.students) for (gg, ii, x) in rows
                        if (gg, ii, x.protocol, x.student) == (Path(g).name, i, p, st))  # fmt: skip
                cells.append(f"{np.mean(t):.0f} ({n})" if t else "not yet measured")
            secs.append(f"| {Path(g).name} | {i} | {' | '.join(cells)} |")
    gaps = ["| generator | IPC | protocol, student | refined − unrefined | refined − random real |",
            "|---|---|---|---|---|"]  # fmt: skip
    soft_notes = []
    for g in args.generators:
        gn = Path(g).name
        for i in args.ipc:
            for p, st in cols:
                a = _gap(rows, gn, i, p, st, "curated", "unrefined")
                b = _gap(rows, gn, i, p, st, "curated", "random_real")
                gaps.append(f"| {gn} | {i} | {p}, {st} | {_fmt(a)} | {_fmt(b)} |")
            for st in args.students:
                h = [_gap(rows, gn, i, "hard", st, "curated", x) for x in ("unrefined", "random_real")]
                s = [_gap(rows, gn, i, "soft", st, "curated", x) for x in ("unrefined", "random_real")]
                if all(v == v for v in h + s):
                    soft_notes.append(
                        f"- {gn} IPC {i}, {st}: refined − unrefined {h[0]:+.1f} (hard) → {s[0]:+.1f} (soft); "
                        f"refined − random real {h[1]:+.1f} → {s[1]:+.1f}"
                        + ("; **random real wins under soft labels**" if s[1] < 0 else "")
                    )
    todo = " ".join(["python -m benchmarks.evaluate", *(["--quick"] if args.quick else [])])
    text = f"""# Evaluation protocols: hard and soft labels, ConvNet-3 and a timm student

Written by `benchmarks/evaluate.py` from the run stores on {time.strftime("%Y-%m-%d %H:%M")}
(this call: {wall / 60:.1f} minutes).

- Command: `{command}`
- Machine: {machine()}; torch threads {args.threads}. **The 2 cores were shared** with other
  sessions' jobs while these students trained (1-minute load average {os.getloadavg()[0]:.1f} when this file
  was written; 5 to 7 while the first rows trained), so the seconds below are what a student took
  under that load, not on an idle machine.
- Data: `{args.data}`; detector (and soft-label teacher) `{args.detector}`; students trained by
  `curator.evaluation.evaluate_run` (the app's and the CLI's code), stored in each run store
  (`python -m curator evaluate RUN --show` prints them), seeds 0..{args.seeds - 1}.
- Hard labels: cross-entropy on the set's labels. Soft labels: KL at temperature {args.temperature:g} to the
  detector's softmax, the teacher evaluated once per minibatch on the student's own augmented views
  (`curator.students`). Same optimiser, schedule, augmentation and epochs (about 300 SGD steps).
- "refined" is each run's curated set; no person reviewed these runs, so it equals the automatic set.
  The person's worth, with a simulated reviewer: `REVIEW.md` (`benchmarks/review_worth.py`).
{"- **Quick mode**: a plumbing check, the numbers mean nothing." if args.quick else ""}

**The README's headline numbers** (its table "ConvNet students", from `RESULTS.md`, `benchmarks/quality.py`)
use the **hard-label protocol with ConvNet-3**: cross-entropy, the same optimiser, augmentation and
~300 SGD steps as the "hard, convnet" column here, 3 seeds, tested on the same real test split.

## What is measured

- Complete (seeds 0..{args.seeds - 1} for every set): {"; ".join(full) or "none yet"}
- Partial (seeds per set): {"; ".join(partial) or "none"}
- **Not yet measured**: {"; ".join(missing) or "none"}

To complete the table, run `{todo}` (`nice -n 10` on a shared machine): it resumes from the stores and
trains only the students that are missing, most important rows first (ConvNet-3 before resnet10t,
IPC 1 before IPC 10, seed 0 of every row of an IPC before seeds 1 and 2), rewriting this file after
each step. `python -m benchmarks.evaluate --report-only` rewrites it from the stores alone.

## Top-1 on the real test split (%), mean ± std (students)

{chr(10).join(lines)}

## Seconds per student, train + test (students measured)

{chr(10).join(secs)}

## What the app's evaluation of a default run costs

{_app_default(Path(args.work))}

## Gaps (points of top-1)

{chr(10).join(gaps)}

## What soft labels did to the gaps

{chr(10).join(soft_notes) or "Not yet measured: no (generator, IPC, student) has both protocols for all three sets."}

## Runs

{chr(10).join("- " + r for r in runs.lines.values()) or "- none opened in this call"}
"""
    # Paths inside the repository are shown relative to it, so the file reads the same on any clone.
    path.write_text(text.replace(str(Path(__file__).resolve().parents[1]) + os.sep, ""))


if __name__ == "__main__":
    sys.exit(main())
