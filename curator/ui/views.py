"""What the app shows, built from a run store: pure functions, no gradio, no models.

Images are returned as absolute file paths inside the run folder, which the app serves as
static files (no copy per request). Scores are the detector's: confidence in [0, 1], uniqueness
in [0, 1], score = confidence + lambda * uniqueness; all higher is better. They are the scores the
pipeline stored when it selected (its centre, ``RunConfig.uniqueness_centre``), never recomputed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curator.review import summarize
from curator.store import Decision, RunStore

REASONS = {"label_mismatch": "label mismatch", "low_confidence": "low confidence"}
ANOMALY_COLUMNS = ["anomaly", "prototype", "reason", "predicted", "confidence", "candidates", "decision", "chosen"]
CANDIDATE_COLUMNS = ["candidate", "round", "confidence", "uniqueness", "score", "predicted", "consistent", "mark"]
OVERVIEW_COLUMNS = [
    "label",
    "class",
    "status",
    "IPC",
    "anomalies",
    "label mismatch",
    "low confidence",
    "resolved auto",
    "accepted",
    "overridden",
    "unresolved",
    "conf before",
    "conf after",
]
OVERVIEW_FILTERS = ["all classes", "with anomalies", "with unresolved", "with overrides", "not run yet"]


class UIError(ValueError):
    """Bad input from the page (unknown class, image that is not an anomaly, no run open); shown as a message."""


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def decision_text(d: Decision | None, pick: int | None = None) -> str:
    """Short human text for an anomaly's decision state; ``pick`` is the stored automatic pick
    (a person's choice of it reads "accepted", of another candidate "you")."""
    if d is None:
        return "pending"
    who = "you" if d.source == "user" else "auto"
    if d.choice == "candidate":
        if d.source == "user" and d.candidate_id == pick:
            who = "accepted"
        return f"candidate #{d.candidate_id} ({who})"
    if d.choice == "original":
        return f"keep original ({who})"
    if d.choice == "drop":
        return f"dropped ({who})"
    return "unresolved"


@dataclass
class ClassView:
    """The class tab: the synthetic set (gallery) and its anomalies (table)."""

    label: int
    name: str
    gallery: list[tuple[str, str]]  # (image path, caption) in prototype order
    image_ids: list[int]
    anomalies: pd.DataFrame
    anomaly_ids: list[int]
    status: str


@dataclass
class AnomalyView:
    """One anomaly beside its prototype and its candidates, with the automatic pick marked."""

    anomaly_id: int
    original: str
    original_caption: str
    prototype: str
    candidates: list[tuple[str, str]]
    candidate_ids: list[int]
    table: pd.DataFrame
    pick_id: int | None
    chosen_id: int | None
    decision: str
    summary_md: str = field(default="")


def class_view(store: RunStore, label: int) -> ClassView:
    names = store.class_names
    if not 0 <= label < len(names):
        raise UIError(f"class {label} is not in this run (it has {len(names)} classes)")
    synth = store.synthetic(label)
    counts = store.candidate_counts(label)
    gallery, ids, rows, anomaly_ids = [], [], [], []
    for r in synth:
        path = str(store.path / r.file)
        if r.reason is None:
            caption = f"#{r.id} ✓ conf {_f(r.confidence, 2)}"
        else:
            d = store.decision(r.id)
            n = counts.get(r.id, 0)
            caption = (
                f"⚠ #{r.id} {REASONS[r.reason]} · pred {names[r.predicted]} · conf {_f(r.confidence, 2)}"
                f" → {decision_text(d, store.auto_pick(r.id))}"
            )
            anomaly_ids.append(r.id)
            rows.append(
                {
                    "anomaly": r.id,
                    "prototype": store.prototype(r.prototype_id).idx,
                    "reason": REASONS[r.reason],
                    "predicted": names[r.predicted],
                    "confidence": round(float(r.confidence), 4),
                    "candidates": n,
                    "decision": decision_text(d, store.auto_pick(r.id)),
                    "chosen": d.candidate_id if d is not None and d.candidate_id is not None else "",
                }
            )
        gallery.append((path, caption))
        ids.append(r.id)
    status = store.class_status(label)
    return ClassView(
        label, names[label], gallery, ids, pd.DataFrame(rows, columns=ANOMALY_COLUMNS), anomaly_ids, status
    )


def anomaly_view(store: RunStore, anomaly_id: int) -> AnomalyView:
    a = store.image(int(anomaly_id))
    if a.kind != "synthetic" or a.reason is None:
        raise UIError(f"image #{anomaly_id} is not an anomaly of this run")
    names = store.class_names
    label = a.label
    cands = store.candidates(a.id)
    d = store.decision(a.id)
    pick = store.auto_pick(a.id)  # the pipeline's own pick, as stored: never worked out again here
    chosen = d.candidate_id if d is not None and d.choice == "candidate" else None
    gallery, rows = [], []
    for c in cands:
        marks = []
        if c.id == pick:
            marks.append("★ auto pick")
        if c.id == chosen and d is not None and d.source == "user":
            marks.append("✔ your choice")
        mark = " ".join(marks)
        gallery.append(
            (
                str(store.path / c.file),
                f"#{c.id} · conf {_f(c.confidence, 2)} · uniq {_f(c.uniqueness, 2)} · "
                f"score {_f(c.score, 2)} · pred {names[c.predicted]}{' · ' + mark if mark else ''}",
            )
        )
        rows.append(
            {
                "candidate": c.id,
                "round": c.round,
                "confidence": round(float(c.confidence), 4),
                "uniqueness": None if c.uniqueness is None else round(float(c.uniqueness), 4),
                "score": None if c.score is None else round(float(c.score), 4),
                "predicted": names[c.predicted],
                "consistent": c.predicted == label,
                "mark": mark,
            }
        )
    proto = store.prototype(a.prototype_id)
    caption = (
        f"#{a.id} class {names[label]} · {REASONS[a.reason]} · predicted {names[a.predicted]} · "
        f"conf {_f(a.confidence)}"
    )
    pick_text = f"#{pick}" if pick else f"none (no candidate is predicted as {names[label]})"
    summary = (
        f"**Anomaly #{a.id}** (class {names[label]}, prototype {proto.idx}): {REASONS[a.reason]}, "
        f"predicted {names[a.predicted]}, confidence {_f(a.confidence)}.  \n"
        f"Candidates: {len(cands)} · uniqueness ({store.config.uniqueness_centre} centre) against the class's "
        f"qualified images · automatic pick: {pick_text} · **decision: {decision_text(d, pick)}**"
    )
    return AnomalyView(
        anomaly_id=a.id,
        original=str(store.path / a.file),
        original_caption=caption,
        prototype=str(store.path / proto.preview),
        candidates=gallery,
        candidate_ids=[c.id for c in cands],
        table=pd.DataFrame(rows, columns=CANDIDATE_COLUMNS),
        pick_id=pick,
        chosen_id=chosen,
        decision=decision_text(d, pick),
        summary_md=summary,
    )


def overview_frame(store: RunStore, filter_by: str = "all classes", sort_by: str = "label", descending: bool = False):
    """The per-class table; ``filter_by`` is one of ``OVERVIEW_FILTERS``, ``sort_by`` a column name."""
    if filter_by not in OVERVIEW_FILTERS:
        raise UIError(f"unknown filter {filter_by!r}; choose one of {OVERVIEW_FILTERS}")
    if sort_by not in OVERVIEW_COLUMNS:
        raise UIError(f"unknown column {sort_by!r}; choose one of {OVERVIEW_COLUMNS}")
    rows = []
    for s in summarize(store):
        rows.append(
            {
                "label": s.label,
                "class": s.name,
                "status": s.status,
                "IPC": s.images,
                "anomalies": s.anomalies,
                "label mismatch": s.label_mismatch,
                "low confidence": s.low_confidence,
                "resolved auto": s.resolved_auto,
                "accepted": s.accepted,
                "overridden": s.overridden,
                "unresolved": s.unresolved,
                "conf before": None if s.images == 0 else round(s.confidence_before, 3),
                "conf after": None if s.images == 0 else round(s.confidence_after, 3),
            }
        )
    df = pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)
    keep = {
        "all classes": df.label >= 0,
        "with anomalies": df["anomalies"] > 0,
        "with unresolved": df["unresolved"] > 0,
        "with overrides": df["overridden"] > 0,
        "not run yet": df.status != "done",
    }[filter_by]
    df = df[keep].sort_values(sort_by, ascending=not descending, kind="stable", na_position="last")
    return df.reset_index(drop=True)


def metadata_preview(export_dir: str | Path, rows: int = 50) -> pd.DataFrame:
    """The first ``rows`` lines of an export's provenance.csv (the rows of its metadata.parquet)."""
    return pd.read_csv(Path(export_dir) / "provenance.csv", dtype={"class_name": str}).head(rows)


def run_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of every run folder under ``runs_dir``, newest first, for the reopen dropdown."""
    out = []
    for p in sorted(runs_dir.glob("*/run.sqlite"), key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            store = RunStore.open(p.parent)
            try:
                cfg = store.config
                done = sum(r.status == "done" for r in store.classes())
                data = cfg.data if cfg.data == "mnist5k" else Path(cfg.data).name
                out.append(
                    (
                        f"{store.run_id} · {data} · IPC {cfg.ipc} · {done}/{len(store.class_names)} classes",
                        str(p.parent),
                    )
                )
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - a damaged folder must not hide the other runs
            continue
    return out
