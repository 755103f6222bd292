"""What the app shows, built from a run store: pure functions, no gradio, no models.

Images are returned as absolute file paths inside the run folder, which the app serves as
static files (no copy per request). Scores are the detector's: confidence in [0, 1], uniqueness
in [0, 1], score = confidence + lambda * uniqueness; all higher is better. They are the scores the
pipeline stored when it selected (its centre, ``RunConfig.uniqueness_centre``), never recomputed here.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curator.doubt import MARGIN_BAND, TAU_BAND
from curator.review import DECISION_STATES, REVIEWED_STATES, QueueItem, decision_state, review_queue, summarize
from curator.scoring import label_consistent, passes
from curator.store import Decision, RunStore

REASONS = {"label_mismatch": "label mismatch", "low_confidence": "low confidence"}
ANOMALY_COLUMNS = ["anomaly", "prototype", "reason", "predicted", "confidence", "candidates", "state", "chosen"]
CANDIDATE_COLUMNS = ["candidate", "round", "confidence", "uniqueness", "score", "predicted", "mark", "pick"]
OVERVIEW_COLUMNS = [
    "label",
    "class",
    "status",
    "IPC",
    "anomalies",
    "to review",
    "label mismatch",
    "low confidence",
    *DECISION_STATES,  # review's words and counts (ClassSummary.counts), as the CLI summary shows them
    "conf before",
    "conf after",
]
OVERVIEW_FILTERS = ["all classes", "with anomalies", "with unresolved", "with overrides", "not run yet"]
# A candidate's mark, by what the detector said of it; colour in the page is kept for these.
MARKS = {"pass": "✓ passes τ", "below": "below τ", "other": "other class"}


class UIError(ValueError):
    """Bad input from the page (unknown class, image that is not an anomaly, no run open); shown as a message."""


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def decision_text(d: Decision | None, pick: int | None = None) -> str:
    """Short text of an anomaly's decision: its state (``review.decision_state``) and what it keeps."""
    state = decision_state(d, pick)
    if d is not None and d.choice == "candidate" and state != "unresolved":
        return f"#{d.candidate_id} · {state}"
    return state


def candidate_mark(predicted: int, confidence: float, label: int, tau: float) -> str:
    """``pass`` (``scoring.passes``), ``below`` (its class, under tau) or ``other`` (another class)."""
    if not label_consistent(predicted, label):
        return "other"
    return "pass" if passes(confidence, predicted, label, tau) else "below"


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


@dataclass(frozen=True)
class Card:
    """One candidate as its card shows it."""

    id: int
    file: str  # absolute path of the PNG
    confidence: float
    uniqueness: float | None
    score: float | None
    predicted: str | None  # the predicted class's name when it is not the anomaly's class
    mark: str  # a key of MARKS
    pick: bool  # the stored automatic pick
    chosen: bool  # the decision in force keeps this candidate
    round: int = 1  # the round of K candidates it came from (Regenerate adds one)


@dataclass
class AnomalyView:
    """One anomaly beside its prototype and its candidates, with the automatic pick marked."""

    anomaly_id: int
    label: int
    original: str
    prototype: str
    cards: list[Card]
    candidate_ids: list[int]
    table: pd.DataFrame
    pick_id: int | None
    chosen_id: int | None
    state: str  # review.decision_state
    decision: str
    summary_md: str = field(default="")


def doubt_line(item: QueueItem, tau: float) -> str:
    """The panel's line on how much the anomaly needs a person (``curator.doubt``; read, never
    re-derived): its doubt, its group in the doubt order, and what makes a pick a close call."""
    if item.kind == "unresolved":
        return f"\n\n**Doubt {item.doubt:.2f}** · unresolved: no candidate is predicted as the class"
    lead = "no other eligible candidate" if math.isnan(item.margin) else f"{item.margin:.3f} ahead of the runner-up"
    why = ""
    if item.close_call:
        near = [] if math.isnan(item.margin) or item.margin >= MARGIN_BAND else ["barely ahead of the runner-up"]
        near += ["below τ"] if item.confidence < tau else []
        near += ["barely above τ"] if tau <= item.confidence < tau + (1 - tau) * TAU_BAND else []
        why = f" ({', '.join(near)})" if near else ""
    return (f"\n\n**Doubt {item.doubt:.2f}** · {item.kind}{why} · pick {lead}, confidence "
            f"{item.confidence:.3f}")  # fmt: skip


def class_choices(store: RunStore, queue: list[QueueItem] | None = None) -> list[tuple[str, int]]:
    """The class picker: each class with its anomaly and still-to-review counts (or that it has not
    run). ``queue``: the run's ``review_queue`` when the caller has it already."""
    by_label: dict[int, list[QueueItem]] = {}
    for q in review_queue(store) if queue is None else queue:
        by_label.setdefault(q.label, []).append(q)
    out = []
    for c in store.classes():
        items = by_label.get(c.label, [])
        if c.status != "done" and not items:
            text = (
                f"{c.label} · {c.name} — not run yet" if c.status == "pending" else f"{c.label} · {c.name} — {c.status}"
            )
        elif not items:
            text = f"{c.label} · {c.name} — no anomaly"
        else:
            todo = sum(not q.reviewed for q in items)
            text = f"{c.label} · {c.name} — {len(items)} anomal{'y' if len(items) == 1 else 'ies'}, {todo} to review"
        out.append((text, c.label))
    return out


def class_view(store: RunStore, label: int) -> ClassView:
    names = store.class_names
    if not 0 <= label < len(names):
        raise UIError(f"class {label} is not in this run (it has {len(names)} classes)")
    synth = store.synthetic(label)
    counts = store.candidate_counts(label)
    flagged = [r.id for r in synth if r.is_anomaly]
    decisions, picks = store.decisions(flagged), store.auto_picks(flagged)  # this class's rows only
    gallery, ids, rows, anomaly_ids = [], [], [], []
    for r in synth:
        path = str(store.path / r.file)
        if not r.is_anomaly:
            caption = f"#{r.id} ✓"
        else:
            d, pick = decisions.get(r.id), picks.get(r.id)
            caption = f"#{r.id} ⚠"
            anomaly_ids.append(r.id)
            rows.append(
                {
                    "anomaly": r.id,
                    "prototype": store.prototype(r.prototype_id).idx,
                    "reason": REASONS[r.reason],
                    "predicted": names[r.predicted],
                    "confidence": _f(r.confidence, 4),
                    "candidates": counts.get(r.id, 0),
                    "state": decision_state(d, pick),
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
    if not a.is_anomaly:
        raise UIError(f"image #{anomaly_id} is not an anomaly of this run")
    names = store.class_names
    label, tau = a.label, store.config.tau
    cands = store.candidates(a.id)
    d = store.decision(a.id)
    pick = store.auto_pick(a.id)  # the pipeline's own pick, as stored: never worked out again here
    chosen = d.candidate_id if d is not None and d.choice == "candidate" else None
    cards, rows = [], []
    for c in cands:
        mark = candidate_mark(c.predicted, c.confidence, label, tau)
        cards.append(
            Card(
                id=c.id,
                file=str(store.path / c.file),
                confidence=float(c.confidence),
                uniqueness=None if c.uniqueness is None else float(c.uniqueness),
                score=None if c.score is None else float(c.score),
                predicted=None if c.predicted == label else names[c.predicted],
                mark=mark,
                pick=c.id == pick,
                chosen=c.id == chosen,
                round=int(c.round),
            )
        )
        rows.append(
            {
                "candidate": c.id,
                "round": c.round,
                "confidence": _f(c.confidence, 4),
                "uniqueness": _f(c.uniqueness, 4),
                "score": _f(c.score, 4),
                "predicted": names[c.predicted],
                "mark": MARKS[mark],
                "pick": "★" if c.id == pick else "",
            }
        )
    proto = store.prototype(a.prototype_id)
    state = decision_state(d, pick)
    pick_text = f"★ #{pick}" if pick else f"none (no candidate is predicted as {names[label]})"
    passing = sum(c.mark == "pass" for c in cards)
    kept = next((c for c in cards if c.chosen), None)
    off_class = (
        f" (the detector predicts **{kept.predicted}** for it: kept though it is assigned to another class)"
        if kept is not None and kept.mark == "other"
        else ""
    )
    rounds = len({c.round for c in cards})
    summary = (
        f"**Anomaly #{a.id}** · class **{names[label]}** · prototype {proto.idx}  \n"
        f"{REASONS[a.reason]}: predicted **{names[a.predicted]}**, confidence {_f(a.confidence)}  \n"
        f"{len(cards)} candidates{f' in {rounds} rounds' if rounds > 1 else ''}, {passing} pass τ = {tau} · "
        f"automatic pick: **{pick_text}**  \n"
        f"Decision: **{decision_text(d, pick)}**{off_class}"
    )
    return AnomalyView(
        anomaly_id=a.id,
        label=label,
        original=str(store.path / a.file),
        prototype=str(store.path / proto.preview),
        cards=cards,
        candidate_ids=[c.id for c in cands],
        table=pd.DataFrame(rows, columns=CANDIDATE_COLUMNS),
        pick_id=pick,
        chosen_id=chosen,
        state=state,
        decision=decision_text(d, pick),
        summary_md=summary,
    )


def cards_html(cards: list[Card], url: Callable[[str], str], selected: int | None = None, uniq_centre: str = "") -> str:
    """The candidate grid: one card per candidate with its scores and marks, readable without hovering.

    ``url`` maps an image file to the URL the page loads it from. Text is escaped (class names are data).
    """
    if not cards:
        return '<div class="cards-empty">No candidates yet.</div>'
    rounds = sorted({c.round for c in cards})
    if len(rounds) == 1:
        return _card_grid(cards, url, selected)
    # several rounds (Regenerate): one foldable section each, newest first and open; an earlier round
    # starts folded unless it holds the selected card. Its summary says what is in it.
    out = []
    for r in reversed(rounds):
        group = [c for c in cards if c.round == r]
        marks = ("★ pick" if any(c.pick for c in group) else "") + (" ✔ kept" if any(c.chosen for c in group) else "")
        is_open = r == rounds[-1] or any(c.id == selected for c in group)
        passing = sum(c.mark == "pass" for c in group)
        out.append(
            f'<details class="round" data-round="{r}"{" open" if is_open else ""}><summary>Round {r} · '
            f"{len(group)} candidates, {passing} pass τ {html.escape(marks)}</summary>"
            f"{_card_grid(group, url, selected)}</details>"
        )
    return "".join(out)


def _card_grid(cards: list[Card], url: Callable[[str], str], selected: int | None) -> str:
    out = ['<div class="cards" role="listbox" aria-label="candidates">']
    for c in cards:
        classes = (
            ["card", f"mark-{c.mark}"] + ["pick"] * c.pick + ["chosen"] * c.chosen + ["selected"] * (c.id == selected)
        )
        badge = MARKS[c.mark] if c.mark != "other" else f"other: {c.predicted}"
        flags = ("<b class='star' title='automatic pick'>★</b>" if c.pick else "") + (
            "<b class='tick' title='the decision keeps this candidate'>✔</b>" if c.chosen else ""
        )
        out.append(
            f'<div class="{" ".join(classes)}" data-cid="{c.id}" tabindex="0" role="option" '
            f'aria-selected="{str(c.id == selected).lower()}">'
            f'<img src="{html.escape(url(c.file))}" alt="candidate #{c.id}" loading="lazy">'
            f'<div class="card-head"><span>#{c.id}</span>{flags}</div>'
            f'<div class="card-nums">conf <b>{_f(c.confidence)}</b><br>uniq <b>{_f(c.uniqueness, 2)}</b><br>'
            f"score <b>{_f(c.score, 2)}</b></div>"
            f'<div class="badge">{html.escape(badge)}</div></div>'
        )
    out.append("</div>")
    return "".join(out)


OVERVIEW_PAGE = 50  # classes per page of the overview (a 1,000-class run is 20 pages)


def page_of(df: pd.DataFrame, page, size: int = OVERVIEW_PAGE) -> tuple[pd.DataFrame, int, int]:
    """Rows of page ``page`` (1-based, clamped to the pages there are), that page and the page count."""
    pages = max(1, -(-len(df) // size))
    try:
        page = min(max(1, int(float(page))), pages)
    except (TypeError, ValueError):
        raise UIError(f"page must be a number from 1 to {pages}, got {page!r}") from None
    return df.iloc[(page - 1) * size : page * size], page, pages


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
                "to review": s.to_review,
                "label mismatch": s.label_mismatch,
                "low confidence": s.low_confidence,
                **s.counts,
                "conf before": "–" if s.images == 0 else _f(s.confidence_before),
                "conf after": "–" if s.images == 0 else _f(s.confidence_after),
            }
        )
    df = pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)
    keep = {
        "all classes": df.label >= 0,
        "with anomalies": df["anomalies"] > 0,
        "with unresolved": df["unresolved"] > 0,
        "with overrides": df[[c for c in REVIEWED_STATES if c != "accepted"]].sum(axis=1) > 0,
        "not run yet": df.status != "done",
    }[filter_by]
    df = df[keep].sort_values(sort_by, ascending=not descending, kind="stable", na_position="last")
    return df.reset_index(drop=True)


TOTAL = "all classes"  # the class cell of the overview's totals row


def with_totals(df: pd.DataFrame) -> pd.DataFrame:
    """The overview with a last row summing the counts of the rows shown (its label is empty, its class
    ``TOTAL``); the mean confidences are left blank there (a mean of means would mislead)."""
    if df.empty:
        return df
    total = {c: "" for c in df.columns}
    total["class"] = TOTAL
    total["status"] = f"{int((df['status'] == 'done').sum())}/{len(df)} done"
    for c in df.columns:
        if c not in ("label", "class", "status") and pd.api.types.is_integer_dtype(df[c]):
            total[c] = int(df[c].sum())
    out = pd.concat([df.astype({"label": object}), pd.DataFrame([total])], ignore_index=True)
    return out


def metadata_preview(export_dir: str | Path, rows: int = 50) -> pd.DataFrame:
    """The first ``rows`` lines of an export's provenance.csv (the rows of its metadata.parquet)."""
    ids = {"class_name": str, "predicted_class": str, "anomaly_id": "Int64", "candidate_id": "Int64"}
    df = pd.read_csv(Path(export_dir) / "provenance.csv", dtype=ids).head(rows)
    return df.round(4)  # floats as people read them; the files keep full precision


def run_label(store: RunStore) -> str:
    """How a run is listed: dataset, generator, IPC, τ, progress and creation date (UTC), then its id,
    so two runs of one dataset tell apart at a glance."""
    cfg = store.config
    done = sum(r.status == "done" for r in store.classes())
    data = cfg.data if cfg.data == "mnist5k" else Path(cfg.data).name
    created = store.meta("created")
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(created))) if created else "date unknown"
    return (
        f"{data} · {Path(cfg.generator).name} · IPC {cfg.ipc} · τ {cfg.tau} · {done}/{len(store.class_names)} "
        f"classes · {when} · {store.run_id}"
    )


def run_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of every run folder under ``runs_dir``, newest first, for the reopen dropdown."""
    out = []
    for p in sorted(runs_dir.glob("*/run.sqlite"), key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            store = RunStore.open(p.parent)
            try:
                out.append((run_label(store), str(p.parent)))
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - a damaged folder must not hide the other runs
            continue
    return out
