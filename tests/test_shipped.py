"""Behaviour of the shipped models on the built-in data (the product's default run)."""

import numpy as np
import pytest

from curator import stages
from curator.config import RunConfig
from curator.engine import LocalEngine
from curator.quality import label_consistency


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, mnist, shipped_generator, shipped_detector):
    """The default run (all classes, IPC 10, K 20, default parameters) on the shipped models."""
    engine = LocalEngine.create(
        RunConfig(),
        str(tmp_path_factory.mktemp("runs")),
        data=mnist,
        generator=shipped_generator,
        detector=shipped_detector,
    )
    engine.run()
    return engine


def test_shipped_detector_is_at_least_97_percent_accurate(mnist, shipped_detector):
    assert shipped_detector.accuracy(mnist.test.images, mnist.test.labels) >= 0.97


def test_plain_samples_meet_the_quality_bar(shipped_generator, shipped_detector):
    cfg = RunConfig()
    share, per_class, _ = label_consistency(
        shipped_generator, shipped_detector, per_class=10, strength=1.0, guidance=cfg.guidance, steps=cfg.steps
    )
    assert share >= 0.9, f"only {share:.2f} of pure-noise samples match their label; per class {per_class}"


def test_prototype_guided_samples_meet_the_quality_bar(default_run):
    synth = [r for label in range(10) for r in default_run.store.synthetic(label)]
    share = np.mean([r.predicted == r.label for r in synth])
    assert len(synth) == 100 and share >= 0.9


def test_every_anomaly_is_resolved_or_honestly_unresolved(default_run):
    store = default_run.store
    for a in store.anomalies():
        d = store.decision(a.id)
        if d.choice == "candidate":
            assert store.image(d.candidate_id).predicted == a.label
        else:
            assert d.choice == "unresolved"
            assert all(c.predicted != a.label for c in store.candidates(a.id))


def test_lambda_zero_and_one_pick_differently_on_the_default_run(default_run):
    """Candidates do not depend on lambda, so both selections rescore the same stored candidates."""
    store, engine = default_run.store, default_run
    differ = 0
    for label in range(10):
        anomalies = [a for a in store.anomalies(label) if store.candidates(a.id)]
        if not anomalies:
            continue
        args = (
            label,
            stages.stacked_features([r for r in store.synthetic(label) if not r.is_anomaly]),
            [stages.Candidates.of(store.candidates(a.id)) for a in anomalies],
            engine.feature_center(label),
        )
        picks0 = [s.pick for s in stages.select_class(*args, lam=0.0, tau=engine.config.tau)]
        picks1 = [s.pick for s in stages.select_class(*args, lam=1.0, tau=engine.config.tau)]
        differ += sum(p0 != p1 for p0, p1 in zip(picks0, picks1))
    assert len(store.anomalies()) > 0
    assert differ > 0, "lambda had no effect on any pick: uniqueness is not discriminative"
