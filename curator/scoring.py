"""Pure scoring and selection: plain arrays in, plain arrays out.

Every score is in [0, 1] with a stated direction (higher is better for all three):

* ``confidence``: the detector's softmax probability of the intended label;
* ``uniqueness``: ``1 - max(0, max cosine similarity)`` between a candidate's feature and the
  features of its class's already qualified images (1 when none qualify yet, 0 for a duplicate);
* ``score``: ``confidence + lambda * uniqueness`` (in [0, 1 + lambda]), used to rank candidates.

Features are centred before L2-normalisation (``normalize_features``): raw post-ReLU features are
all positive, so their cosines all sit near 1 and uniqueness would barely vary (measured 0.025..0.04
on mnist5k). The run's ``uniqueness_centre`` says on what (``Engine.feature_center`` gives the
centre, ``stages.select_class`` centres on it): "class", the mean real feature of the image's own
class, or "global", the mean over all classes. Candidates are only ever compared with images of
their own class, and those all point roughly the same way from the global mean (the class's own
offset), so global centring still squeezes uniqueness near 0 (median 0.033 over the candidates of a
default run); centred on its class's mean, an image's direction is how it differs from its class,
and uniqueness spreads over [0, 1] (median 0.46 there). Which selects the better set was measured,
not assumed: the default stays "global" (benchmarks/UNIQUENESS.md, and the reasoning in
benchmarks/DEFAULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LABEL_MISMATCH = "label_mismatch"
LOW_CONFIDENCE = "low_confidence"
GLOBAL_CENTRE = -1  # the key of the mean over all classes' real features, beside each class's own


def label_consistent(predicted: np.ndarray, label: int) -> np.ndarray:
    """Which candidates selection may pick: those predicted as the anomaly's label (bool [K])."""
    return np.asarray(predicted) == int(label)


def passes(confidence: np.ndarray, predicted: np.ndarray, label: int, tau: float) -> np.ndarray:
    """Which images pass inspection: predicted as ``label`` with its confidence at least ``tau``
    (bool [N]); a candidate that passes would not be an anomaly itself."""
    return label_consistent(predicted, label) & (np.asarray(confidence) >= tau)


def label_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability of each row's intended label: ``probs[i, labels[i]]``."""
    probs = np.asarray(probs)
    return probs[np.arange(len(probs)), np.asarray(labels, dtype=int)]


def anomaly_reasons(probs: np.ndarray, labels: np.ndarray, tau: float) -> list[str | None]:
    """Per image: ``label_mismatch`` if the predicted class is not the label, else
    ``low_confidence`` if the label's probability is strictly below ``tau``, else None."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=int)
    return [anomaly_reason(c, p, y, tau) for c, p, y in zip(label_confidence(probs, labels), probs.argmax(1), labels)]


def anomaly_reason(confidence: float, predicted: int, label: int, tau: float) -> str | None:
    """One image's ``anomaly_reasons`` from its label's confidence and its predicted class."""
    if predicted != label:
        return LABEL_MISMATCH
    return LOW_CONFIDENCE if confidence < tau else None


def normalize_features(features: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Subtract ``center`` (a mean real feature: the class's or the global one, one vector for all
    rows; callers that mix classes subtract each row's centre first) and scale each row to unit L2 norm."""
    f = np.asarray(features, dtype=np.float32)
    if center is not None:
        f = f - np.asarray(center, dtype=np.float32)
    norms = np.linalg.norm(f, axis=-1, keepdims=True)
    return f / np.maximum(norms, 1e-12)


def uniqueness(candidates: np.ndarray, qualified: np.ndarray | None) -> np.ndarray:
    """``1 - max(0, max cosine)`` of each (normalised) candidate row against the qualified rows."""
    candidates = np.asarray(candidates, dtype=np.float32)
    if qualified is None or len(qualified) == 0:
        return np.ones(len(candidates), dtype=np.float32)
    cos = candidates @ np.asarray(qualified, dtype=np.float32).T
    return (1.0 - np.clip(cos.max(1), 0.0, 1.0)).astype(np.float32)


@dataclass
class Selection:
    """Scores of one anomaly's candidates and the pick (None = unresolved)."""

    pick: int | None
    confidence: np.ndarray
    uniqueness: np.ndarray
    score: np.ndarray
    consistent: np.ndarray  # predicted class == label
    passes: np.ndarray  # consistent and confidence >= tau: the candidate would not be an anomaly itself


def score_candidates(
    confidence: np.ndarray,
    predicted: np.ndarray,
    features: np.ndarray,
    label: int,
    qualified: np.ndarray | None,
    lam: float,
    tau: float = 0.0,
) -> Selection:
    """Score K candidates of one anomaly and pick the best label-consistent one.

    ``confidence`` [K] is each candidate's probability of ``label``, ``predicted`` [K] its
    predicted class; ``features`` [K, D] and ``qualified`` [M, D] are already normalised
    (``normalize_features``). A candidate predicted as another class is never picked; if
    none is consistent, ``pick`` is None (unresolved). Candidates that pass the inspection
    themselves (confidence >= ``tau``) are preferred: a less confident but more unique one may
    not replace an anomaly by another anomaly while a passing candidate exists.
    """
    conf = np.asarray(confidence, dtype=np.float32)
    uniq = uniqueness(features, qualified)
    score = (conf + lam * uniq).astype(np.float32)
    consistent = label_consistent(predicted, label)
    passing = passes(conf, predicted, label, tau)
    eligible = passing if passing.any() else consistent
    pick = int(np.where(eligible, score, -np.inf).argmax()) if eligible.any() else None
    return Selection(pick, conf, uniq, score, consistent, passing)


def select_greedy(
    labels: Sequence[int],
    confidences: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    features: Sequence[np.ndarray],
    qualified: dict[int, np.ndarray],
    lam: float,
    keep: Sequence[np.ndarray | None] | None = None,
    tau: float = 0.0,
) -> list[Selection]:
    """Greedy selection over anomalies in the given order.

    Each pick joins its class's qualified set before the next anomaly is scored, so two
    anomalies of one class do not pick near-twins. ``qualified`` maps a label to normalised
    features [M, D] of the class's images that already passed; it is not modified.
    ``keep[i]``, when not None, is what a person decided for anomaly i: the normalised feature
    rows that join the pool instead of the automatic pick (the chosen candidate or the kept
    original; zero rows for a drop). Scores are still computed for it. ``tau`` is the run's
    anomaly threshold (see ``score_candidates``).
    """
    pool = {k: np.asarray(v, dtype=np.float32) for k, v in qualified.items()}
    out = []
    for i, (label, conf, pred, feats) in enumerate(zip(labels, confidences, predictions, features)):
        label = int(label)
        sel = score_candidates(conf, pred, feats, label, pool.get(label), lam, tau)
        joined = (
            keep[i]
            if keep is not None and keep[i] is not None
            else (np.asarray(feats, dtype=np.float32)[[sel.pick]] if sel.pick is not None else None)
        )
        if joined is not None and len(joined):
            prev = pool.get(label)
            pool[label] = joined if prev is None or len(prev) == 0 else np.concatenate([prev, joined])
        out.append(sel)
    return out
