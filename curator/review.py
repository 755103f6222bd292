"""What a run yields and what a person decides: class summaries, the curated set, user decisions.

These read and write through the run store's typed records; the engines and the UI call them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curator.errors import StoreError
from curator.store import Decision, ImageRecord, RunStore

# What became of an anomaly, and whether a person reviewed it (every state but "auto" and
# "unresolved" is a person's). The UI, the overview and the CLI all read these names.
DECISION_STATES = ("auto", "accepted", "overridden", "kept original", "dropped", "unresolved")
REVIEWED_STATES = ("accepted", "overridden", "kept original", "dropped")


def decision_state(decision: Decision | None, pick: int | None) -> str:
    """One of ``DECISION_STATES`` for an anomaly's stored decision and stored automatic pick."""
    if decision is None or decision.choice == "unresolved":
        return "unresolved"
    if decision.source != "user":
        return "auto" if decision.choice == "candidate" else "unresolved"
    if decision.choice == "candidate":
        return "accepted" if decision.candidate_id == pick else "overridden"
    return "kept original" if decision.choice == "original" else "dropped"


@dataclass(frozen=True)
class QueueItem:
    """One anomaly in the review queue (every anomaly of the run, class by class, prototype order)."""

    anomaly_id: int
    label: int
    state: str  # one of DECISION_STATES

    @property
    def reviewed(self) -> bool:
        return self.state in REVIEWED_STATES


def review_queue(store: RunStore) -> list[QueueItem]:
    """Every anomaly of the run in review order, with its decision state."""
    decisions, picks = store.decisions(), store.auto_picks()
    return [QueueItem(i, lab, decision_state(decisions.get(i), picks.get(i))) for i, lab in store.anomaly_labels()]


@dataclass(frozen=True)
class ClassSummary:
    label: int
    name: str
    images: int
    label_mismatch: int
    low_confidence: int
    resolved_auto: int  # anomalies whose automatic pick stands, not reviewed by a person
    accepted: int  # a person accepted the automatic pick
    overridden: int  # a person chose another candidate, kept the original or dropped it
    unresolved: int
    confidence_before: float
    confidence_after: float
    wall_seconds: float | None
    status: str
    kept_original: int = 0  # of ``overridden``: a person kept the original
    dropped: int = 0  # of ``overridden``: a person dropped the image

    @property
    def anomalies(self) -> int:
        return self.label_mismatch + self.low_confidence

    @property
    def other_candidate(self) -> int:
        """Of ``overridden``: a person chose a candidate other than the automatic pick."""
        return self.overridden - self.kept_original - self.dropped


@dataclass(frozen=True)
class Curated:
    """One image of the curated set: the record, original or refined, and who decided (auto/user)."""

    image: ImageRecord
    source: str  # original | refined
    decision: str  # auto | user


def final_set(store: RunStore, label: int) -> list[Curated]:
    """The curated images of a class: passed originals, picked candidates, originals kept by a person.

    Unresolved and dropped anomalies are left out.
    """
    decisions = store.decisions()
    out = []
    for r in store.synthetic(label):
        if r.reason is None:
            out.append(Curated(r, "original", "auto"))
            continue
        d = decisions.get(r.id)
        if d is None or d.choice in ("unresolved", "drop"):
            continue
        if d.choice == "original":
            out.append(Curated(r, "original", d.source))
        else:
            out.append(Curated(store.image(d.candidate_id), "refined", d.source))
    return out


def summarize(store: RunStore, labels: list[int] | None = None) -> list[ClassSummary]:
    names = store.class_names
    classes = {c.label: c for c in store.classes()}
    decisions, picks = store.decisions(), store.auto_picks()
    out = []
    for label in labels if labels is not None else range(len(names)):
        synth = store.synthetic(label)
        anomalies = [r for r in synth if r.reason is not None]
        states = [decision_state(decisions.get(a.id), picks.get(a.id)) for a in anomalies]
        final = final_set(store, label)
        out.append(
            ClassSummary(
                label=label,
                name=names[label],
                images=len(synth),
                label_mismatch=sum(a.reason == "label_mismatch" for a in anomalies),
                low_confidence=sum(a.reason == "low_confidence" for a in anomalies),
                resolved_auto=states.count("auto"),
                accepted=states.count("accepted"),
                overridden=sum(s in REVIEWED_STATES and s != "accepted" for s in states),
                unresolved=states.count("unresolved"),
                kept_original=states.count("kept original"),
                dropped=states.count("dropped"),
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
