"""What a run yields and what a person decides: class summaries, the curated set, user decisions.

These read and write through the run store's typed records; the engines and the UI call them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from curator.doubt import doubt, doubt_order, runner_up_margin
from curator.errors import StoreError
from curator.store import Decision, ImageRecord, RunStore

# What became of an anomaly: the one vocabulary of decision states. The CLI summary, the app's
# Overview and review panel, the export's ``decision`` column and the README use these words, in
# this order, with these meanings (``STATE_MEANINGS``). Every state but "auto" and "unresolved" is
# a person's (``REVIEWED_STATES``).
DECISION_STATES = ("auto", "accepted", "overridden", "kept original", "dropped", "unresolved")
STATE_MEANINGS = {
    "auto": "the automatic pick (★) stands; no person has reviewed it",
    "accepted": "a person accepted the automatic pick (★)",
    "overridden": "a person chose another candidate than the automatic pick (★)",
    "kept original": "a person kept the flagged original image",
    "dropped": "a person dropped the image from the curated set",
    "unresolved": "no candidate is predicted as the class and no person decided; left out",
}
REVIEWED_STATES = ("accepted", "overridden", "kept original", "dropped")
PASSED = "passed"  # the export's ``decision`` of an image that passed inspection (not an anomaly)


def decision_state(decision: Decision | None, pick: int | None) -> str:
    """One of ``DECISION_STATES`` for an anomaly's stored decision and stored automatic pick."""
    if decision is None or decision.choice == "unresolved":
        return "unresolved"
    if decision.source != "user":
        return "auto" if decision.choice == "candidate" else "unresolved"
    if decision.choice == "candidate":
        return "accepted" if decision.candidate_id == pick else "overridden"
    return "kept original" if decision.choice == "original" else "dropped"


def is_reviewed(state: str) -> bool:
    """A person decided (one of ``REVIEWED_STATES``); "auto" and "unresolved" still await one."""
    return state in REVIEWED_STATES


def state_counts(states: Iterable[str]) -> dict[str, int]:
    """{state: how many} over ``DECISION_STATES``, in that order (zeros included)."""
    counts = Counter(states)
    unknown = set(counts) - set(DECISION_STATES)
    if unknown:
        raise ValueError(f"unknown decision state(s) {sorted(unknown)}; the states are {DECISION_STATES}")
    return {s: counts.get(s, 0) for s in DECISION_STATES}


def kept_image(
    anomaly: ImageRecord, decision: Decision | None, candidate: Callable[[int], ImageRecord]
) -> ImageRecord | None:
    """What an anomaly's decision keeps in the curated set: the chosen candidate (looked up with
    ``candidate``), the original, or nothing (dropped, unresolved, or no decision yet)."""
    if decision is None or decision.choice in ("unresolved", "drop"):
        return None
    return anomaly if decision.choice == "original" else candidate(decision.candidate_id)


@dataclass(frozen=True)
class QueueItem:
    """One anomaly in the review queue, with its decision state and its doubt (``curator.doubt``)."""

    anomaly_id: int
    label: int
    state: str  # one of DECISION_STATES
    reason: str = ""  # label_mismatch | low_confidence
    doubt: float = float("nan")  # in [0, 1], higher = review first
    close_call: bool = False  # a pick barely ahead of its runner-up or barely above tau
    margin: float = float("nan")  # the pick's lead over the best other eligible candidate (NaN: none)
    confidence: float = float("nan")  # the pick's confidence of the label (NaN: no pick)

    @property
    def reviewed(self) -> bool:
        return is_reviewed(self.state)

    @property
    def kind(self) -> str:
        """What the doubt order groups it under: unresolved, close call, or clear."""
        if self.doubt >= 1.0:
            return "unresolved"
        return "close call" if self.close_call else "clear"


QUEUE_ORDERS = ("class", "doubt")  # class by class (prototype order), or most doubt first
REASONS = ("label_mismatch", "low_confidence")
TO_REVIEW = "to review"  # a state filter: "auto" and "unresolved" (no person decided yet)


@dataclass(frozen=True)
class Doubts:
    """Per anomaly (arrays aligned with ``ids``, in ``anomaly_rows`` order): doubt, close-call flag,
    the pick's lead over its runner-up and its confidence."""

    ids: np.ndarray
    doubt: np.ndarray
    close: np.ndarray
    margin: np.ndarray
    confidence: np.ndarray


_DOUBT_CACHE: dict[str, tuple[tuple, Doubts]] = {}


def anomaly_doubts(store: RunStore, rows: list[tuple[int, int, str]] | None = None) -> Doubts:
    """Every anomaly's doubt from its stored candidates and stored automatic pick (``curator.doubt``).

    Two queries; cached per run until the candidates, their scores or the picks change (a decision
    does not change doubt, so a click reads the cache). The eligible candidates are those the
    selection saw: consistent and passing ``tau`` if any passes, else consistent.
    """
    fingerprint = store.scores_fingerprint()
    key = str(store.path.resolve())
    hit = _DOUBT_CACHE.get(key)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    rows = store.anomaly_rows() if rows is None else rows
    tau = store.config.tau
    picks = store.auto_picks()
    by_parent: dict[int, list[tuple]] = {}
    for cid, parent, conf, pred, score in store.candidate_scores():
        by_parent.setdefault(int(parent), []).append((int(cid), conf, pred, score))
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    unresolved = np.zeros(len(rows), bool)
    margin = np.full(len(rows), np.nan)
    confidence = np.full(len(rows), np.nan)
    for i, (aid, label, _reason) in enumerate(rows):
        pick, cands = picks.get(aid), by_parent.get(aid, [])
        cid = [c[0] for c in cands]
        if pick is None or pick not in cid:
            unresolved[i] = True
            continue
        conf = np.array([c[1] for c in cands], dtype=np.float64)
        pred = np.array([c[2] for c in cands])
        score = np.array([np.nan if c[3] is None else c[3] for c in cands], dtype=np.float64)
        passing = (pred == label) & (conf >= tau)
        eligible = passing if passing.any() else pred == label
        k = cid.index(pick)
        margin[i] = runner_up_margin(score, eligible, k)
        confidence[i] = conf[k]
    d, close = doubt(unresolved, margin, confidence, tau)
    out = Doubts(ids, d, close, margin, confidence)
    _DOUBT_CACHE[key] = (fingerprint, out)
    return out


def review_queue(
    store: RunStore,
    order: str = "class",
    reason: str | None = None,
    state: str | None = None,
    label: int | None = None,
) -> list[QueueItem]:
    """The anomalies of the run in review order, with their decision state and doubt, filtered.

    ``order``: "class" (class by class, prototype order) or "doubt" (``doubt_order``: unresolved,
    then close calls, then the rest; ties in class order). Filters (None = all): ``reason`` one of
    ``REASONS``; ``state`` one of ``DECISION_STATES`` or ``TO_REVIEW``; ``label`` a class. A few
    whole-run queries (no per-class work), so it can run on every click.
    """
    if order not in QUEUE_ORDERS:
        raise ValueError(f"unknown queue order {order!r}; use one of {QUEUE_ORDERS}")
    if reason is not None and reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}; use one of {REASONS}")
    if state is not None and state not in (*DECISION_STATES, TO_REVIEW):
        raise ValueError(f"unknown decision state {state!r}; use one of {(*DECISION_STATES, TO_REVIEW)}")
    if label is not None and not isinstance(label, int):
        raise ValueError(f"label must be a class number, got {label!r}")
    rows = store.anomaly_rows()
    decisions, picks = store.decisions(), store.auto_picks()
    dz = anomaly_doubts(store, rows)
    items = [
        QueueItem(aid, lab, decision_state(decisions.get(aid), picks.get(aid)), why, float(dz.doubt[i]),
                  bool(dz.close[i]), float(dz.margin[i]), float(dz.confidence[i]))
        for i, (aid, lab, why) in enumerate(rows)
    ]  # fmt: skip
    if order == "doubt":
        items = [items[i] for i in doubt_order(dz.doubt)]
    return filter_queue(items, reason, state, label)


def filter_queue(
    items: Iterable[QueueItem], reason: str | None = None, state: str | None = None, label: int | None = None
) -> list[QueueItem]:
    """The items that match every filter given (None = any), order kept; see ``review_queue``."""
    return [
        q for q in items
        if (reason is None or q.reason == reason)
        and (label is None or q.label == label)
        and (state is None or (not q.reviewed if state == TO_REVIEW else q.state == state))
    ]  # fmt: skip


def bulk_targets(queue: Iterable[QueueItem], min_confidence: float, min_margin: float) -> list[QueueItem]:
    """The items a bulk accept would decide: automatic picks no person decided (state "auto") whose
    confidence is >= ``min_confidence`` and whose lead over the runner-up is >= ``min_margin``
    (score units; a pick with no eligible runner-up has nothing close and counts as passing)."""
    return [
        q for q in queue
        if q.state == "auto" and q.confidence >= min_confidence
        and (np.isnan(q.margin) or q.margin >= min_margin)
    ]  # fmt: skip


def bulk_accept(store: RunStore, items: Iterable[QueueItem]) -> int:
    """Accept the automatic pick of each item as a person's decision, in ONE transaction logged as
    one batch (``store.undo_last`` takes it all back). An anomaly whose stored decision is not the
    automatic pick's "auto" any more (a person decided since) is left as it is. Returns how many
    were accepted."""
    n = 0
    with store.transaction():
        batch = store.new_batch()
        picks = store.auto_picks()
        decisions = store.decisions()
        for q in items:
            pick = picks.get(q.anomaly_id)
            if pick is None or decision_state(decisions.get(q.anomaly_id), pick) != "auto":
                continue  # never overwrite a person's decision (nor accept a pick that is gone)
            store.decide(Decision(q.anomaly_id, "candidate", pick, "user"), batch=batch)
            n += 1
    return n


@dataclass(frozen=True)
class ClassSummary:
    """One class of a run: its images, its anomalies by reason and by decision state (the counts
    are named as in ``DECISION_STATES``; ``counts`` gives them under those very words)."""

    label: int
    name: str
    images: int
    label_mismatch: int
    low_confidence: int
    auto: int
    accepted: int
    overridden: int  # another candidate than the automatic pick; kept original and dropped are not in it
    kept_original: int
    dropped: int
    unresolved: int
    confidence_before: float
    confidence_after: float
    wall_seconds: float | None
    status: str

    @property
    def anomalies(self) -> int:
        return self.label_mismatch + self.low_confidence

    @property
    def counts(self) -> dict[str, int]:
        """{decision state: anomalies in it}, in ``DECISION_STATES`` order."""
        return dict(zip(DECISION_STATES, (self.auto, self.accepted, self.overridden, self.kept_original,
                                          self.dropped, self.unresolved)))  # fmt: skip

    @property
    def to_review(self) -> int:
        """Anomalies no person has decided yet ("auto" and "unresolved")."""
        return sum(n for s, n in self.counts.items() if not is_reviewed(s))


@dataclass(frozen=True)
class Curated:
    """One image of the curated set: the record, original or refined, and its ``decision``: ``PASSED``
    for an image that passed inspection, else the anomaly's state (``DECISION_STATES``)."""

    image: ImageRecord
    source: str  # original | refined
    decision: str  # passed | auto | accepted | overridden | kept original


def final_set(
    store: RunStore,
    label: int,
    decisions: dict[int, Decision] | None = None,
    picks: dict[int, int | None] | None = None,
) -> list[Curated]:
    """The curated images of a class: passed originals, picked candidates, originals kept by a person.

    Unresolved and dropped anomalies are left out. ``decisions`` / ``picks``: the run's
    (``store.decisions()``, ``store.auto_picks()``) when the caller read them already; else this
    class's own rows are read, so a loop over 1,000 classes never reads the whole run per class.
    """
    synth = store.synthetic(label)
    flagged = [r.id for r in synth if r.is_anomaly]
    decisions = store.decisions(flagged) if decisions is None else decisions
    picks = store.auto_picks(flagged) if picks is None else picks
    out = []
    for r in synth:
        if not r.is_anomaly:
            out.append(Curated(r, "original", PASSED))
            continue
        d = decisions.get(r.id)
        kept = kept_image(r, d, store.image)
        if kept is not None:
            out.append(Curated(kept, "original" if kept is r else "refined", decision_state(d, picks.get(r.id))))
    return out


def summarize(store: RunStore, labels: list[int] | None = None) -> list[ClassSummary]:
    names = store.class_names
    classes = {c.label: c for c in store.classes()}
    decisions, picks = store.decisions(), store.auto_picks()
    out = []
    for label in labels if labels is not None else range(len(names)):
        synth = store.synthetic(label)
        anomalies = [r for r in synth if r.is_anomaly]
        counts = state_counts(decision_state(decisions.get(a.id), picks.get(a.id)) for a in anomalies)
        final = final_set(store, label, decisions, picks)
        out.append(
            ClassSummary(
                label=label,
                name=names[label],
                images=len(synth),
                label_mismatch=sum(a.reason == "label_mismatch" for a in anomalies),
                low_confidence=sum(a.reason == "low_confidence" for a in anomalies),
                **{s.replace(" ", "_"): n for s, n in counts.items()},
                confidence_before=float(np.mean([r.confidence for r in synth])) if synth else float("nan"),
                confidence_after=float(np.mean([f.image.confidence for f in final])) if final else float("nan"),
                wall_seconds=classes[label].wall_seconds,
                status=classes[label].status,
            )
        )
    return out


def user_decide(store: RunStore, anomaly_id: int, choice: str, candidate_id: int | None = None) -> Decision:
    """Record a person's decision: ``candidate`` (with its id), ``original`` or ``drop``."""
    a = store.image(anomaly_id)
    if not a.is_anomaly:
        raise StoreError(f"image {anomaly_id} is not an anomaly of run {store.run_id}")
    if choice == "candidate":
        cand = store.image(candidate_id) if candidate_id is not None else None
        if cand is None or cand.parent_id != anomaly_id:
            raise StoreError(f"image {candidate_id} is not a candidate of anomaly {anomaly_id}")
    elif choice not in ("original", "drop"):
        raise StoreError(f"unknown decision {choice!r}; use candidate, original or drop")
    else:
        candidate_id = None
    d = Decision(anomaly_id, choice, candidate_id, "user")
    store.decide(d)
    return d
