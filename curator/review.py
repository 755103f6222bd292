"""What a run yields and what a person decides: class summaries, the curated set, user decisions.

These read and write through the run store's typed records; the engines and the UI call them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

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
    """One anomaly in the review queue (every anomaly of the run, class by class, prototype order)."""

    anomaly_id: int
    label: int
    state: str  # one of DECISION_STATES

    @property
    def reviewed(self) -> bool:
        return is_reviewed(self.state)


def review_queue(store: RunStore) -> list[QueueItem]:
    """Every anomaly of the run in review order, with its decision state."""
    decisions, picks = store.decisions(), store.auto_picks()
    return [QueueItem(i, lab, decision_state(decisions.get(i), picks.get(i))) for i, lab in store.anomaly_labels()]


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


def final_set(store: RunStore, label: int) -> list[Curated]:
    """The curated images of a class: passed originals, picked candidates, originals kept by a person.

    Unresolved and dropped anomalies are left out.
    """
    decisions, picks = store.decisions(), store.auto_picks()
    out = []
    for r in store.synthetic(label):
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
        final = final_set(store, label)
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
