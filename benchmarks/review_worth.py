"""Worth of a person's review: a simulated reviewer on the early-generator testbed, curated vs automatic.

    .venv/bin/python -m benchmarks.review_worth                # mnist5k, early generator, IPC 1, 3 seeds
    .venv/bin/python -m benchmarks.review_worth --ipc 10       # the IPC 10 run (about 6 min a student on 2 cores)
    .venv/bin/python -m benchmarks.review_worth --quick        # plumbing check: seconds, numbers mean nothing

The early generator (``assets/generator-early``) draws many wrong digits, and the detector's picks
among the candidates are often wrong too. The reviewer is an **independent classifier**
(``benchmarks.classifier``: a VGG-style CNN trained on the real training split, cached under
``WORK``; not the detector, not the student). For every anomaly of the run, in review order:

* the automatic pick stands when the reviewer predicts the anomaly's label for it (no decision);
* otherwise the reviewer **overrides** it with the candidate it predicts as the label with the highest
  probability, or **drops** the anomaly when it predicts the label for none of its candidates;
* an unresolved anomaly (no pick) gets the reviewer's best candidate, if any (counted as "rescued").

Decisions go through the library's own API (``curator.review.user_decide``, stored by the run
store), on a **copy** of the benchmark run (``WORK/review/<run>``): the shared run of
``benchmarks.quality`` / ``benchmarks.evaluate`` keeps its decisions. The sets "curated (with your
decisions)" and "automatic (pipeline's picks)" of the copy are then evaluated by
``curator.evaluation.evaluate_run`` (stored in the copy, so a rerun resumes), and ``REVIEW.md``
reports top-1 mean ± std over seeds, the per-seed difference, and the decisions made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.evaluate import EARLY_GENERATOR, small_test
from benchmarks.quality import HERE, ensure_run, fingerprint, machine, run_path
from curator.config import DEFAULT_DETECTOR
from curator.data import load_dataset
from curator.evalsets import SET_TITLES, build_set, run_dataset
from curator.evaluation import evaluate_run
from curator.models.detector import Detector
from curator.models.loading import load_generator
from curator.review import review_queue, user_decide
from curator.store import RunStore
from curator.training import pick_device

SETS = ("curated", "automatic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.review_worth", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--generator", default=EARLY_GENERATOR)
    p.add_argument("--detector", default=DEFAULT_DETECTOR)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--student", default="convnet")
    p.add_argument("--protocol", default="hard", choices=["hard", "soft"])
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's (about 300 SGD steps)")
    p.add_argument("--judge-epochs", type=int, default=20, help="reviewer's training epochs (20: quality's judge)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=str(HERE / "_work"))
    p.add_argument("--out", default=None, help="folder for REVIEW.md (default benchmarks/)")
    p.add_argument("--quick", action="store_true", help="IPC 1, 1 seed, 2 epochs, a 1-epoch reviewer, 200 test images")
    args = p.parse_args(argv)
    if args.quick:
        args.ipc, args.seeds, args.epochs = 1, 1, args.epochs or 2
        args.out = args.out or str(Path(args.work) / "quick")
    args.out = args.out or str(HERE)
    return args


def reviewer(data, args) -> tuple[torch.nn.Module, dict]:
    """The independent classifier (``benchmarks.classifier``), trained once and cached under WORK."""
    from benchmarks.classifier import load_or_train

    if args.quick:
        kw, tag = dict(epochs=1, limit=500), "quick"
    else:
        kw, tag = dict(epochs=args.judge_epochs), ("full" if args.judge_epochs == 20 else f"e{args.judge_epochs}")
    return load_or_train(data, Path(args.work) / f"independent-{Path(args.data).name}-{tag}.pt", **kw)


def review_copy(shared: Path, work: Path) -> Path:
    """A copy of the run folder ``shared`` under ``work/review/`` (made once; the writer lock is not copied)."""
    dst = work / "review" / shared.name
    if not (dst / "run.sqlite").is_file():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(shared, tmp, ignore=shutil.ignore_patterns("writer.lock"))
        tmp.replace(dst)
    return dst


@torch.no_grad()
def _probs(judge: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    return torch.softmax(judge(images.float()), 1).numpy()


def simulate_review(store: RunStore, judge: torch.nn.Module) -> dict[str, int]:
    """Decide every anomaly of ``store`` as the reviewer would (see the module doc), through
    ``user_decide``; anomalies already decided are left as they are (a rerun decides nothing new and
    counts the reviewer's earlier decisions by their stored state). Returns how many anomalies
    ended in each reviewer outcome."""
    judge.eval()
    picks = store.auto_picks()
    out = {"anomalies": 0, "pick kept": 0, "overridden": 0, "dropped": 0, "rescued": 0, "left unresolved": 0,
           "decided before": 0}  # fmt: skip
    for item in review_queue(store):
        out["anomalies"] += 1
        if item.reviewed:  # a rerun: count what the reviewer decided before
            kind = {"overridden": "overridden" if picks.get(item.anomaly_id) is not None else "rescued",
                    "dropped": "dropped"}.get(item.state, "decided before")  # fmt: skip
            out[kind] += 1
            continue
        cands = store.candidates(item.anomaly_id)
        pick = picks.get(item.anomaly_id)
        best = None
        if cands:
            p = _probs(judge, torch.stack([store.load_image(c) for c in cands]))
            ok = [i for i in range(len(cands)) if p[i].argmax() == item.label]
            if pick is not None and any(cands[i].id == pick for i in ok):
                out["pick kept"] += 1
                continue
            if ok:
                best = cands[max(ok, key=lambda i: p[i, item.label])].id
        if pick is None:
            if best is None:
                out["left unresolved"] += 1
                continue
            user_decide(store, item.anomaly_id, "candidate", best)
            out["rescued"] += 1
        elif best is not None:
            user_decide(store, item.anomaly_id, "candidate", best)
            out["overridden"] += 1
        else:
            user_decide(store, item.anomaly_id, "drop")
            out["dropped"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    detector = Detector.load(args.detector, device)
    generator = load_generator(args.generator, device)
    fp = fingerprint(args.generator)
    full = load_dataset(args.data, size=generator.resolution, channels=generator.channels)
    judge, meta = reviewer(full, args)
    print(f"reviewer: {100 * meta['test_accuracy']:.2f} % on the test split", flush=True)
    qargs = argparse.Namespace(data=args.data, generator=args.generator, detector=args.detector, device=args.device,
                               quick=args.quick, work=args.work)  # fmt: skip
    ensure_run(qargs, args.ipc, fp, full, generator, detector).close()  # the shared run, finished, then closed
    shared = run_path(qargs, args.ipc, fp)
    copy = review_copy(shared, Path(args.work))
    store = RunStore.open(copy)
    try:
        counts = simulate_review(store, judge)
        print("reviewer:", ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
        data = small_test(run_dataset(store)) if args.quick else run_dataset(store)
        missing = {n: sorted(set(range(len(store.class_names))) - set(build_set(store, n).labels.tolist()))
                   for n in SETS}  # fmt: skip
        missing = {n: [store.class_names[c] for c in m] for n, m in missing.items()}
        recs = evaluate_run(
            store, sets=list(SETS), protocol=args.protocol, student=args.student, seeds=args.seeds,
            epochs=args.epochs, device=args.device, data=data, detector=detector,
            progress=lambda p: p.epoch == p.epochs and print(f"{p.set_name} seed {p.seed} done", flush=True),
        )  # fmt: skip
    finally:
        store.close()
    write_report(args, counts, meta, recs, missing, shared, copy, out_dir / "REVIEW.md", time.time() - t_all,
                 " ".join(["python -m benchmarks.review_worth", *(sys.argv[1:] if argv is None else argv)]))
    print(f"results: {out_dir / 'REVIEW.md'}")
    return 0


def write_report(
    args, counts, meta, recs, missing, shared: Path, copy: Path, path: Path, wall: float, command: str
) -> None:
    """REVIEW.md: the reviewer's decisions, then top-1 of the curated and the automatic set."""
    by = {r.set_name: r for r in recs}
    rows = []
    for name in SETS:
        r = by[name]
        per = ", ".join(f"{100 * s.accuracy:.1f}" for s in r.students)
        gone = ", ".join(missing[name]) or "none"
        rows.append(f"| {SET_TITLES[name]} | {r.n_train} | {gone} | {100 * r.mean:.1f} ± {100 * r.std:.1f} | {per} |")
    cur = {s.seed: s.accuracy for s in by["curated"].students}
    aut = {s.seed: s.accuracy for s in by["automatic"].students}
    diffs = [100 * (cur[s] - aut[s]) for s in sorted(set(cur) & set(aut))]
    verdict = (
        "no seeds measured" if not diffs else
        f"review changed student top-1 by {np.mean(diffs):+.1f} ± {np.std(diffs):.1f} points "
        f"(paired by seed, {len(diffs)} seed(s); raised it in {sum(d > 0 for d in diffs)} of {len(diffs)})"
    )  # fmt: skip
    decided = counts["overridden"] + counts["dropped"] + counts["rescued"]
    text = f"""# Worth of a person's review: a simulated reviewer on the early-generator testbed

Generated by `benchmarks/review_worth.py` on {time.strftime("%Y-%m-%d %H:%M")} (this call {wall / 60:.1f} minutes;
the {sum(len(r.students) for r in recs)} students took {sum(r.seconds for r in recs) / 60:.1f} minutes in all, as
stored).

- Command: `{command}`
- Machine: {machine()}; torch threads {args.threads}; the cores were shared with other sessions' jobs
  (1-minute load average {os.getloadavg()[0]:.1f} at the end).
- Run: `{args.data}`, generator `{_rel(Path(args.generator))}`, IPC {args.ipc}, default parameters; the shared run
  `{_rel(shared)}` was copied to `{_rel(copy)}` and only the copy was reviewed.
- Reviewer: the independent classifier of `benchmarks/classifier.py` ({meta.get('arch', 'PlainCNN')},
  {meta.get('epochs', '?')} epochs), {100 * meta['test_accuracy']:.2f} % top-1 on the real test split.
- Students: `{args.student}`, {args.protocol} labels, `curator.evaluation.evaluate_run`, seeds 0..{args.seeds - 1}.
{"- **Quick mode**: a plumbing check, the numbers mean nothing." if args.quick else ""}

## The reviewer's decisions ({decided} made, of {counts['anomalies']} anomalies)

| outcome | anomalies |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in counts.items())}

## Student top-1 on the real test split (%)

| set | images | classes with no image | mean ± std | per seed |
|---|---|---|---|---|
{chr(10).join(rows)}

**Result:** {verdict}.{_why(missing)}
"""
    path.write_text(text)


def _rel(path: Path) -> str:
    return os.path.relpath(path) if Path(path).is_absolute() and str(path).startswith(os.getcwd()) else str(path)


def _why(missing: dict[str, list[str]]) -> str:
    """A note when review left a class without any image (at IPC 1 a drop removes the class)."""
    lost = sorted(set(missing["curated"]) - set(missing["automatic"]))
    if not lost:
        return ""
    return (
        f"\n\nThe reviewed set has **no image of class {', '.join(lost)}**: a drop at IPC 1 removes the class's "
        "only image, so the students never see it and lose its share of the test split. A drop costs more than "
        "a wrong image at IPC 1; the reviewer here drops whenever no candidate looks like the label."
    )


if __name__ == "__main__":
    sys.exit(main())
