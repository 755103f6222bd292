"""Uniqueness benchmark: centre detector features on the class's mean or on the global mean?

    nice -n 10 .venv/bin/python -m benchmarks.uniqueness --jobs 2   # about an hour on 2 cores
    .venv/bin/python -m benchmarks.uniqueness --quick               # seconds: a plumbing check

Selection scores a candidate by ``confidence + lambda * uniqueness``, uniqueness being
``1 - max cosine`` to the class's qualified images on centred, L2-normalised detector features.
Centred on the mean of all real features ("global"), every image of one class points roughly the
same way and uniqueness is squeezed near 0; centred on the class's own mean ("class"), it measures
how an image differs from the rest of its class. This benchmark measures which centre selects the
better set, on two generators: the shipped one (``assets/generator``, few anomalies) and an early
checkpoint of it (``assets/generator-early``, 100 training steps, about 70 % prototype-guided
consistency: a testbed where refinement has work to do).

Per generator and IPC (default 1 and 10) the default pipeline runs once (``benchmarks.quality``'s
runs under ``_work/runs/``, resumed or reused); candidates depend on neither the centre nor lambda,
so every selection below is re-run on the same stored candidates (``quality.reselect_detail``):

* ``unrefined``: the initial synthesis, anomalies included;
* ``global``: greedy selection, lambda 0.5, global centre;
* ``class``: greedy selection, lambda 0.5, class centre;
* ``lam0``: lambda 0 (confidence only; the centre changes no pick, the spread is the class centre's);
* ``lam1``: lambda 1 with the class centre.

Each set is judged by the independent classifier (``benchmarks.classifier``) and trains ``--seeds``
ConvNet students (``curator.evaluation``). Students are keyed by the set's content (a hash of its
image ids): two selections with the same picks share their students instead of training twice.
Rows go to ``uniqueness.csv`` as students finish (resumable: rows already there are skipped) and
``UNIQUENESS.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from argparse import Namespace
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.quality import (
    Labelled,
    _rows_to_set,
    _student_job,
    add_common_args,
    append_row,
    consistency,
    ensure_run,
    finish_args,
    load_bench,
    machine,
    read_rows,
    reselect_detail,
    student_pool,
)
from curator.config import ASSETS, DEFAULT_GENERATOR
from curator.engine import LocalEngine
from curator.evaluation import default_epochs
from curator.training import pick_device

EARLY_GENERATOR = str(ASSETS / "generator-early")
# name -> (centre, lambda); None = no selection (the unrefined set)
SELECTIONS = {
    "unrefined": (None, None),
    "global": ("global", 0.5),
    "class": ("class", 0.5),
    "lam0": ("class", 0.0),
    "lam1": ("class", 1.0),
}
LABELS = {
    "unrefined": "unrefined",
    "global": "global centre, lambda 0.5",
    "class": "class centre, lambda 0.5",
    "lam0": "lambda 0 (confidence only)",
    "lam1": "class centre, lambda 1",
}
HEADER = (
    "| generator | IPC | selection | consistency % | top-1 % | uniqueness median / p95 "
    "| unresolved / anomalies | picks ≠ global | set |\n|---|---|---|---|---|---|---|---|---|"
)
COLUMNS = [
    "generator", "generator_path", "ipc", "selection", "centre", "lam", "seed", "set_hash", "top1", "n_images",
    "anomalies", "unresolved", "picks_differ", "uniq_median", "uniq_p95", "detector_consistency",
    "independent_consistency", "epochs", "student_seconds", "shared_with", "finished_at",
]  # fmt: skip


@dataclass
class Selected:
    """One selection's set and what the table reports about it."""

    name: str
    images: Labelled
    set_hash: str
    anomalies: int
    unresolved: int | None
    picks_differ: int | None  # anomalies whose pick (or unresolved) differs from the global centre's
    uniq_median: float
    uniq_p95: float


def set_hash(rows: list) -> str:
    """First 12 hex digits of the SHA-1 of the set's sorted image ids (a set's content in its run)."""
    return hashlib.sha1(",".join(str(i) for i in sorted(r.id for r in rows)).encode()).hexdigest()[:12]


def selections(engine: LocalEngine) -> dict[str, Selected]:
    """Every selection of ``SELECTIONS`` on the run's stored candidates."""
    store, labels = engine.store, engine.labels()
    n_anomalies = sum(len(store.anomalies(c)) for c in labels)
    unrefined = {c: store.synthetic(c) for c in labels}
    out = {"unrefined": Selected("unrefined", _rows_to_set(store, unrefined),
                                 set_hash([r for rows in unrefined.values() for r in rows]), n_anomalies,
                                 None, None, float("nan"), float("nan"))}  # fmt: skip
    picks: dict[str, list] = {}
    for name, (centre, lam) in SELECTIONS.items():
        if centre is None:
            continue
        rows, uniq, chosen = {}, [], []
        for c in labels:
            passed, anomalies, cands, sels = reselect_detail(engine, c, lam, centre)
            rows[c] = passed + [cs[s.pick] for cs, s in zip(cands, sels) if s.pick is not None]
            uniq += [u for s in sels for u in s.uniqueness]
            chosen += [(a.id, None if s.pick is None else cs[s.pick].id)
                       for a, cs, s in zip(anomalies, cands, sels)]  # fmt: skip
        picks[name] = chosen
        flat = [r for rs in rows.values() for r in rs]
        u = np.asarray(uniq, dtype=float)
        out[name] = Selected(
            name, _rows_to_set(store, rows), set_hash(flat), n_anomalies,
            sum(p is None for _, p in chosen), None,
            float(np.median(u)) if len(u) else float("nan"), float(np.percentile(u, 95)) if len(u) else float("nan"),
        )  # fmt: skip
    for name in picks:
        out[name].picks_differ = sum(a != b for a, b in zip(picks[name], picks["global"]))
    return out


# --- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.uniqueness", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--seeds", type=int, default=3, help="students per set, seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the evaluation protocol)")
    p.add_argument("--generators", nargs="+", default=None,
                   help="generator folders (default: assets/generator and assets/generator-early; "
                        "--generator DIR alone measures that one)")  # fmt: skip
    add_common_args(p, "uniqueness.csv and UNIQUENESS.md")
    p.set_defaults(generator=None)
    args = finish_args(p.parse_args(argv))
    args.generators = args.generators or ([args.generator] if args.generator else [DEFAULT_GENERATOR, EARLY_GENERATOR])
    return args


def _for(args: Namespace, generator: str) -> Namespace:
    return Namespace(**{**vars(args), "generator": generator})


def _key(r: dict) -> tuple[str, int, str, int]:
    return str(r["generator"]), int(r["ipc"]), str(r["selection"]), int(r["seed"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    csv_path = out / "uniqueness.csv"
    command = " ".join(["python -m benchmarks.uniqueness", *(argv if argv is not None else sys.argv[1:])])
    t_start = time.time()
    device = str(pick_device(args.device))
    # Phase 1: each generator's runs (once per IPC) and every selection's set; models freed after.
    jobs: dict[tuple, list] = {}  # (fp, ipc, set hash, seed) -> [(selection, record context)]
    judge_meta, names, tests = {}, {}, {}
    for g in args.generators:
        gargs = _for(args, g)
        b = load_bench(gargs)
        judge_meta, names[b.fp], tests[b.fp] = b.judge_meta, g, (b.data.test, b.data.num_classes)
        done = {_key(r) for r in read_rows(csv_path)}
        for ipc in args.ipc:
            todo = [(s, seed) for s in SELECTIONS for seed in range(args.seeds) if (b.fp, ipc, s, seed) not in done]
            if not todo:
                continue
            t0 = time.time()
            engine = ensure_run(gargs, ipc, b.fp, b.data, b.generator, b.detector)
            sets = selections(engine)
            engine.store.close()
            distinct = {s.set_hash: s.images for s in sets.values()}
            print(f"{Path(g).name} IPC {ipc}: run ready, {sets['unrefined'].anomalies} anomalies, "
                  f"{len(distinct)} distinct sets ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
            cons = {h: consistency(st.images, st.labels, b.detector, b.judge) for h, st in distinct.items()}
            for name, seed in todo:
                ctx = dict(fp=b.fp, path=g, ipc=ipc, sel=sets[name], cons=cons[sets[name].set_hash], seed=seed)
                jobs.setdefault((b.fp, ipc, sets[name].set_hash, seed), []).append(ctx)
        del b

    def record(ctx: dict, acc: float, secs: float, epochs: int, shared_with: str = "") -> None:
        s: Selected = ctx["sel"]
        centre, lam = SELECTIONS[s.name]
        f = lambda v: "" if v is None or v != v else f"{v:.4f}"  # noqa: E731
        row = dict(generator=ctx["fp"], generator_path=Path(ctx["path"]).name, ipc=ctx["ipc"], selection=s.name,
                   centre=centre or "", lam="" if lam is None else lam, seed=ctx["seed"], set_hash=s.set_hash,
                   top1=f"{acc:.4f}", n_images=len(s.images.labels), anomalies=s.anomalies,
                   unresolved="" if s.unresolved is None else s.unresolved,
                   picks_differ="" if s.picks_differ is None else s.picks_differ,
                   uniq_median=f(s.uniq_median), uniq_p95=f(s.uniq_p95), detector_consistency=f(ctx["cons"][0]),
                   independent_consistency=f(ctx["cons"][1]), epochs=epochs, student_seconds=f"{secs:.1f}",
                   shared_with=shared_with, finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        append_row(csv_path, row, COLUMNS)
        print(f"{row['generator_path']} IPC {ctx['ipc']} {s.name:9s} seed {ctx['seed']}: top-1 {100 * acc:.2f} %"
              f"{' (shared with ' + shared_with + ')' if shared_with else f' ({secs:.0f} s)'}", flush=True)  # fmt: skip

    def record_all(ctxs: list, acc: float, secs: float, epochs: int) -> None:
        record(ctxs[0], acc, secs, epochs)
        for ctx in ctxs[1:]:
            record(ctx, acc, 0.0, epochs, shared_with=ctxs[0]["sel"].name)

    # Phase 2: one student per distinct (set, seed); a set already trained in the CSV is reused.
    trained = {(str(r["generator"]), int(r["ipc"]), r["set_hash"], int(r["seed"])): r for r in read_rows(csv_path)}
    pool = student_pool(args.jobs)
    futures = {}
    try:
        # short students first, then seed by seed, so an interrupted run has every set at a low seed
        for key in sorted(jobs, key=lambda k: (k[1], k[3])):
            ctxs = jobs[key]
            st = ctxs[0]["sel"].images
            epochs = args.epochs or default_epochs(len(st.images))
            if key in trained:
                r = trained[key]
                for ctx in ctxs:
                    record(ctx, float(r["top1"]), 0.0, int(r["epochs"]), shared_with=r["selection"])
                continue
            test, num_classes = tests[key[0]]
            job = (st.images, st.labels, num_classes, test, key[3], epochs, device, args.threads)
            if pool is None:
                record_all(ctxs, *_student_job(*job), epochs)
                write_report(args, csv_path, out / "UNIQUENESS.md", command, judge_meta, names, t_start)
            else:
                futures[pool.submit(_student_job, *job)] = (ctxs, epochs)
        for fut in as_completed(futures):
            ctxs, epochs = futures[fut]
            record_all(ctxs, *fut.result(), epochs)
            write_report(args, csv_path, out / "UNIQUENESS.md", command, judge_meta, names, t_start)
    finally:
        if pool:
            pool.shutdown()
    write_report(args, csv_path, out / "UNIQUENESS.md", command, judge_meta, names, t_start)
    print(f"results: {out / 'UNIQUENESS.md'} and {csv_path} ({time.time() - t_start:.0f} s)")
    return 0


# --- report ------------------------------------------------------------------------------------
def _mean(g: pd.DataFrame, col: str) -> float:
    v = pd.to_numeric(g[col], errors="coerce")
    return float(v.mean()) if v.notna().any() else float("nan")


def table_rows(df: pd.DataFrame, names: dict[str, str], ipcs: list[int]) -> list[str]:
    rows = []
    for fp in dict.fromkeys(df["generator"].astype(str)):
        gen = names.get(fp) or df[df["generator"].astype(str) == fp]["generator_path"].iloc[0]
        for ipc in ipcs:
            for sel in SELECTIONS:
                g = df[(df["generator"].astype(str) == fp) & (df["ipc"].astype(int) == ipc) & (df["selection"] == sel)]
                if not len(g):
                    continue
                top = g["top1"].astype(float)
                first = g.iloc[0]
                spread = ("–" if first["uniq_median"] != first["uniq_median"] or first["uniq_median"] == ""
                          else f"{float(first['uniq_median']):.3f} / {float(first['uniq_p95']):.3f}")  # fmt: skip
                unres = "–" if str(first["unresolved"]) in ("", "nan") else str(int(float(first["unresolved"])))
                differ = "–" if str(first["picks_differ"]) in ("", "nan") else str(int(float(first["picks_differ"])))
                rows.append(
                    f"| {Path(gen).name} | {ipc} | {LABELS[sel]} | {100 * _mean(g, 'independent_consistency'):.1f} | "
                    f"{100 * top.mean():.1f} ± {100 * np.std(top):.1f} ({len(g)}) | {spread} | "
                    f"{unres} / {int(first['anomalies'])} | {differ} | {first['set_hash'][:6]} |"
                )
    return rows


def write_report(args, csv_path: Path, path: Path, command: str, judge_meta: dict, names: dict, t_start: float) -> None:
    df = pd.read_csv(csv_path, dtype={"set_hash": str}, keep_default_na=False) if csv_path.is_file() else None
    rows = table_rows(df, names, args.ipc) if df is not None and len(df) else []
    gens = ", ".join(f"`{Path(g).name}` (fingerprint `{fp}`)" for fp, g in names.items())
    text = f"""# Uniqueness: class centre or global centre?

Generated by `benchmarks/uniqueness.py` on {time.strftime("%Y-%m-%d %H:%M")}
({time.time() - t_start:.0f} s of wall time in this invocation).

- Command: `{command}`
- Machine: {machine()}; torch threads per process {args.threads}, student jobs {args.jobs}
- Data `{args.data}`; generators {gens}; one default pipeline run (seed 0, RunConfig defaults) per
  generator and IPC, every selection re-run on its stored candidates (no regeneration).
- Independent classifier: {judge_meta.get("arch")}, {100 * judge_meta.get("test_accuracy", float("nan")):.1f} % on the
  test split; students ConvNet-3 (`curator.evaluation`), seeds 0..{args.seeds - 1}.
{"- **Quick mode**: a plumbing check, the numbers mean nothing." if args.quick else ""}

Consistency: share (%) of the set the independent classifier assigns to the intended label.
Top-1: students on the real test split (%), mean ± std (students). Uniqueness: median / 95th
percentile over every candidate as scored in that selection (under its centre). Unresolved /
anomalies: anomalies with no label-consistent candidate (left out of the set) / anomalies flagged.
Picks ≠ global: anomalies whose pick differs from the global-centre selection (lambda 0.5). Set:
the first digits of the hash of the set's image ids (ids are per run: compare within one
generator and IPC); selections with the same set share their students. Lambda 0 ignores
uniqueness, so its picks do not depend on the centre (its spread is the class centre's); lambda 1
uses the class centre.

{HEADER}
{chr(10).join(rows)}

Raw rows: `{csv_path.name}`. Default chosen from this table: `benchmarks/DEFAULTS.md`.
"""
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
