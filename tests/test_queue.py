"""The review queue (issue 18): doubt order, filters, and bulk accept recorded as one undoable step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curator.config import RunConfig
from curator.doubt import doubt, runner_up_margin
from curator.engine import LocalEngine
from curator.review import (
    DECISION_STATES,
    TO_REVIEW,
    bulk_accept,
    bulk_targets,
    decision_state,
    review_queue,
    user_decide,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist, tiny_generator, tiny_detector):
    """A finished tiny run. The random detector predicts class 4 for every image, so the anomalies of
    3 and 5 are label mismatches left unresolved, and those of 4 low-confidence ones with picks."""
    cfg = RunConfig(ipc=4, k=4, steps=2, strength=0.6, tau=0.5, classes=["3", "4", "5"], batch_size=16, real_sample=5)
    root = tmp_path_factory.mktemp("queue")
    engine = LocalEngine.create(cfg, str(root / "runs"), data=mnist, generator=tiny_generator, detector=tiny_detector)
    engine.run()
    yield engine.store
    engine.close()


def test_doubt_order_is_unresolved_then_close_calls_then_the_rest(run):
    queue = review_queue(run, order="doubt")
    by_class = review_queue(run)
    assert sorted(q.anomaly_id for q in queue) == sorted(q.anomaly_id for q in by_class)
    assert [q.anomaly_id for q in by_class] == [a.id for a in run.anomalies()]  # class by class, prototype order
    kinds = [q.kind for q in queue]
    rank = {"unresolved": 0, "close call": 1, "clear": 2}
    assert [rank[k] for k in kinds] == sorted(rank[k] for k in kinds)
    assert all(a.doubt >= b.doubt for a, b in zip(queue, queue[1:]))
    assert "unresolved" in kinds and len(set(kinds)) >= 2, kinds  # the fixture shows the order
    for q in queue:  # unresolved in the queue = no stored pick
        assert (q.kind == "unresolved") == (run.auto_pick(q.anomaly_id) is None)


def test_doubt_of_an_anomaly_matches_its_candidates_as_stored(run):
    """The queue's doubt is ``curator.doubt`` over the stored candidates and stored pick."""
    tau = run.config.tau
    picked = [q for q in review_queue(run) if q.kind != "unresolved"]
    assert picked
    for q in picked[:5]:
        cands = run.candidates(q.anomaly_id)
        pick = run.auto_pick(q.anomaly_id)
        conf = np.array([c.confidence for c in cands])
        consistent = np.array([c.predicted == q.label for c in cands])
        passing = consistent & (conf >= tau)
        k = [c.id for c in cands].index(pick)
        margin = runner_up_margin(np.array([c.score for c in cands]), passing if passing.any() else consistent, k)
        want, close = doubt(np.array([False]), np.array([margin]), conf[[k]], tau)
        assert q.doubt == pytest.approx(want[0]) and q.close_call == close[0]
        assert q.confidence == pytest.approx(conf[k])
        assert (math.isnan(q.margin) and math.isnan(margin)) or q.margin == pytest.approx(margin)


def test_filters_by_reason_state_and_class(run):
    everything = review_queue(run, order="doubt")
    for reason in ("label_mismatch", "low_confidence"):
        got = review_queue(run, order="doubt", reason=reason)
        assert got and [q.anomaly_id for q in got] == [q.anomaly_id for q in everything if q.reason == reason]
    one = review_queue(run, label=4)
    assert one and {q.label for q in one} == {4}
    first = next(q for q in everything if q.state == "auto")
    user_decide(run, first.anomaly_id, "drop")
    try:
        dropped = review_queue(run, state="dropped")
        assert [q.anomaly_id for q in dropped] == [first.anomaly_id]
        assert first.anomaly_id not in {q.anomaly_id for q in review_queue(run, state=TO_REVIEW)}
        assert all(q.state in DECISION_STATES for q in everything)
    finally:
        run.undo_last()
    with pytest.raises(ValueError, match="reason"):
        review_queue(run, reason="blurry")
    with pytest.raises(ValueError, match="state"):
        review_queue(run, state="maybe")


def test_bulk_accept_is_one_step_never_overwrites_a_person_and_undoes_as_one(run):
    autos = [q for q in review_queue(run) if q.state == "auto"]
    assert len(autos) >= 3
    person = autos[0]
    user_decide(run, person.anomaly_id, "drop")  # a person's decision the bulk must keep
    queue = review_queue(run)
    targets = bulk_targets(queue, min_confidence=0.0, min_margin=0.0)
    assert person.anomaly_id not in {q.anomaly_id for q in targets}
    # the thresholds filter: a confidence above every pick's takes none
    assert bulk_targets(queue, min_confidence=1.01, min_margin=0.0) == []
    stale = [q for q in queue if q.anomaly_id == person.anomaly_id]  # an item read before the person decided
    before = run.decisions()
    n = bulk_accept(run, targets + stale)
    assert n == len(targets) == len(autos) - 1
    after = review_queue(run)
    states = {q.anomaly_id: q.state for q in after}
    assert states[person.anomaly_id] == "dropped"
    assert all(states[q.anomaly_id] == "accepted" for q in targets)
    assert all(decision_state(run.decision(q.anomaly_id), run.auto_pick(q.anomaly_id)) == "accepted" for q in targets)
    undone = run.undo_last()
    assert undone.count == n
    assert run.decisions() == before  # every bulk decision back to the automatic pick, the person's kept
    assert run.undo_last().count == 1 and run.decision(person.anomaly_id).source == "auto"
    assert run.check() == []


# --- the app's handlers (the same tiny set-up as tests/test_app_callbacks.py) ----------------------
from test_app_callbacks import P, assets, cb, started  # noqa: E402, F401  (fixtures and helpers)

from curator.store import RunStore  # noqa: E402


def test_the_app_steps_the_doubt_queue_and_bulk_accepts_in_one_undoable_step(cb, assets):  # noqa: F811
    state = started(cb, assets)
    assert list(cb.run_all(state, 0, None, progress=None))[-1][0].startswith("✔ all 2 classes done")
    out = cb.set_queue_view(state, 0, None, "doubt", "any", "any", False)
    state = out[0]
    assert state["queue"]["order"] == "doubt"
    store = RunStore.open(state["run"])
    try:
        want = [q.anomaly_id for q in review_queue(store, order="doubt")]
        panel = cb.step_anomaly(state, 0, None, 1)  # N from nothing in view: the top of the doubt queue
        seen = []
        for _ in want:
            seen.append(panel[P["aid"]])
            assert panel[P["queue"]].startswith(f"{len(seen)} of {len(want)} · ") and "by doubt" in panel[P["queue"]]
            assert "**Doubt " in panel[P["text"]]
            panel = cb.step_anomaly(state, panel[P["picker"]]["value"], panel[P["aid"]], 1)
        assert seen == want
        # a filter: only label mismatches; N stays inside it
        state = cb.set_queue_view(state, 0, want[0], "doubt", "label_mismatch", "any", False)[0]
        mism = [q.anomaly_id for q in review_queue(store, order="doubt", reason="label_mismatch")]
        if mism:
            assert cb.step_anomaly(state, 0, None, 1)[P["aid"]] == mism[0]
        state = cb.set_queue_view(state, 0, want[0], "doubt", "any", "any", False)[0]

        autos = [q for q in review_queue(store, order="doubt") if q.state == "auto"]
        assert len(autos) >= 2, "the tiny run needs automatic picks to accept"
        cb.decide(state, autos[0].label, autos[0].anomaly_id, None, "drop")  # a person's decision
        msg, confirm, cancel, pending = cb.bulk_preview(state, 0, 0.0, 0.0)
        assert msg.startswith("⚠ Accept ") and confirm["visible"] and cancel["visible"]
        n = len(pending["ids"])
        assert n == len(autos) - 1 and f"Accept {n} automatic pick" in msg
        assert store.decision(autos[1].anomaly_id).source == "auto"  # nothing changed before the confirmation
        done = cb.bulk_confirm(state, 0, autos[1].anomaly_id, pending)
        assert f"{n} automatic pick" in done[P["msg"]] and "one step" in done[P["msg"]]
        assert done[-1] is None and not done[-3]["visible"]  # nothing pending, Confirm hidden
        assert store.decision(autos[0].anomaly_id).choice == "drop"  # the person's decision stands
        assert all(store.decision(q.anomaly_id).source == "user" for q in autos[1:])
        undone = cb.undo(state, 0, autos[1].anomaly_id)
        assert f"{n} decisions taken back" in undone[P["msg"]]
        assert all(store.decision(q.anomaly_id).source == "auto" for q in autos[1:])
        assert store.decision(autos[0].anomaly_id).choice == "drop"
        assert cb.bulk_preview(state, 0, 1.5, 0.0)[0].startswith("⚠ minimum confidence must be in [0, 1]")
        assert cb.bulk_confirm(state, 0, None, None)[0].startswith("⚠ nothing to confirm")
    finally:
        store.close()


def test_the_overview_pages_its_rows_and_clamps_the_page():
    import pandas as pd

    from curator.ui.views import UIError, page_of

    df = pd.DataFrame({"label": range(120)})
    rows, page, pages = page_of(df, 2, size=50)
    assert (page, pages) == (2, 3) and list(rows["label"]) == list(range(50, 100))
    rows, page, _ = page_of(df, 9, size=50)  # past the end: the last page
    assert page == 3 and list(rows["label"]) == list(range(100, 120))
    assert page_of(df, 0, size=50)[1] == 1 and page_of(df.iloc[:0], 1)[2] == 1
    with pytest.raises(UIError, match="page must be a number"):
        page_of(df, "two")
