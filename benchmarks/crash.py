"""Crash sweep: SIGKILL a real ``curator run`` right after each of its store commits, resume, export,
and compare with an uninterrupted run, byte for byte (in the spirit of SQLite's crash tests).

    .venv/bin/python -m benchmarks.crash          # every commit of a 3-class run -> benchmarks/CRASH.md
    make crash-test                               # the same

A process started with ``CURATOR_CRASH_AFTER_COMMITS=N`` kills itself right after its N-th commit
(``curator/store.py``). For N = 1, 2, ... until a run finishes unkilled, the killed run is resumed
(``run --resume``) in this process with one torch thread, as the killed process had, checked
(``PRAGMA integrity_check`` and ``RunStore.check``) and exported. Then a person's actions
(``INTERLEAVINGS``: decide, regenerate, undo in several orders) are killed after each of their
commits (``action_sweep``). tests/test_crash.py runs the same sweeps on a smaller run in ``make test``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "crash-run"


def run_cli(args: list[str], crash_after: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m curator ARGS`` as a real process (one torch thread); killed after commit N if given."""
    return run_python(["-m", "curator", *args], crash_after, timeout)


def run_python(args: list[str], crash_after: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` as a real process (one torch thread); it kills itself after commit N if given."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("CURATOR_CRASH_AFTER_COMMITS", None)
    if crash_after is not None:
        env["CURATOR_CRASH_AFTER_COMMITS"] = str(crash_after)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: {relative path: bytes}."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def export_bytes(run: Path, out: Path) -> dict[str, bytes]:
    """Check the run (SQLite's integrity check and the store's own rules), export it, read it back.

    The key ``<store>`` holds every stored image's provenance and every decision, so runs that
    differ only in what is not exported (e.g. an unresolved anomaly's candidates) differ too.
    """
    from curator.export import export_run
    from curator.store import RunStore

    store = RunStore.open(run)
    try:
        problems = store.check()
        if problems:
            raise AssertionError(f"{run}: {problems}")
        export_run(store, out)
        digest = store_digest(store)
    finally:
        store.close()
    return {**tree_bytes(out), "<store>": digest}


def store_digest(store) -> bytes:
    """Every image row (provenance, detector outputs, scores) and decision of a run, as text."""
    cols = ("label", "kind", "round", "position", "seed", "confidence", "predicted", "reason", "uniqueness", "score")
    lines = []
    for label in range(len(store.class_names)):
        for a in store.synthetic(label):
            for r in [a, *store.candidates(a.id)]:
                lines.append(repr([getattr(r, c) for c in cols]))
            d = store.decision(a.id)
            chosen = store.image(d.candidate_id) if d is not None and d.candidate_id is not None else None
            pick = None if chosen is None else (chosen.round, chosen.position)
            lines.append(repr(None if d is None else (d.choice, pick, d.source)))
    return "\n".join(lines).encode()


def uninterrupted(run_args: list[str], work: Path) -> dict[str, bytes]:
    proc = run_cli([*run_args, "--out", str(work / "ref"), "--run-id", RUN_ID])
    if proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return export_bytes(work / "ref" / RUN_ID, work / "ref-export")


def crash_sweep(run_args: list[str], want: dict[str, bytes], work: Path, step: int = 1, first: int = 1) -> int:
    """Kill after commit N = first, first + step, ... until a run finishes unkilled; after each kill,
    resume in this process and compare the export with ``want``, an uninterrupted run's. Returns
    the number of kills. Call it with one torch thread (``torch.set_num_threads(1)``)."""
    from curator.cli import main as cli_main

    kills, n = 0, first
    while True:
        root = work / f"kill-{n}"
        proc = run_cli([*run_args, "--out", str(root), "--run-id", RUN_ID], crash_after=n)
        if proc.returncode == 0:  # fewer than n commits: the sweep covered them all
            if kills == 0:
                raise AssertionError("the run finished before its first commit was reached")
            return kills
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"kill after commit {n}: exit {proc.returncode}\n{proc.stderr}")
        kills += 1
        if cli_main(["run", "--resume", str(root / RUN_ID)]) != 0:
            raise AssertionError(f"kill after commit {n}: the resume failed")
        got = export_bytes(root / RUN_ID, work / f"export-{n}")
        if sorted(got) != sorted(want):
            raise AssertionError(f"kill after commit {n}: other files ({sorted(set(got) ^ set(want))})")
        differ = [name for name in want if got[name] != want[name]]
        if differ:
            raise AssertionError(f"kill after commit {n}: {differ} differ from the uninterrupted run")
        n += step


# A person's actions on a finished run, interleaving a regenerate with decisions and undos (issue 20):
# an undo that returns an anomaly to the pipeline must restore the automatic pick as it stands now.
INTERLEAVINGS = {
    "decide, regenerate, undo": ("decide", "regenerate", "undo"),
    "regenerate, decide, undo": ("regenerate", "decide", "undo"),
    "decide twice, regenerate, undo twice": ("decide", "decide", "regenerate", "undo", "undo"),
    # issue 18: a bulk accept is one commit (all or none) and one undo step, and keeps the person's decision
    "decide, bulk accept, undo": ("decide", "bulk", "undo"),
}


def target(store):
    """The anomaly the actions are done on: the first with an automatic pick, else the first with candidates."""
    with_cands = [a for a in store.anomalies() if store.candidates(a.id)]
    return next((a for a in with_cands if store.auto_pick(a.id) is not None), with_cands[0])


def primed(finished: Path, work: Path, tries: int = 6) -> Path:
    """A copy of the finished run in which the next regenerate of the ``target`` anomaly moves its
    automatic pick (earlier rounds added first, as a person might have), so that an undo restoring
    a stale pick would show in ``settle``. Raises if ``tries`` rounds never move it."""
    from curator.store import RunStore

    def pick(run: Path) -> int | None:
        store = RunStore.open(run)
        try:
            return store.auto_pick(target(store).id)
        finally:
            store.close()

    base = work / "primed-0" / RUN_ID
    shutil.copytree(finished, base)
    for i in range(1, tries + 1):
        trial = work / f"primed-{i}" / RUN_ID
        shutil.copytree(base, trial)
        act(trial, ["regenerate"])
        if pick(trial) != pick(base):
            return base
        base = trial
    raise AssertionError(f"{tries} regenerates never moved the automatic pick: the sweep could not see a stale undo")


def act(run: Path, actions: Sequence[str]) -> None:
    """Do ``actions`` on the run's first anomaly that has candidates, as a person in the app would:
    ``decide`` keeps a candidate other than the automatic pick (another one each time),
    ``regenerate`` adds a round of K candidates and rescores, ``bulk`` accepts every automatic pick
    no person decided (one transaction, one undo step), ``undo`` reverts the last decision or bulk."""
    from curator.engine import open_run
    from curator.review import bulk_accept, bulk_targets, review_queue, user_decide

    engine = open_run(str(run))
    try:
        store = engine.store
        a = target(store)
        for i, action in enumerate(actions):
            if action == "decide":
                others = [c.id for c in store.candidates(a.id) if c.id != store.auto_pick(a.id)]
                user_decide(store, a.id, "candidate", others[i % len(others)])
            elif action == "regenerate":
                engine.regenerate(a.id)
            elif action == "bulk":
                bulk_accept(store, bulk_targets(review_queue(store), 0.0, 0.0))
            elif action == "undo":
                store.undo_last()
            else:
                raise ValueError(f"unknown action {action!r}")
    finally:
        engine.close()


def settle(run: Path) -> None:
    """Resume the run (``run --resume``: a killed regenerate is rescored), check it, then undo every
    logged decision: each anomaly must end on the pipeline's decision as its stored pick stands now."""
    from curator.cli import main as cli_main
    from curator.store import RunStore

    if cli_main(["run", "--resume", str(run)]) != 0:
        raise AssertionError(f"{run}: the resume failed")
    store = RunStore.open(run)
    try:
        problems = store.check()
        while store.undo_last() is not None:
            problems += store.check()
        for a in store.anomalies():
            if store.candidates(a.id) and store.decision(a.id) != store.automatic_decision(a.id):
                problems.append(f"anomaly {a.id}: {store.decision(a.id)} after undoing every decision, "
                                f"the stored pick is {store.auto_pick(a.id)}")  # fmt: skip
    finally:
        store.close()
    if problems:
        raise AssertionError(f"{run}: {problems}")


def action_sweep(finished: Path, actions: Sequence[str], work: Path, step: int = 1) -> int:
    """Copy the finished run ``finished`` (``primed``), do ``actions`` in a process killed after its
    commit N (N = 1, 1 + step, ... until they finish unkilled) and ``settle`` each copy; the unkilled
    one too. Returns the number of kills. Call it with one torch thread."""
    base = primed(finished, work)
    kills, n = 0, 1
    while True:
        run = work / f"act-{n}" / RUN_ID
        shutil.copytree(base, run)
        proc = run_python(["-m", "benchmarks.crash", "--act", str(run), *actions], crash_after=n)
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"{actions}, kill after commit {n}: exit {proc.returncode}\n{proc.stderr}")
        settle(run)
        if proc.returncode == 0:  # fewer than n commits: every kill point was covered
            return kills
        kills += 1
        n += step


def tiny_setup(root: Path, classes: list[str], size: int = 16, per_class: int = 10) -> list[str]:
    """A small ImageFolder and tiny random models under ``root``; returns the run's data/model flags."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

    data = write_image_folder(root / "data", dict.fromkeys(classes, per_class), size=size)
    make_tiny_generator(classes, resolution=size).save_pretrained(root / "gen")
    make_tiny_detector(classes, input_size=size).save(root / "det")
    return ["--data", str(data), "--generator", str(root / "gen"), "--detector", str(root / "det")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--ipc", type=int, default=3)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--step", type=int, default=1, help="kill after every STEP-th commit (default 1: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "CRASH.md"))
    p.add_argument("--act", nargs="+", metavar=("RUN", "ACTION"), help=argparse.SUPPRESS)  # act(): a child process
    args = p.parse_args(argv)
    if args.act:
        act(Path(args.act[0]), args.act[1:])
        return 0
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        flags = tiny_setup(work, [f"class{i}" for i in range(args.classes)])
        run_args = ["run", *flags, "--ipc", str(args.ipc), "--k", str(args.k), "--steps", "2", "--tau", "1.0"]
        run_args += ["--batch-size", "4", "--rounds", str(args.rounds)]
        t0 = time.time()
        want = uninterrupted(run_args, work)
        kills = crash_sweep(run_args, want, work, step=args.step)
        seconds = time.time() - t0
        t0 = time.time()
        act_kills = {name: action_sweep(work / "ref" / RUN_ID, actions, work / name.replace(" ", "_"), args.step)
                     for name, actions in INTERLEAVINGS.items()}  # fmt: skip
        act_seconds = time.time() - t0
    cmd = "python -m benchmarks.crash " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        "# Crash sweep\n\n"
        f"`{cmd.strip()}` on {platform.node() or 'this machine'} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M')}.\n\n"
        f"- Run: {args.classes} classes, IPC {args.ipc}, K {args.k}, {args.rounds} rounds, tau 1.0 "
        "(every image an anomaly), batch 4, tiny random models.\n"
        f"- Kill points: **{kills}** (SIGKILL right after commit 1, {1 + args.step}, ... until the run finished "
        "unkilled).\n"
        "- After every kill: `run --resume`, `PRAGMA integrity_check` and `RunStore.check()` clean, the "
        "export **byte-identical** to the uninterrupted run's (every file), and the store the same (every "
        "image's provenance, detector outputs and scores, every decision: `store_digest`).\n"
        f"- Wall time: {seconds:.0f} s.\n\n"
        "## A person's actions, killed after each commit\n\n"
        "The finished run is copied and a person's actions on its first anomaly are done in a process "
        "killed after each of its commits (`act`); each copy is then resumed, checked (`RunStore.check`: "
        "finished classes fully scored, automatic decisions equal to the stored pick) and every decision "
        "undone: each anomaly must end on the automatic pick as it stands now (`settle`).\n\n"
        "| actions | kill points |\n|---|---|\n"
        + "".join(f"| {name} | {n} |\n" for name, n in act_kills.items())
        + f"\nWall time: {act_seconds:.0f} s.\n"
    )
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
