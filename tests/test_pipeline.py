"""The pipeline on tiny random models: stages, store contents, decisions, resume, exact regeneration."""

import numpy as np
import pytest
import torch

from curator import stages
from curator.config import RunConfig
from curator.data import DataError
from curator.engine import Cancelled, LocalEngine
from curator.review import final_set, summarize, user_decide
from curator.store import Decision, RunStore, StoreError, load_png


def make_pipeline(tmp_path, mnist, gen, det, **overrides):
    cfg = dict(ipc=3, k=4, steps=3, strength=0.6, tau=0.9, classes=["0", "1"], batch_size=8, real_sample=5)
    cfg.update(overrides)
    return LocalEngine.create(RunConfig(**cfg), str(tmp_path / "runs"), data=mnist, generator=gen, detector=det)


def test_a_run_stores_every_stage_with_provenance(tmp_path, mnist, tiny_generator, tiny_detector):
    stages = []
    engine = make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector)
    engine.progress = lambda stage, done, total, label: stages.append(stage)
    summaries = engine.run()
    assert [s.status for s in summaries] == ["done", "done"]
    assert {"prototypes", "synthesis", "inspection", "selection"} <= set(stages)
    store = engine.store
    for label in (0, 1):
        synth = store.synthetic(label)
        assert len(synth) == 3 and len(store.prototypes(label)) == 3
        for row in synth:
            assert (store.path / row.file).is_file()
            assert 0 <= row.confidence <= 1
        for a in store.anomalies(label):
            cands = store.candidates(a.id)
            assert len(cands) == 4
            assert {c.prototype_id for c in cands} == {a.prototype_id}
            assert {c.label for c in cands} == {label}
            assert len({c.seed for c in cands}) == 4
            d = store.decision(a.id)
            assert d.source == "auto"
            if d.choice == "candidate":
                picked = store.image(d.candidate_id)
                assert picked.predicted == label  # never a label-inconsistent pick
            else:
                assert d.choice == "unresolved"
                assert all(c.predicted != label for c in cands)
    s = summaries[0]
    assert s.anomalies == len(store.anomalies(0))
    assert s.auto + s.unresolved == s.anomalies


def test_anomalies_follow_tau(tmp_path, mnist, tiny_generator, tiny_detector):
    none = make_pipeline(tmp_path / "a", mnist, tiny_generator, tiny_detector, tau=0.0, k=1)
    everything = make_pipeline(tmp_path / "b", mnist, tiny_generator, tiny_detector, tau=1.0, k=1)
    none.run(), everything.run()
    mismatches = sum(r.predicted != r.label for lab in (0, 1) for r in none.store.synthetic(lab))
    assert len(none.store.anomalies()) == mismatches
    assert len(everything.store.anomalies()) == 6


def test_exact_regeneration_from_stored_seed_and_prototype(tmp_path, mnist, tiny_generator, tiny_detector):
    engine = make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector, tau=1.0)
    engine.run()
    store, cfg = engine.store, engine.config
    for row in [store.synthetic(0)[1], store.candidates(store.anomalies(1)[0].id)[2]]:
        init = store.prototype_latent(row.prototype_id)[None]
        again = tiny_generator.generate(
            init, [row.label], [row.seed], strength=cfg.strength, guidance=cfg.guidance, steps=cfg.steps
        )
        stored = load_png(store.path / row.file)
        assert (again[0] - stored).abs().max() <= 1 / 255 + 1e-6


def test_user_decisions_undo_and_regenerate(tmp_path, mnist, tiny_generator, tiny_detector):
    engine = make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector, tau=1.0)
    engine.run()
    store = engine.store
    a = store.anomalies(0)[0]
    cands = store.candidates(a.id)
    auto = store.decision(a.id)
    user_decide(store, a.id, "candidate", cands[-1].id)
    assert store.decision(a.id).source == "user"
    user_decide(store, a.id, "drop")
    assert a.id not in [f.image.id for f in final_set(store, 0)]
    undone = store.undo_last()
    assert (undone.anomaly_id, undone.label, undone.now.choice) == (a.id, 0, "candidate")
    assert store.undo_last().now == auto  # undoing the first user decision restores the automatic one
    assert store.decision(a.id) == auto
    assert store.undo_last() is None  # nothing left to undo
    with pytest.raises(StoreError, match="not a candidate"):
        user_decide(store, a.id, "candidate", store.synthetic(1)[0].id)
    user_decide(store, a.id, "original")
    round_ = engine.regenerate(a.id)
    assert round_ == 2 and len(store.candidates(a.id)) == 8
    assert store.decision(a.id).choice == "original"  # a person's decision survives rescoring
    s = summarize(store, [0])[0]
    assert (s.kept_original, s.overridden) == (1, 0)  # "overridden" is another candidate only


# --- undo after a regenerate: back to the pipeline's pick as it stands now ----------------------
def regenerate_until_the_pick_moves(engine: LocalEngine, anomaly_id: int) -> tuple[int | None, int | None]:
    """Regenerate (at most 6 rounds) until the stored automatic pick changes; (old pick, new pick)."""
    old = engine.store.auto_pick(anomaly_id)
    for _ in range(6):
        engine.regenerate(anomaly_id)
        if engine.store.auto_pick(anomaly_id) != old:
            break
    new = engine.store.auto_pick(anomaly_id)
    assert new != old, "six rounds never moved the automatic pick: the test cannot tell stale from fresh"
    return old, new


def other_candidate(store: RunStore, anomaly_id: int, *not_these: int | None) -> int:
    return next(c.id for c in store.candidates(anomaly_id) if c.id not in (store.auto_pick(anomaly_id), *not_these))


@pytest.fixture
def selected(tmp_path, mnist, tiny_generator, tiny_detector):
    """A finished two-class run where every image is an anomaly (tau 1.0); its first anomaly with a
    pick (the tiny random detector predicts class 4 for everything, so class 4 has picks)."""
    engine = make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector, tau=1.0, classes=["4", "5"])
    engine.run()
    a = next(a for a in engine.store.anomalies(4) if engine.store.auto_pick(a.id) is not None)
    yield engine, a.id
    engine.close()


def test_undo_after_a_regenerate_restores_the_pick_as_it_stands_now(selected):
    """The issue's reproduction: decide another candidate, regenerate (the stored pick moves), undo."""
    engine, aid = selected
    store = engine.store
    mine = other_candidate(store, aid)
    user_decide(store, aid, "candidate", mine)
    old, new = regenerate_until_the_pick_moves(engine, aid)
    assert store.decision(aid) == Decision(aid, "candidate", mine, "user")  # rescoring keeps a person's choice
    undone = store.undo_last()
    assert undone.now == store.decision(aid) == Decision.automatic(aid, new)  # not the logged #old
    assert store.check() == []


def test_regenerate_then_decide_then_undo(selected):
    engine, aid = selected
    store = engine.store
    _, new = regenerate_until_the_pick_moves(engine, aid)
    user_decide(store, aid, "drop")
    assert store.undo_last().now == store.decision(aid) == Decision.automatic(aid, new)


def test_undo_twice_across_a_regenerate(selected):
    """The first undo brings back the person's earlier choice as logged; the second, the pick as it is now."""
    engine, aid = selected
    store = engine.store
    first = other_candidate(store, aid)
    user_decide(store, aid, "candidate", first)
    user_decide(store, aid, "original")
    _, new = regenerate_until_the_pick_moves(engine, aid)
    assert store.undo_last().now == Decision(aid, "candidate", first, "user")
    assert store.undo_last().now == store.decision(aid) == Decision.automatic(aid, new)
    assert store.undo_last() is None and store.check() == []


def test_a_decision_made_during_selection_waits_and_is_never_overwritten(selected, monkeypatch):
    """A person decides (another connection, as the app does) between selection's read of the
    decisions and its write: the write lock makes the person's write wait, then it stands."""
    engine, aid = selected
    store = engine.store
    mine = other_candidate(store, aid)
    person = RunStore.open(store.path)
    person.db.execute("PRAGMA busy_timeout=0")  # do not wait the 30 s: see at once whether it would
    real, refused = stages.select_class, []

    def select_then_interleave(*args, **kwargs):
        try:
            user_decide(person, aid, "candidate", mine)
        except Exception as exc:  # noqa: BLE001 - which error is the point of the assertion below
            refused.append(exc)
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "select_class", select_then_interleave)
    engine.select(4)
    assert len(refused) == 1 and "locked" in str(refused[0])  # it had to wait for the selection
    user_decide(person, aid, "candidate", mine)  # ... and, once selection committed, it goes through
    monkeypatch.setattr(stages, "select_class", real)
    engine.select(4)  # a later selection keeps it too
    assert store.decision(aid) == Decision(aid, "candidate", mine, "user")
    person.close()


def test_resume_after_cancel_mid_class_keeps_finished_work(tmp_path, mnist, tiny_generator, tiny_detector):
    engine = make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector, tau=1.0)
    engine.run_class(0)
    before = {r.id: (r.file, r.seed, r.confidence) for r in engine.store.synthetic() + engine.store.all_candidates()}
    wall0 = engine.store.classes()[0].wall_seconds
    calls = {"n": 0}

    def cancel_in_refinement() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    engine.cancel = cancel_in_refinement
    with pytest.raises(Cancelled):
        engine.run_class(1)
    assert engine.store.class_status(1) == "running"
    engine.store.close()  # the cancelled job lets go of the run (and its writer lock)
    resumed = LocalEngine(
        RunStore.open(engine.store.path), data=mnist, generator=tiny_generator, detector=tiny_detector
    )
    summaries = resumed.run()
    assert [s.status for s in summaries] == ["done", "done"]
    after = {r.id: (r.file, r.seed, r.confidence) for r in resumed.store.synthetic() + resumed.store.all_candidates()}
    assert all(after[i] == v for i, v in before.items())  # class 0 untouched
    assert resumed.store.classes()[0].wall_seconds == wall0
    assert len(resumed.store.synthetic(1)) == 3


def test_ipc_larger_than_a_class_fails_before_creating_a_run(tmp_path, mnist, tiny_generator, tiny_detector):
    with pytest.raises(DataError, match=r"IPC = 401 is larger than these classes.*'0' \(400 images\)"):
        make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector, ipc=401)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_class_and_mismatched_models_are_clear_errors(tmp_path, mnist, tiny_generator, tiny_detector):
    with pytest.raises(DataError, match="unknown class 'seven'"):
        make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector, classes=["seven"])
    from conftest import make_tiny_detector

    with pytest.raises(DataError, match="detector has 3 classes"):
        make_pipeline(tmp_path, mnist, tiny_generator, make_tiny_detector(["a", "b", "c"]))


def test_feature_centre_is_the_real_sample_mean(tmp_path, mnist, tiny_generator, tiny_detector):
    engine = make_pipeline(tmp_path, mnist, tiny_generator, tiny_detector)
    centre = engine.feature_center()
    labels, idx, feats = engine.store.real_features()
    assert np.bincount(labels).tolist() == [5] * 10
    np.testing.assert_allclose(centre, feats.mean(0), rtol=1e-6)
    direct = tiny_detector.inspect(mnist.train.images[torch.from_numpy(idx[:5])]).features
    np.testing.assert_allclose(direct, feats[:5], rtol=1e-4, atol=1e-5)


class RecordingGenerator:
    """Wraps a generator and records the labels of each ``generate`` call's batches."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, init, labels, seeds, **kw):
        b = kw["batch_size"]
        self.batches += [list(labels[lo : lo + b]) for lo in range(0, len(labels), b)]
        return self.inner.generate(init, labels, seeds, **kw)


def test_run_batches_across_classes_and_matches_one_class_at_a_time(tmp_path, mnist, tiny_generator, tiny_detector):
    rec = RecordingGenerator(tiny_generator)
    together = make_pipeline(tmp_path / "a", mnist, rec, tiny_detector, tau=1.0, ipc=2, k=3, batch_size=4)
    together.run()
    # Synthesis: 2 classes x IPC 2 fill one batch of 4; candidates: 4 anomalies x K 3 = 12 -> 3 full batches.
    assert rec.batches[0] == [0, 0, 1, 1]
    assert [len(b) for b in rec.batches] == [4, 4, 4, 4] and set(rec.batches[1] + rec.batches[2]) == {0, 1}
    alone = make_pipeline(tmp_path / "b", mnist, tiny_generator, tiny_detector, tau=1.0, ipc=2, k=3, batch_size=4)
    alone.run_class(1)
    alone.run_class(0)
    for label in (0, 1):
        a, b = together.store.synthetic(label), alone.store.synthetic(label)
        assert [r.seed for r in a] == [r.seed for r in b]
        for ra, rb in zip(a, b):
            diff = load_png(together.store.path / ra.file) - load_png(alone.store.path / rb.file)
            assert diff.abs().max() <= 1 / 255 + 1e-6
            pa = together.store.candidates(ra.id)
            pb = alone.store.candidates(rb.id)
            assert [c.seed for c in pa] == [c.seed for c in pb]
        assert together.store.class_status(label) == "done" and together.store.classes()[label].wall_seconds > 0
        picks = []
        for store in (together.store, alone.store):
            decisions = [store.decision(a.id) for a in store.anomalies(label)]
            picks.append([store.image(d.candidate_id)["position"] if d.candidate_id else d.choice for d in decisions])
        assert picks[0] == picks[1]


def test_a_run_stored_with_the_dropped_n_train_column_still_opens_and_writes(tmp_path):
    """Stores written before ``classes.n_train`` (never filled) was dropped keep working."""
    store = RunStore.create(tmp_path, RunConfig(classes=["0"]), ["0", "1"], "old")
    store.db.execute("ALTER TABLE classes ADD COLUMN n_train INTEGER")  # the old schema's column
    store.close()
    old = RunStore.open(tmp_path / "old")
    old.set_class_status(0, "running", 1.5)
    assert [(c.label, c.status, c.wall_seconds) for c in old.classes()] == [(0, "running", 1.5), (1, "pending", None)]
    assert [s.images for s in summarize(old)] == [0, 0] and old.check() == []
    old.close()
