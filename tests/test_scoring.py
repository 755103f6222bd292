import numpy as np
import pytest

from curator.scoring import (
    GLOBAL_CENTRE,
    LABEL_MISMATCH,
    LOW_CONFIDENCE,
    anomaly_reasons,
    normalize_features,
    score_candidates,
    select_greedy,
    uniqueness,
)
from curator.stages import Candidates, feature_centres, select_class


def test_anomaly_rule_at_the_threshold_boundary():
    probs = np.array([[0.9, 0.1], [0.8999, 0.1001], [0.3, 0.7], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1])
    assert anomaly_reasons(probs, labels, tau=0.9) == [None, LOW_CONFIDENCE, LABEL_MISMATCH, LABEL_MISMATCH]


def test_mismatch_wins_over_low_confidence_and_tau_zero_flags_only_mismatches():
    probs = np.array([[0.4, 0.35, 0.25], [0.2, 0.5, 0.3]])
    assert anomaly_reasons(probs, np.array([0, 0]), tau=0.0) == [None, LABEL_MISMATCH]
    assert anomaly_reasons(probs, np.array([0, 0]), tau=0.95) == [LOW_CONFIDENCE, LABEL_MISMATCH]


def test_uniqueness_hand_computed():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = normalize_features(np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, -1.0]]))
    u = uniqueness(c, q)
    np.testing.assert_allclose(u, [0.0, 1 - np.sqrt(0.5), 1.0], atol=1e-6)
    np.testing.assert_array_equal(uniqueness(c, None), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(uniqueness(c, np.zeros((0, 2))), [1.0, 1.0, 1.0])
    assert ((u >= 0) & (u <= 1)).all()


def test_centering_makes_positive_features_discriminative():
    rng = np.random.default_rng(0)
    feats = np.abs(rng.normal(size=(50, 32))) + 2.0  # all positive, like post-ReLU features
    raw = uniqueness(normalize_features(feats[:10]), normalize_features(feats[10:]))
    centred = uniqueness(normalize_features(feats[:10], feats.mean(0)), normalize_features(feats[10:], feats.mean(0)))
    assert np.ptp(raw) < 0.05
    assert np.ptp(centred) > 5 * np.ptp(raw)


def test_confident_near_duplicate_loses_to_less_confident_unique_at_lambda_one():
    qualified = normalize_features(np.array([[1.0, 0.0, 0.0]]))
    feats = normalize_features(np.array([[1.0, 0.01, 0.0], [0.0, 0.0, 1.0]]))  # a near-twin, a unique one
    conf, pred = np.array([0.99, 0.90]), np.array([2, 2])
    assert score_candidates(conf, pred, feats, 2, qualified, lam=1.0).pick == 1
    assert score_candidates(conf, pred, feats, 2, qualified, lam=0.0).pick == 0


def test_mismatched_candidate_never_wins():
    feats = normalize_features(np.eye(3))
    sel = score_candidates(np.array([0.05, 0.6, 0.4]), np.array([1, 0, 1]), feats, 1, None, lam=10.0)
    assert sel.pick == 2  # candidate 1 has the highest score but is predicted as class 0
    assert sel.score[1] > sel.score[2]
    assert not sel.consistent[1]


def test_no_consistent_candidate_is_unresolved():
    sel = score_candidates(np.array([0.2, 0.3]), np.array([0, 0]), normalize_features(np.eye(2)), 1, None, lam=0.5)
    assert sel.pick is None


def test_greedy_order_makes_two_anomalies_of_one_class_pick_different_candidates():
    # Two anomalies of class 0 whose candidate sets contain the same best image (feature a).
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    feats = normalize_features(np.stack([a, b]))
    conf, pred = np.array([0.95, 0.90]), np.array([0, 0])
    qualified = {0: normalize_features(np.array([[0.0, 0.0, 1.0]]))}
    sels = select_greedy([0, 0], [conf, conf], [pred, pred], [feats, feats], qualified, lam=1.0)
    assert sels[0].pick == 0 and sels[1].pick == 1
    assert sels[1].uniqueness[0] == pytest.approx(0.0, abs=1e-6)
    # Without the greedy update both would pick the same candidate.
    independent = [score_candidates(conf, pred, feats, 0, qualified[0], 1.0).pick for _ in range(2)]
    assert independent == [0, 0]
    assert qualified[0].shape == (1, 3)  # input not modified


def test_greedy_keeps_a_persons_choice_in_the_pool():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    feats = normalize_features(np.stack([a, b]))
    conf, pred = np.array([0.95, 0.90]), np.array([0, 0])
    # the person chose candidate b for anomaly 0; anomaly 1 must then avoid b and pick a
    sels = select_greedy([0, 0], [conf, conf], [pred, pred], [feats, feats], {}, lam=1.0, keep=[feats[[1]], None])
    assert sels[1].pick == 0
    assert sels[1].uniqueness[1] == pytest.approx(0.0, abs=1e-6)


def test_candidates_that_pass_tau_are_preferred_then_consistent_ones_are_the_fallback():
    feats = normalize_features(np.array([[1.0, 0.0], [0.0, 1.0]]))
    qualified = normalize_features(np.array([[1.0, 0.05]]))  # candidate 0 is a near-duplicate
    conf, pred = np.array([0.995, 0.95]), np.array([3, 3])
    # without tau, lambda 1 prefers the unique but less confident candidate 1 ...
    assert score_candidates(conf, pred, feats, 3, qualified, lam=1.0).pick == 1
    # ... which would itself be an anomaly at tau 0.99, so the passing candidate 0 wins
    sel = score_candidates(conf, pred, feats, 3, qualified, lam=1.0, tau=0.99)
    assert sel.pick == 0 and sel.passes.tolist() == [True, False]
    # when no candidate passes tau, the best label-consistent one is still picked
    assert score_candidates(conf, pred, feats, 3, qualified, lam=1.0, tau=0.999).pick == 1
    assert select_greedy([3], [conf], [pred], [feats], {3: qualified}, 1.0, tau=0.99)[0].pick == 0


# --- which centre: the class's own mean real feature, or all classes' mean -----------------------
# Two classes far apart along x; within class 0 the images differ only along y. Real features:
#   class 0: (20, 2), (20, -2)  -> class mean c0 = (20, 0)
#   class 1: ( 0, 3), ( 0, -3)  -> class mean c1 = ( 0, 0)
#   all four                    -> global mean g  = (10, 0)
REAL = {0: np.array([[20.0, 2.0], [20.0, -2.0]]), 1: np.array([[0.0, 3.0], [0.0, -3.0]])}
C0 = REAL[0].mean(0)
G = np.concatenate(list(REAL.values())).mean(0)
A, B = np.array([[20.0, 1.0]]), np.array([[20.0, -1.0]])  # two class-0 images, 2 apart along y


def test_the_product_computes_the_class_and_global_centres_hand_computed_here():
    centres = feature_centres({label: (np.arange(len(f)), f) for label, f in REAL.items()})
    np.testing.assert_array_equal(centres[0], [20.0, 0.0])
    np.testing.assert_array_equal(centres[1], [0.0, 0.0])
    np.testing.assert_array_equal(centres[GLOBAL_CENTRE], [10.0, 0.0])
    # the global centre is the mean over every real image, not the mean of the class means: with a
    # third image in class 0, (20, 0), it is (60 / 5, 0) = (12, 0), where the class means give (10, 0)
    uneven = {0: np.array([[20.0, 2.0], [20.0, -2.0], [20.0, 0.0]]), 1: REAL[1]}
    centres = feature_centres({label: (np.arange(len(f)), f) for label, f in uneven.items()})
    np.testing.assert_allclose(centres[GLOBAL_CENTRE], [12.0, 0.0])


def test_global_centre_leaves_two_images_of_one_class_at_uniqueness_near_zero():
    # A - g = (10, 1), B - g = (10, -1): cos = (100 - 1) / (sqrt(101) * sqrt(101)) = 99/101 = 0.98020,
    # so uniqueness = 1 - 99/101 = 2/101 = 0.0198: the class's shared direction (+x) dominates.
    u = uniqueness(normalize_features(B, G), normalize_features(A, G))
    np.testing.assert_allclose(u, [2 / 101], atol=1e-6)
    assert u[0] < 0.02


def test_class_centre_separates_them():
    # A - c0 = (0, 1), B - c0 = (0, -1): cos = -1, uniqueness = 1 - max(0, -1) = 1.
    u = uniqueness(normalize_features(B, C0), normalize_features(A, C0))
    np.testing.assert_allclose(u, [1.0], atol=1e-6)
    # A true duplicate stays a duplicate under either centre: A against A is 0.
    for centre in (G, C0):
        np.testing.assert_allclose(uniqueness(normalize_features(A, centre), normalize_features(A, centre)), [0.0],
                                   atol=1e-6)  # fmt: skip


def test_class_centre_lets_lambda_prefer_the_different_candidate_over_a_duplicate():
    # Qualified: A. Candidates: a copy of A (confidence 0.99) and B (confidence 0.97); lambda 0.5.
    # Global centre: scores 0.99 + 0.5 * 0 = 0.99 and 0.97 + 0.5 * 2/101 = 0.9799 -> the copy wins.
    # Class centre:  scores 0.99 + 0.5 * 0 = 0.99 and 0.97 + 0.5 * 1     = 1.47   -> B wins.
    cands = np.concatenate([A, B])
    conf, pred = np.array([0.99, 0.97]), np.array([0, 0])
    glob = score_candidates(conf, pred, normalize_features(cands, G), 0, normalize_features(A, G), lam=0.5)
    cls = score_candidates(conf, pred, normalize_features(cands, C0), 0, normalize_features(A, C0), lam=0.5)
    np.testing.assert_allclose(glob.score, [0.99, 0.97 + 0.5 * 2 / 101], atol=1e-6)
    np.testing.assert_allclose(cls.score, [0.99, 1.47], atol=1e-6)
    assert glob.pick == 0 and cls.pick == 1


def test_selection_centres_on_the_centre_it_is_given():
    """``stages.select_class``, the product's selection, centres the pool and the candidates on the
    run's centre before uniqueness: the numbers of the two tests above come out of it."""
    cands = Candidates(np.array([0.99, 0.97]), np.array([0, 0]), np.concatenate([A, B]))
    on_global = select_class(0, A, [cands], G, lam=0.5, tau=0.0)[0]
    on_class = select_class(0, A, [cands], C0, lam=0.5, tau=0.0)[0]
    np.testing.assert_allclose(on_global.uniqueness, [0.0, 2 / 101], atol=1e-6)
    np.testing.assert_allclose(on_class.uniqueness, [0.0, 1.0], atol=1e-6)
    assert on_global.pick == 0 and on_class.pick == 1
