"""The Evaluate tab's pure functions (curator.evaluation, evalsets.current_digests) and its handlers
(curator.ui.evaluate_tab), without a server: tiny run, 1-3 epochs (seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_evaluation import run_copy, split_folder, tiny_run  # noqa: F401 (fixtures)

from curator.evalsets import build_set, current_digests, review_changed_set
from curator.evaluation import (
    confusion_percent,
    evaluate_run,
    evaluation_table,
    per_class_frame,
    results_for,
    review_gain,
    setup_of,
    setups,
    stored_results,
    student_frame,
    summary_frame,
)
from curator.review import user_decide
from curator.store import evaluations
from curator.ui import AppSettings, jobs, visitors
from curator.ui import evaluate_tab as et
from curator.ui.callbacks import Callbacks


def _drop_one_anomaly(store) -> None:
    anomaly = store.anomalies()[0]
    user_decide(store, anomaly.id, "drop")


# --- pure functions ----------------------------------------------------------------------------
def test_current_digests_match_the_built_sets_and_follow_a_decision(run_copy):  # noqa: F811
    now = current_digests(run_copy)
    assert now == {n: build_set(run_copy, n).digest for n in ("curated", "automatic", "unrefined")}
    _drop_one_anomaly(run_copy)
    after = current_digests(run_copy)
    assert after["curated"] != now["curated"]  # a person's decision changes the curated set ...
    assert (after["automatic"], after["unrefined"]) == (now["automatic"], now["unrefined"])  # ... not these


def test_the_view_shows_the_newest_result_of_the_set_as_it_stands(run_copy):  # noqa: F811
    old = evaluate_run(run_copy, sets=["curated", "automatic"], seeds=1, epochs=1, device="cpu")
    _drop_one_anomaly(run_copy)
    (new,) = evaluate_run(run_copy, sets=["curated"], seeds=[0, 1], epochs=1, device="cpu")
    soft = evaluate_run(run_copy, sets=["automatic"], protocol="soft", seeds=1, epochs=1, device="cpu")
    records, current = evaluations(run_copy), current_digests(run_copy)
    assert setups(records)[0] == setup_of(soft[0])  # newest setup first
    hard = setups(records)[1]
    shown = results_for(records, hard, current)
    assert [r.id for r in shown] == [new.id, old[1].id]  # the curated set as it stands, not its earlier version
    assert [r.id for r in results_for(records, hard, None)] == [new.id, old[1].id]
    # only an earlier version stored: it is shown, with a note saying so
    stale = results_for([old[0]], hard, current)
    frame = summary_frame(stale, current)
    assert stale == [old[0]] and "earlier version" in frame.loc[0, "note"]
    frame = summary_frame(shown, current)
    assert list(frame["top-1 %"]) == [round(100 * r.mean, 1) for r in shown]
    assert list(frame["seeds done"]) == ["2 of 2", "1 of 1"] and list(frame["note"]) == ["", ""]


def test_frames_and_confusion_read_the_stored_numbers(run_copy):  # noqa: F811
    recs = evaluate_run(run_copy, sets=["curated", "random_real"], seeds=2, epochs=2, device="cpu")
    per = per_class_frame(recs)
    assert list(per.columns) == ["set", *recs[0].class_names]
    for row, r in zip(per.itertuples(index=False), recs):
        assert np.allclose(np.asarray(row[1:], float), np.round(100 * r.per_class, 1), equal_nan=True)
    pct = confusion_percent(recs[0])
    assert np.allclose(pct.sum(1), 100) and pct.shape == (3, 3)
    assert np.allclose(np.diag(pct) / 100, recs[0].per_class)
    students = student_frame(recs)
    assert len(students) == 4 and list(students["seed"]) == [0, 1, 0, 1]
    assert list(students["seconds"]) == [round(s.seconds, 1) for r in recs for s in r.students]
    assert "random real" in evaluation_table(recs)  # the CLI's table reads the same records


def test_review_gain_compares_curated_with_automatic(run_copy):  # noqa: F811
    recs = evaluate_run(run_copy, sets=["curated", "automatic"], seeds=1, epochs=1, device="cpu")
    gain = review_gain(recs)
    assert gain.points == pytest.approx(100 * (recs[0].mean - recs[1].mean))
    assert "Curated, with your decisions" in gain.text() and "automatic" in gain.text()
    assert review_gain(recs[:1]) is None  # nothing to compare with
    assert review_changed_set(run_copy) is False  # no person decided: the same images
    assert "the same images: no decision of yours has changed the set yet" in review_gain(recs, False).text()
    _drop_one_anomaly(run_copy)
    assert review_changed_set(run_copy) is True
    assert "the same images" not in review_gain(recs, True).text()


# --- handlers ----------------------------------------------------------------------------------
@pytest.fixture
def ev(run_copy):  # noqa: F811
    return et.EvaluateCallbacks(Callbacks(AppSettings(runs_dir=run_copy.path.parent / "runs")))


@pytest.mark.parametrize(
    "form, expected",
    [
        (dict(sets=[]), "choose at least one set to evaluate"),
        (dict(sets=["curated", "bogus"]), "unknown set(s) bogus"),
        (dict(seeds=0), "seeds must be between 1 and 10, got 0"),
        (dict(seeds="two"), "seeds must be a number, got 'two'"),
        (dict(epochs=-3), "epochs must be between 1 and 5000 (0 for the default), got -3"),
        (dict(protocol="soft", temperature=0), "the temperature must be above 0, got 0"),
        (dict(student="nosuchnet"), "unknown student 'nosuchnet'"),
        (dict(student=" "), "choose a student"),
    ],
)
def test_bad_input_is_one_message_naming_the_thing(ev, run_copy, form, expected):  # noqa: F811
    args = dict(sets=["curated"], protocol="hard", temperature=4, student="convnet", seeds=1, epochs=1) | form
    outs = list(ev.start({"run": str(run_copy.path)}, *args.values()))
    assert len(outs) == 1 and expected in outs[0].message and "Traceback" not in outs[0].message
    assert evaluations(run_copy) == []  # nothing stored


def test_no_run_open_is_a_message_and_an_empty_view(ev):
    (out,) = list(ev.start({"run": None}, ["curated"], "hard", 4, "convnet", 1, 1))
    assert "no run open" in out.message
    empty = ev.show({"run": None})
    assert empty.summary.empty and empty.comparison == et.NO_RUN


def test_start_streams_progress_then_shows_the_stored_result(ev, run_copy, monkeypatch):  # noqa: F811
    monkeypatch.setattr(et, "POLL_SECONDS", 0.01)
    state = {"run": str(run_copy.path)}
    outs = list(ev.start(state, ["curated", "automatic"], "hard", 4, "convnet", 1, 3))
    lines = [o.message for o in outs]
    assert lines[0].startswith("▶ preparing the sets (curated, automatic)")
    assert any(re.match(r"▶ student [12] of 2 · .*, seed 0 · epoch [123] of 3 · \d+ s$", m) for m in lines), lines
    final = outs[-1]
    assert final.message.startswith("✔ done in") and "2 student(s) trained, 2 set(s) evaluated" in final.message
    records = evaluations(run_copy)
    assert list(final.summary["status"]) == ["complete", "complete"]
    assert list(final.summary["top-1 %"]) == [round(100 * r.mean, 1) for r in records]
    assert final.comparison.startswith("**Worth of your review.**")
    shown = ev.show(state)  # a reload or a later visit: the same numbers, from the store
    assert shown.summary.equals(final.summary) and shown.comparison == final.comparison
    assert shown.setup["value"] == "hard labels · ConvNet-3"
    again = list(ev.start(state, ["curated", "automatic"], "hard", 4, "convnet", 1, 3))[-1]
    assert again.message == "✔ nothing to train: every asked seed of the 2 set(s) is stored"
    assert again.summary.equals(final.summary)
    clicked = ev.show_on_click(state, None, "evaluate:1733000000000")  # a person opens the tab
    assert clicked.summary.equals(final.summary)
    other = ev.show_on_click(state, None, "curate:1733000000000")  # another tab: nothing changes
    assert all(isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1 for v in other), other


def test_cancel_keeps_finished_students_and_shows_the_evaluation_as_partial(ev, run_copy, monkeypatch):  # noqa: F811
    state = {"run": str(run_copy.path)}

    def cancel_after_first_student(store, **kw):
        report = kw["progress"]

        def progress(p):
            report(p)
            if p.epoch == p.epochs:  # the first student is done: press Cancel
                assert ev.cancel(state).startswith("⚠ cancelling")

        return evaluate_run(store, **{**kw, "progress": progress})

    monkeypatch.setattr(et, "evaluate_run", cancel_after_first_student)
    monkeypatch.setattr(et, "POLL_SECONDS", 0.01)
    final = list(ev.start(state, ["unrefined"], "hard", 4, "convnet", 2, 1))[-1]
    assert final.message.startswith("⚠ cancelled")
    (rec,) = evaluations(run_copy)
    assert (rec.status, rec.done_seeds) == ("partial", [0])
    assert list(final.summary["status"]) == ["partial"] and list(final.summary["seeds done"]) == ["1 of 2"]
    assert not jobs.cancel_event(str(run_copy.path)).is_set()  # Curate's own flag is untouched


def test_public_mode_shows_a_run_only_to_its_owner(run_copy):  # noqa: F811
    settings = AppSettings(runs_dir=run_copy.path.parent, public=True)
    ev = et.EvaluateCallbacks(Callbacks(settings))
    visitors.claim(run_copy.path, "owner-key")
    evaluate_run(run_copy, sets=["curated"], seeds=1, epochs=1, device="cpu")
    stranger = {"run": str(run_copy.path), "key": "someone-else"}
    (out,) = list(ev.start(stranger, ["curated"], "hard", 4, "convnet", 1, 1))
    assert "not found" in out.message
    assert "not found" in ev.show(stranger).message
    mine = ev.show({"run": str(run_copy.path), "key": "owner-key"})
    assert list(mine.summary["status"]) == ["complete"]


def test_start_takes_the_device_queue_and_fills_the_named_outputs():
    """Start shares the run jobs' queue (one device, users take turns); every handler of the tab
    fills EvalOutputs' components in field order."""
    from curator.ui import build_demo

    demo = build_demo(AppSettings(runs_dir=Path("/nonexistent-runs")))
    deps = {}
    for dep in demo.fns.values():
        deps.setdefault(getattr(dep.fn, "__name__", ""), []).append(dep)
    (start,) = deps["start"]
    (run_class,) = deps["run_class"]
    assert start.concurrency_id == run_class.concurrency_id == "device" and start.concurrency_limit == 1
    names = [o.elem_id for o in start.outputs]
    assert names[:2] == ["eval-msg", "eval-setup"] and len(names) == len(et.EvalOutputs._fields)
    shows = deps["show"] + deps["show_run"] + deps["show_on_click"]
    assert all([o._id for o in d.outputs] == [o._id for o in start.outputs] for d in shows)
    assert len(shows) == 3  # the open run changes, a person opens the tab, a setup is chosen


def test_cli_show_prints_what_the_tab_shows(ev, run_copy, capsys):  # noqa: F811
    """``evaluate RUN --show`` and the tab read the same records (``stored_results``), epochs
    whatever they were; a set changed since its evaluation is starred in the CLI, noted in the tab."""
    from curator.cli import main

    evaluate_run(run_copy, sets=["curated", "automatic"], seeds=1, epochs=2, device="cpu")
    _drop_one_anomaly(run_copy)
    assert main(["evaluate", str(run_copy.path), "--sets", "all", "--show"]) == 0
    out = capsys.readouterr().out
    records, current = stored_results(run_copy)
    assert evaluation_table(records, current=current) in out
    assert "curated (with your decisions) *" in out and "* an earlier version of the set" in out
    shown = ev.show({"run": str(run_copy.path)})
    assert list(shown.summary["top-1 %"]) == [round(100 * r.mean, 1) for r in records]
    assert "earlier version" in shown.summary.loc[0, "note"] and shown.summary.loc[1, "note"] == ""


def test_soft_labels_and_a_timm_student_from_the_tab(ev, run_copy, monkeypatch):  # noqa: F811
    monkeypatch.setattr(et, "POLL_SECONDS", 0.01)
    state = {"run": str(run_copy.path)}
    list(ev.start(state, ["curated"], "hard", 4, "convnet", 1, 1))
    final = list(ev.start(state, ["curated"], "soft", 2, "resnet10t", 1, 1))[-1]
    assert final.message.startswith("✔ done in")
    (rec,) = [r for r in evaluations(run_copy) if r.student == "resnet10t"]
    assert (rec.protocol, rec.temperature, rec.status) == ("soft", 2.0, "complete")
    assert final.setup["value"] == "soft labels (T=2) · resnet10t"  # the newest setup is shown
    assert final.setup["choices"] == ["soft labels (T=2) · resnet10t", "hard labels · ConvNet-3"]
    hard = ev.show(state, "hard labels · ConvNet-3")  # "Results of" switches back
    assert hard.setup["value"] == "hard labels · ConvNet-3" and hard.summary.loc[0, "epochs"] == 1


def test_an_evaluation_with_no_finished_student_is_partial_not_a_result(ev, run_copy):  # noqa: F811
    from curator.store import start_evaluation

    start_evaluation(run_copy, set_name="curated", set_digest=current_digests(run_copy)["curated"], protocol="hard",
                     student="convnet", temperature=0, epochs=1, seeds=[0, 1], n_train=5, n_test=9,
                     class_names=run_copy.class_names)  # fmt: skip  (what a kill in the first student leaves)
    out = ev.show({"run": str(run_copy.path)})
    assert out.comparison == "No student of these sets has finished yet."
    assert out.summary.loc[0, ["seeds done", "status"]].tolist() == ["0 of 2", "partial"]
    assert np.isnan(out.summary.loc[0, "top-1 %"]) and out.students.empty
