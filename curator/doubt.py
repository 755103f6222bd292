"""Doubt: how much an anomaly needs a person, so the review queue can show the worst first.

One score per anomaly, in [0, 1], **higher = more doubt** (review first), with a boolean flag for
the close calls, in the manner of cleanlab's issue scores. Plain arrays in, plain arrays out; the
UI and the CLI read it from here and never re-derive it.

* **Unresolved** anomalies (no label-consistent candidate, so no automatic pick): doubt 1.
* **Picked** anomalies: ``CLOSE_CAP * max(near_runner_up, near_tau)``, at most 0.9, where each
  nearness is ``exp(-gap / band)`` (1 at a gap of 0, ``1/e`` at a gap of one band):

  - ``near_runner_up``: gap = the pick's selection score minus the best other eligible candidate's
    score (score units, ``confidence + lambda * uniqueness``); 0 when no other candidate was
    eligible, since nothing was close;
  - ``near_tau``: gap = how far the pick's confidence is above ``tau``, as a share of the room
    above it, ``(confidence - tau) / (1 - tau)``; a pick below ``tau`` (chosen among consistent
    candidates because none passed) has gap 0.

  A pick is a **close call** when either gap is below its band, that is when its doubt is above
  ``CLOSE_CAP / e`` (about 0.33); every close call sorts before every pick that is not one.

The bands are what "barely" means: ``MARGIN_BAND`` score units for the runner-up, ``TAU_BAND`` of
the room above ``tau``. They only order the queue; no decision depends on them.
"""

from __future__ import annotations

import math

import numpy as np

MARGIN_BAND = 0.02  # score units: a pick less than this ahead of its runner-up is a close call
TAU_BAND = 0.25  # share of the room above tau: a pick in its lowest quarter is a close call
CLOSE_CAP = 0.9  # the most doubt a picked anomaly can have; unresolved ones have 1
CLOSE_CALL = CLOSE_CAP / math.e  # doubt above this: a close call


def runner_up_margin(score: np.ndarray, eligible: np.ndarray, pick: int | None) -> float:
    """Selection score of the pick minus that of the best other eligible candidate of one anomaly.

    ``score`` [K] and ``eligible`` [K] are the anomaly's candidates as the selection saw them
    (``scoring.Selection.score`` and ``passes`` if any passes, else ``consistent``). NaN when there
    is no pick or no other eligible candidate.
    """
    score = np.asarray(score, dtype=np.float64)
    others = np.asarray(eligible, dtype=bool).copy()
    if pick is None or not 0 <= pick < len(score):
        return float("nan")
    others[pick] = False
    if not others.any():
        return float("nan")
    return float(score[pick] - score[others].max())


def doubt(
    unresolved: np.ndarray,
    margin: np.ndarray,
    confidence: np.ndarray,
    tau: float,
    *,
    margin_band: float = MARGIN_BAND,
    tau_band: float = TAU_BAND,
) -> tuple[np.ndarray, np.ndarray]:
    """Doubt in [0, 1] (higher = review first) and the close-call flag, per anomaly.

    ``unresolved`` [N] bool; ``margin`` [N] the pick's lead over its runner-up
    (:func:`runner_up_margin`; NaN = no runner-up); ``confidence`` [N] the pick's confidence of the
    label; ``tau`` the run's threshold in [0, 1]. Values of unresolved rows other than the flag are
    ignored (they may be NaN).
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if margin_band <= 0 or tau_band <= 0:
        raise ValueError(f"bands must be > 0, got margin_band {margin_band}, tau_band {tau_band}")
    unresolved = np.asarray(unresolved, dtype=bool)
    margin = np.asarray(margin, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    if not (len(unresolved) == len(margin) == len(confidence)):
        raise ValueError(f"need one value per anomaly: {len(unresolved)}, {len(margin)}, {len(confidence)}")
    with np.errstate(invalid="ignore"):
        near_runner_up = np.where(np.isnan(margin), 0.0, np.exp(-np.clip(margin, 0.0, None) / margin_band))
        headroom = np.clip((confidence - tau) / max(1.0 - tau, 1e-12), 0.0, None)
        near_tau = np.exp(-headroom / tau_band)
    near_tau = np.where(np.isnan(near_tau), 1.0, near_tau)  # no confidence known: treat as a close call
    d = np.where(unresolved, 1.0, CLOSE_CAP * np.maximum(near_runner_up, near_tau))
    return d, ~unresolved & (d > CLOSE_CALL)


def doubt_order(doubt_scores: np.ndarray) -> np.ndarray:
    """Indices from most to least doubt; ties keep their given order (e.g. class order)."""
    return np.argsort(-np.asarray(doubt_scores, dtype=np.float64), kind="stable")
