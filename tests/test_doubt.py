"""The doubt measure: unresolved first, then close calls (near the runner-up or tau), then the rest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curator.doubt import CLOSE_CALL, MARGIN_BAND, TAU_BAND, doubt, doubt_order, runner_up_margin

TAU = 0.9


def test_queue_order_unresolved_then_close_calls_then_the_rest():
    # 0: clear pick; 1: unresolved; 2: barely ahead of its runner-up; 3: barely above tau; 4: clear, no runner-up
    unresolved = np.array([False, True, False, False, False])
    margin = np.array([0.3, np.nan, 0.001, 0.3, np.nan])
    confidence = np.array([0.999, np.nan, 0.999, TAU + 0.001, 0.999])
    d, close = doubt(unresolved, margin, confidence, TAU)
    order = doubt_order(d).tolist()
    assert order[0] == 1
    assert set(order[1:3]) == {2, 3}
    assert set(order[3:]) == {0, 4}
    assert close.tolist() == [False, False, True, True, False]
    assert d[1] == 1.0 and ((0 <= d) & (d <= 1)).all()
    assert (d[[2, 3]] > CLOSE_CALL).all() and (d[[0, 4]] <= CLOSE_CALL).all()


def test_doubt_falls_as_the_lead_and_the_headroom_grow():
    n = 6
    leads = np.linspace(0.0, 3 * MARGIN_BAND, n)  # beyond 3 bands the confidence term (1.0: 4 bands) leads
    d_lead, _ = doubt(np.zeros(n, bool), leads, np.full(n, 1.0), TAU)
    assert (np.diff(d_lead) < 0).all()
    conf = TAU + (1 - TAU) * np.linspace(0.0, 1.0, n)
    d_conf, _ = doubt(np.zeros(n, bool), np.full(n, np.nan), conf, TAU)
    assert (np.diff(d_conf) < 0).all()
    # the close-call line sits at one band of either gap
    just = doubt(np.zeros(2, bool), np.array([0.99, 1.01]) * MARGIN_BAND, np.ones(2), TAU)[1]
    assert just.tolist() == [True, False]
    room = 1 - TAU
    just = doubt(np.zeros(2, bool), np.full(2, np.nan), TAU + room * TAU_BAND * np.array([0.99, 1.01]), TAU)[1]
    assert just.tolist() == [True, False]


def test_a_pick_below_tau_is_a_close_call_and_never_outranks_unresolved():
    d, close = doubt(np.array([False, True]), np.array([1.0, np.nan]), np.array([0.5, np.nan]), TAU)
    assert close.tolist() == [True, False]
    assert d[0] < d[1] == 1.0
    assert math.isclose(d[0], 0.9)


def test_runner_up_margin_compares_eligible_candidates_only():
    score = np.array([1.2, 1.5, 1.45, 1.49])
    eligible = np.array([True, True, True, False])  # 3 is not eligible (e.g. another predicted class)
    assert runner_up_margin(score, eligible, pick=1) == pytest.approx(0.05)
    assert math.isnan(runner_up_margin(score, np.array([False, True, False, False]), pick=1))
    assert math.isnan(runner_up_margin(score, eligible, pick=None))


def test_ties_keep_the_given_order_and_bad_input_is_named():
    assert doubt_order(np.array([0.5, 1.0, 0.5, 1.0])).tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="tau"):
        doubt(np.zeros(1, bool), np.zeros(1), np.ones(1), 1.5)
    with pytest.raises(ValueError, match="one value per anomaly"):
        doubt(np.zeros(2, bool), np.zeros(1), np.ones(2), TAU)
