"""The app's callbacks, called directly (no server): set-up, runs, review decisions, errors, export.

Tiny random models saved as model folders and a 2-class synthetic ImageFolder keep each run
under a second; ``tau = 0.99`` makes every image of the random detector an anomaly.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

from curator.cli import summary_frame
from curator.review import DECISION_STATES, summarize
from curator.store import Decision, RunStore
from curator.ui import callbacks, jobs
from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES, PANEL_SIZE, Callbacks
from curator.ui.outputs import Panel, RunOutputs
from curator.ui.resources import AppSettings

torch.set_num_threads(1)
CLASSES = {"a": 12, "b": 12}
IPC, K = 3, 4
STAGES = ["prototypes", "synthesis", "inspection", "refinement"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app_assets")
    data = write_image_folder(root / "data", CLASSES, size=20)
    make_tiny_generator(list(CLASSES), resolution=20).save_pretrained(root / "gen")
    make_tiny_detector(list(CLASSES), input_size=20).save(root / "det")
    return {"root": root, "data": data, "gen": root / "gen", "det": root / "det"}


@pytest.fixture
def cb(tmp_path) -> Callbacks:
    return Callbacks(AppSettings(runs_dir=tmp_path / "runs"))


def start(
    cb: Callbacks,
    assets: dict,
    *,
    source=DATA_SOURCES[1],
    folder=None,
    upload=None,
    gen=None,
    det=None,
    ipc=IPC,
    k=K,
    tau=0.99,
    seed=0,
) -> tuple:
    return cb.start_run(
        source,
        str(assets["data"]) if folder is None else folder,
        upload,
        MODEL_SOURCES[1],
        str(assets["gen"]) if gen is None else gen,
        str(assets["det"]) if det is None else det,
        ipc, k, tau, 0.5, 2, 0.7, 2.0, seed, None,
    )  # fmt: skip


def started(cb: Callbacks, assets: dict, **kw) -> dict:
    out = start(cb, assets, **kw)
    assert out[0].startswith("✔"), out[0]
    return out[1]


# positions of the panel's outputs (curator.ui.outputs.Panel); a run's outputs are its message, then the panel
_SHORT = dict(msg="message", aid="anomaly_id", text="anomaly_text", proto="prototype", table="candidate_table",
              cid="candidate_id", original="original", gallery="gallery", anomalies="anomalies", cards="cards",
              picker="picker", queue="queue")  # fmt: skip
P = {short: Panel._fields.index(name) for short, name in _SHORT.items()}


def card_info(html: str) -> dict[int, tuple[set[str], str]]:
    """{candidate id: (the card's CSS classes, its inner HTML)} from the candidate grid's HTML."""
    parts = re.split(r'<div class="(card [^"]*)" data-cid="(\d+)"', html)[1:]
    return {int(parts[i + 1]): (set(parts[i].split()), parts[i + 2]) for i in range(0, len(parts), 3)}


def ran(cb: Callbacks, assets: dict, label: int = 0, **kw) -> tuple[dict, tuple]:
    state = started(cb, assets, **kw)
    out = cb.run_class(state, label, progress=None)
    assert out[0].startswith("✔"), out[0]
    return state, out[1:]


class Recorder:
    """Stands in for gr.Progress: records ((done, total), desc) calls."""

    def __init__(self, cancel_at: str | None = None, run_path: str | None = None):
        self.calls: list[tuple[tuple[int, int], str]] = []
        self.cancel_at, self.run_path = cancel_at, run_path

    def __call__(self, progress, desc=None, unit=None):
        self.calls.append((progress, desc))
        if self.cancel_at and self.cancel_at in desc:
            jobs.request_cancel(self.run_path)


# --- set-up -------------------------------------------------------------------------------------
def test_start_run_creates_a_run_and_lists_it(cb, assets):
    out = start(cb, assets)
    assert isinstance(out, RunOutputs)
    msg, state, saved, runs, classes, info = out.message, out.state, out.saved_run, out.runs, out.picker, out.run_info
    assert msg.startswith("✔") and "2 classes" in msg
    assert (Path(state["run"]) / "run.sqlite").is_file() and saved == state["run"]
    assert [v for _, v in runs["choices"]] == [state["run"]]
    assert classes["choices"] == [("0 · a — not run yet", 0), ("1 · b — not run yet", 1)] and classes["value"] == 0
    assert f"IPC {IPC}" in info and f"K {K}" in info


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_start_run_from_an_uploaded_zip(cb, assets, tmp_path):
    entries = {}
    for f in sorted(assets["data"].rglob("*.png")):
        entries[f"wrapped/{f.relative_to(assets['data'])}"] = f.read_bytes()
    upload = _zip(tmp_path / "data.zip", entries)
    out = start(cb, assets, source=DATA_SOURCES[2], upload=str(upload))
    assert out[0].startswith("✔"), out[0]
    cfg = RunStore.open(out[1]["run"]).config
    assert Path(cfg.data).name == "wrapped" and str(cb.settings.uploads_dir) in cfg.data


BAD_INPUTS = {
    "empty path": (dict(folder="  "), "dataset folder path is empty"),
    "wrong path": (dict(folder="/no/such/folder"), "does not exist: /no/such/folder"),
    "no image folder": ("flat", "is not an ImageFolder"),
    "ipc larger than a class": (dict(ipc=50), "IPC = 50 is larger than these classes"),
    "corrupt zip": ("corrupt", "not a zip file"),
    "zip slip": ("slip", "outside the upload folder"),
    "missing model file": ("nomodel", "missing model.safetensors"),
    "empty generator path": (dict(gen=""), "generator folder path is empty"),
    "parameter out of range": (dict(tau=1.5), "parameter tau must be in [0, 1]"),
    "no zip uploaded": (dict(source=DATA_SOURCES[2]), "no zip uploaded"),
    "empty zip": ("empty", "my data.zip is empty: it holds no files"),
    "zip that is not an ImageFolder": ("flatzip", "my data.zip is not an ImageFolder"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_clear_message_and_no_run(cb, assets, tmp_path, case):
    kw, expected = BAD_INPUTS[case]
    if kw == "flat":
        (tmp_path / "flat").mkdir()
        (tmp_path / "flat" / "x.txt").write_text("not images")
        kw = dict(folder=str(tmp_path / "flat"))
    elif kw == "corrupt":
        (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
        kw = dict(source=DATA_SOURCES[2], upload=str(tmp_path / "bad.zip"))
    elif kw == "slip":
        kw = dict(source=DATA_SOURCES[2], upload=str(_zip(tmp_path / "slip.zip", {"../evil/a.png": b"x"})))
    elif kw in ("empty", "flatzip"):  # messages name the file the person chose, never the server's folder
        entries = {} if kw == "empty" else {"notes.txt": b"not images"}
        kw = dict(source=DATA_SOURCES[2], upload=str(_zip(tmp_path / "my data.zip", entries)))
    elif kw == "nomodel":
        det = tmp_path / "det"
        det.mkdir()
        (det / "config.json").write_text((assets["det"] / "config.json").read_text())
        kw = dict(det=str(det))
    out = start(cb, assets, **kw)
    assert out[0].startswith("⚠") and expected in out[0], out[0]
    assert "Traceback" not in out[0] and "_uploads" not in out[0] and "upload-" not in out[0]
    assert all(o == {"__type__": "update"} or isinstance(o, dict) and o.get("__type__") == "update" for o in out[1:])
    assert not list(cb.settings.runs_dir.glob("*/run.sqlite"))
    assert not (tmp_path / "evil").exists()


def test_an_internal_error_is_logged_and_shown_without_a_traceback(cb, assets, monkeypatch, caplog):
    state = started(cb, assets)

    def boom(*a, **k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr("curator.ui.callbacks.class_view", boom)
    out = cb.show_class(state, 0)
    assert len(out) == PANEL_SIZE and out[0].startswith("⚠ something went wrong on the server (reference ")
    assert "secret" not in out[0] and "secret internal detail" in caplog.text
    assert cb.show_class({"run": None}, 0)[0] == "⚠ no run open: start a run in Set-up, or reopen one"


# --- running ------------------------------------------------------------------------------------
def test_run_class_reports_stages_and_shows_anomalies_with_candidates(cb, assets):
    state = started(cb, assets)
    rec = Recorder()
    out = cb.run_class(state, 0, progress=rec)
    assert len(out) == PANEL_SIZE + 1 and out[0].startswith("✔ class a done")
    panel = Panel(*out[1:])
    gallery, anomalies, aid, _text, original = (
        panel.gallery,
        panel.anomalies,
        panel.anomaly_id,
        panel.anomaly_text,
        panel.original,
    )
    proto, cards, table, cid, picker, queue = (
        panel.prototype,
        panel.cards,
        panel.candidate_table,
        panel.candidate_id,
        panel.picker,
        panel.queue,
    )
    stages = [d.split(": ", 1)[1].split(" ")[0] for _, d in rec.calls]
    assert [s for s in STAGES if s in stages] == STAGES and stages.index("synthesis") < stages.index("refinement")
    assert all(total >= done for (done, total), _ in rec.calls)
    assert picker["choices"][0] == (f"0 · a — {IPC} anomalies, {IPC} to review", 0) and picker["value"] == 0
    assert queue.startswith(f"1 of {IPC} · ") and queue.endswith(f" (class order) · {IPC} to review")  # + its state
    assert len(gallery["value"]) == IPC and all(Path(p).is_file() for p, _ in gallery["value"])
    assert len(anomalies) == IPC and aid == anomalies["anomaly"][0]  # tau 0.99: all anomalous
    assert gallery["selected_index"] == 0 and gallery["value"][0][1] == f"#{aid} ⚠"
    assert Path(original["value"]).is_file() and Path(proto).is_file()
    info = card_info(cards)
    assert len(info) == K and len(table) == K
    assert list(table.columns[:5]) == ["candidate", "round", "confidence", "uniqueness", "score"]
    assert (table["score"] != "–").all() and table["predicted"].isin(list(CLASSES)).all()
    store = RunStore.open(state["run"])
    pick = store.auto_pick(aid)  # the card with the star is the stored pick, and it starts selected
    assert table.loc[table["pick"] == "★", "candidate"].tolist() == ([pick] if pick else [])
    assert [c for c, (_, inner) in info.items() if "class='star'" in inner] == ([pick] if pick else [])
    if pick:
        assert cid == pick and "selected" in info[pick][0] and "pick" in info[pick][0]
    for c in store.candidates(aid):  # every card shows its scores and what the detector said of it
        want = "other" if c.predicted != 0 else ("pass" if c.confidence >= 0.99 else "below")
        classes, inner = info[c.id]
        assert f"mark-{want}" in classes and f"conf <b>{c.confidence:.3f}</b>" in inner
        assert f"uniq <b>{c.uniqueness:.2f}</b>" in inner and f"score <b>{c.score:.2f}</b>" in inner
        assert ("other: b" in inner) == (c.predicted == 1)


def test_cancel_stops_between_batches_and_the_run_resumes(cb, assets):
    state = started(cb, assets)
    rec = Recorder(cancel_at="synthesis", run_path=state["run"])
    out = cb.run_class(state, 0, progress=rec)
    assert out[0].startswith("⚠ cancelled") and len(out) == PANEL_SIZE + 1
    assert all(o == {"__type__": "update"} for o in out[1:])  # the view stays as it was
    store = RunStore.open(state["run"])
    assert store.class_status(0) == "running"
    assert not store.db.execute("SELECT COUNT(*) FROM images WHERE kind='candidate'").fetchone()[0]
    out = cb.run_class(state, 0, progress=Recorder())  # the flag is cleared when a job starts
    assert out[0].startswith("✔ class a done") and store.class_status(0) == "done"
    assert len(store.candidates(store.anomalies(0)[0].id)) == K


def test_regenerate_adds_a_round_of_k_candidates(cb, assets):
    state, panel = ran(cb, assets)
    aid = panel[P["aid"]]
    out = cb.regenerate(state, 0, aid, progress=None)
    assert out[0] == f"✔ #{aid}: round 2 of candidates added and rescored"
    table = out[1:][P["table"]]
    assert len(table) == 2 * K and sorted(set(table["round"])) == [1, 2]
    assert out[1:][P["aid"]] == aid  # the same anomaly stays in view


# --- review ---------------------------------------------------------------------------------------
def _frame(panel) -> pd.DataFrame:
    return panel[P["anomalies"]].set_index("anomaly")


def test_decisions_are_saved_undoable_and_survive_a_restart(cb, assets):
    state, panel = ran(cb, assets)
    aid, table = panel[P["aid"]], panel[P["table"]]
    other = int(table["candidate"][table["pick"] != "★"].iloc[0])
    out = cb.decide(state, 0, aid, other, "candidate")
    assert out[0].startswith(f"✔ #{aid}: candidate #{other} kept (overridden)") and out[P["cid"]] == other
    assert [c for c, (classes, _) in card_info(out[P["cards"]]).items() if "chosen" in classes] == [other]
    assert RunStore.open(state["run"]).decision(aid).source == "user"  # written before returning

    second = int(panel[P["anomalies"]]["anomaly"][1])
    cb.decide(state, 0, second, None, "drop")
    undone = cb.undo(state, 0, second)
    assert undone[0].startswith(f"✔ undone on #{second} (class a): dropped; now ") and undone[P["aid"]] == second
    assert RunStore.open(state["run"]).decision(second).choice != "drop"

    # a new server process (fresh Callbacks) reopening the run sees the same decision
    fresh = Callbacks(AppSettings(runs_dir=cb.settings.runs_dir))
    out = fresh.open_run(state["run"])
    assert out[0].startswith("✔ reopened") and out[1]["run"] == state["run"]
    shown = fresh.show_anomaly(out[1], 0, aid)
    assert f"#{other} · overridden" in shown[P["text"]]
    assert _frame(shown).loc[aid, "state"] == "overridden"


def test_each_decision_state_is_named_and_counted(cb, assets):
    state, panel = ran(cb, assets)
    store = RunStore.open(state["run"])
    ids = [int(a) for a in panel[P["anomalies"]]["anomaly"]]
    with_pick = [a for a in ids if store.auto_pick(a) is not None]
    before = _frame(panel)["state"].tolist()
    assert all(s in ("auto", "unresolved") for s in before)  # nobody has reviewed anything yet
    cb.decide(state, 0, ids[0], None, "original")
    cb.decide(state, 0, ids[1], None, "drop")
    if with_pick:
        cb.decide(state, 0, with_pick[-1], None, "accept")
    out = cb.show_class(state, 0)
    states = _frame(out)["state"]
    assert states[ids[0]] == "kept original" and states[ids[1]] == "dropped"
    if with_pick and with_pick[-1] not in ids[:2]:
        assert states[with_pick[-1]] == "accepted"
    df = cb.overview(state, "all classes", "label", False)[1].set_index("class")
    assert df.loc["a", "kept original"] == 1 and df.loc["a", "dropped"] == 1
    assert df.loc["a", "to review"] == sum(s in ("auto", "unresolved") for s in states)
    assert df.loc["a", ["auto", "accepted", "overridden", "kept original", "dropped", "unresolved"]].sum() == IPC


def test_the_cli_summary_and_the_overview_show_the_same_counts_under_the_same_names(cb, assets):
    state = started(cb, assets)
    list(cb.run_all(state, 0, None, progress=None))
    store = RunStore.open(state["run"])
    ids = [a.id for a in store.anomalies(0)]
    cb.decide(state, 0, ids[0], None, "original")
    cb.decide(state, 0, ids[1], None, "drop")
    other = next(c.id for c in store.candidates(ids[2]) if c.id != store.auto_pick(ids[2]))
    cb.decide(state, 0, ids[2], other, "candidate")
    cli = summary_frame(summarize(store)).set_index("class")
    overview = cb.overview(state, "all classes", "label", False)[1].set_index("class")
    states = list(DECISION_STATES)
    for name in store.class_names:
        assert cli.loc[name, states].tolist() == overview.loc[name, states].tolist(), name
    # one state each: "overridden" is another candidate only, not the kept original or the drop
    assert overview.loc["a", ["overridden", "kept original", "dropped"]].tolist() == [1, 1, 1]
    assert cli.loc["all", states].sum() == len(store.anomalies())


def test_undo_after_a_regenerate_answers_with_the_pick_as_it_stands_now(cb, assets):
    """The issue's reproduction through the app: choose another candidate, regenerate until the
    stored automatic pick moves, undo: the decision is the pick as it stands now, not the old one."""
    state, _ = ran(cb, assets)
    store = RunStore.open(state["run"])
    aid = next(a.id for a in store.anomalies(0) if store.auto_pick(a.id) is not None)
    old = store.auto_pick(aid)
    other = next(c.id for c in store.candidates(aid) if c.id != old)
    assert cb.decide(state, 0, aid, other, "candidate")[0].startswith(f"✔ #{aid}: candidate #{other} kept (overridden)")
    for _ in range(6):
        assert cb.regenerate(state, 0, aid, progress=None)[0].startswith("✔")
        if store.auto_pick(aid) != old:
            break
    new = store.auto_pick(aid)
    assert new not in (old, None), "six rounds never moved the automatic pick: the test cannot tell stale from fresh"
    undone = cb.undo(state, 0, aid)
    assert undone[0].startswith(f"✔ undone on #{aid} (class a): #{other} · ") and undone[0].endswith(
        f"now #{new} · auto"
    ), undone[0]
    assert store.decision(aid) == Decision.automatic(aid, new)
    table = undone[P["table"]]
    assert table.loc[table["pick"] == "★", "candidate"].tolist() == [new]
    assert f"#{new} · auto" in undone[P["text"]] and store.check() == []


def test_accept_keeps_the_stored_pick_and_moves_to_the_next_to_review(cb, assets):
    state, panel = ran(cb, assets)
    store = RunStore.open(state["run"])
    ids = [int(a) for a in panel[P["anomalies"]]["anomaly"]]
    accepted = next((a for a in ids if store.auto_pick(a) is not None), None)
    if accepted is None:
        pytest.skip("no anomaly of this tiny run has an automatic pick")
    out = cb.decide(state, 0, accepted, None, "accept")
    assert out[0].startswith(f"✔ #{accepted}: automatic pick #{store.auto_pick(accepted)} accepted")
    d = store.decision(accepted)  # a person reviewed it: a user decision, shown as "accepted"
    assert (d.source, d.candidate_id) == ("user", store.auto_pick(accepted))
    assert out[P["aid"]] != accepted and out[P["aid"]] in ids  # on to one still to review
    assert summarize(store, [0])[0].accepted == 1
    # accepting over a person's own choice says so (and U undoes it)
    cb.decide(state, 0, accepted, None, "drop")
    assert "(it was dropped; U undoes)" in cb.decide(state, 0, accepted, None, "accept")[0]


def test_bad_decisions_are_refused_and_leave_the_view(cb, assets):
    state, panel = ran(cb, assets)
    ids = [int(a) for a in panel[P["anomalies"]]["anomaly"]]
    bad = cb.decide(state, 0, ids[0], 123456, "candidate")
    assert bad[0].endswith("has no image 123456") and all(o == {"__type__": "update"} for o in bad[1:])
    foreign = int(cb.show_anomaly(state, 0, ids[1])[P["table"]]["candidate"].iloc[0])
    assert (
        cb.decide(state, 0, ids[0], foreign, "candidate")[0]
        == f"⚠ image {foreign} is not a candidate of anomaly {ids[0]}"
    )


def test_run_all_batches_the_classes_as_the_cli_does(cb, assets, monkeypatch):
    """Both classes in one engine group (the generator's batches span classes), then the end."""
    from curator.engine import Engine

    groups = []
    real = Engine.groups
    monkeypatch.setattr(Engine, "groups", lambda self, labels: groups.append(real(self, labels)) or groups[-1])
    state = started(cb, assets)
    out = list(cb.run_all(state, 0, None, progress=None))
    assert groups == [[[0, 1]]] and len(out) == 2
    assert out[0][0].startswith("✔ 2 of 2 classes done") and isinstance(out[0][1 + P["aid"]], int)
    assert out[1][0].startswith("✔ all 2 classes done")


def test_the_queue_runs_across_classes_and_undo_moves_the_view(cb, assets, monkeypatch):
    from curator.engine import Engine

    monkeypatch.setattr(Engine, "groups", lambda self, labels: [[lab] for lab in labels])  # a group per class
    monkeypatch.setattr(callbacks, "PICKER_REFRESH_S", 0.0)  # the picker refreshed after every group
    state = started(cb, assets)
    out = list(cb.run_all(state, 0, None, progress=None))
    assert out[-1][0].startswith("✔ all 2 classes done") and len(out[-1]) == PANEL_SIZE + 1
    store = RunStore.open(state["run"])
    queue = [a.id for a in store.anomalies()]
    assert {a.label for a in store.anomalies()} == {0, 1}  # tau 0.99: anomalies in both classes
    assert len(out) == 3 and out[0][0].startswith("✔ 1 of 2 classes done")  # one update per group, then the end
    assert out[0][1 + P["aid"]] == queue[0]  # opened on the first anomaly to review as soon as class a was done
    assert out[1][1 + P["aid"]] == {"__type__": "update"}  # then left alone (the user may be reviewing) ...
    assert out[1][1 + P["picker"]]["choices"][1][0].startswith("1 · b — ")  # ... while class b becomes reviewable
    panel = out[0][1:]
    seen, aid = [], panel[P["aid"]]
    for _ in queue:  # N visits every anomaly of the run once, crossing into class b, then wraps
        seen.append(aid)
        nxt = cb.step_anomaly(state, 0, aid, 1)
        assert nxt[P["picker"]]["value"] == store.image(nxt[P["aid"]]).label  # the class picker follows
        aid = nxt[P["aid"]]
    assert seen == queue and aid == queue[0]
    assert cb.step_anomaly(state, 0, queue[0], -1)[P["aid"]] == queue[-1]

    first_b = next(a.id for a in store.anomalies(1))
    cb.decide(state, 1, first_b, None, "drop")  # a decision in class b ...
    view_a = cb.show_class(state, 0)  # ... then the user looks at class a and presses U
    assert view_a[P["picker"]]["value"] == 0
    undone = cb.undo(state, 0, view_a[P["aid"]])
    assert undone[P["aid"]] == first_b and undone[P["picker"]]["value"] == 1  # the view moves to what was undone
    assert "(class b): dropped" in undone[0]
    assert cb.undo(state, 1, first_b)[0] == "⚠ nothing to undo"

    line = cb.queue_position(state, queue[1])
    assert line.startswith(f"2 of {len(queue)} · ") and line.endswith(f"· {len(queue)} to review")  # drop undone
    assert cb.queue_position({"run": None}, None) == {"__type__": "update"}
    todo = cb.next_unreviewed(state, 0, queue[0])  # J: the next one nobody reviewed
    assert todo[P["aid"]] == queue[1]
    assert "to review" in todo[P["queue"]]


def test_a_card_click_selects_its_candidate(cb, assets):
    state, panel = ran(cb, assets)
    aid = panel[P["aid"]]
    cid = int(panel[P["table"]]["candidate"].iloc[-1])

    class Evt:
        _data = {"cid": cid}

        def __getattr__(self, name):
            return self._data[name]

    msg, selected, pending = cb.select_candidate(state, aid, Evt())
    assert selected == cid and msg.startswith(f"✔ candidate #{cid} selected") and pending is None
    Evt._data = {"cid": 999999}
    assert cb.select_candidate(state, aid, Evt())[0] == f"⚠ image 999999 is not a candidate of anomaly {aid}"


def test_two_sessions_keep_their_own_runs(cb, assets):
    s1, _ = ran(cb, assets, seed=1)
    s2, _ = ran(cb, assets, seed=2)
    assert s1["run"] != s2["run"]
    g1, g2 = cb.show_class(s1, 0)[1]["value"], cb.show_class(s2, 0)[1]["value"]
    served = cb.settings.served_dir  # the served links of each run's own images
    assert all(Path(s1["run"]).name in Path(p).relative_to(served).parts[:2] for p, _ in g1)
    assert all(Path(s2["run"]).name in Path(p).relative_to(served).parts[:2] for p, _ in g2)
    assert cb.restore(s1["run"], None)[1]["run"] == s1["run"]  # a reload reopens the run that browser had
    # with nothing saved, a page-load restore that finishes late must not wipe status or state
    late = cb.restore(None, s2)
    assert late[0] == late[1] == {"__type__": "update"}  # gr.skip(): leave the component as it is


def test_show_anomaly_rejects_images_that_are_not_anomalies(cb, assets):
    state, panel = ran(cb, assets)
    cid = int(panel[P["table"]]["candidate"].iloc[0])
    assert cb.show_anomaly(state, 0, cid)[0] == f"⚠ image #{cid} is not an anomaly (it is a candidate)"
    assert cb.show_class(state, 7)[0] == "⚠ class 7 is not in this run (it has 2 classes)"


# --- overview, export -----------------------------------------------------------------------------
def test_overview_filters_sorts_and_jumps(cb, assets):
    state, panel = ran(cb, assets)
    cb.decide(state, 0, panel[P["aid"]], None, "drop")
    msg, df, page = cb.overview(state, "all classes", "dropped", True)
    assert page == 1 and "page 1 of 1" in msg
    assert list(df["class"]) == ["a", "b", "all classes"] and df["dropped"].iloc[0] == 1 and df["IPC"].iloc[0] == IPC
    assert df["anomalies"].iloc[0] == df["label mismatch"].iloc[0] + df["low confidence"].iloc[0] == IPC
    total = df.iloc[-1]  # the totals row sums the rows shown
    assert total["anomalies"] == df["anomalies"].iloc[:-1].sum() and total["dropped"] == 1 and total["IPC"] == IPC
    assert total["status"] == "1/2 done" and total["conf before"] == ""
    assert list(cb.overview(state, "not run yet", "label", False)[1]["class"]) == ["b", "all classes"]
    assert list(cb.overview(state, "with overrides", "label", False)[1]["class"]) == ["a", "all classes"]

    class Evt:
        index = [1, 0]
        row_value = None

    msg, label, tabs = cb.jump_to_class(state, df.iloc[:-1].sort_values("label"), Evt())
    assert label["value"] == 1 and tabs.selected == "curate" and msg == "✔ class b opened"
    Evt.row_value = [0, "a", "done"]  # the page reports the row as displayed (sorted there)
    assert cb.jump_to_class(state, df, Evt())[1]["value"] == 0
    Evt.row_value = ["", "all classes", "1/2 done"]
    assert cb.jump_to_class(state, df, Evt())[0] == "⚠ that is the totals row: select a class's row to open it"

    Evt.index, Evt.row_value = [0, 0], None  # selecting a row of the anomaly table shows that anomaly
    ids = [int(a) for a in panel[P["anomalies"]]["anomaly"]]
    assert cb.select_anomaly_row(state, 0, panel[P["anomalies"]], Evt())[P["aid"]] == ids[0]
    Evt.row_value = [ids[2]] + [""] * 7
    assert cb.select_anomaly_row(state, 0, panel[P["anomalies"]], Evt())[P["aid"]] == ids[2]


def test_export_offers_a_zip_with_metadata_recording_the_override(cb, assets):
    state, panel = ran(cb, assets)
    aid = panel[P["aid"]]
    cb.decide(state, 0, aid, None, "original")
    msg, button, preview = cb.export(state)
    assert msg.startswith("✔ exported") and button["visible"] is True
    assert str(cb.settings.runs_dir) not in msg  # no server paths in messages
    with zipfile.ZipFile(button["value"]) as zf:
        meta = pd.read_csv(zf.open("provenance.csv"))
        assert "metadata.parquet" in zf.namelist()
        assert set(meta["file_name"]) <= set(zf.namelist())
    assert len(preview) == len(meta) and (meta["decision"] == "kept original").sum() == 1
    assert meta.loc[meta["decision"] == "kept original", "source"].iloc[0] == "original"


# --- device function, UMAP ------------------------------------------------------------------------
def test_umap_fits_once_then_reads_the_cache_and_transforms_new_points(cb, assets):
    state, panel = ran(cb, assets)
    msg, fig, info = cb.embedding(state, "class")
    assert "fitted now" in msg and fig.data and "prototype" in info
    kinds = {t.name for t in fig.data}
    assert {"class a", "kind: real", "kind: anomaly", "kind: prototype"} <= kinds
    assert all(t.type == "scattergl" for t in fig.data)
    rows = [row for t in fig.data if t.customdata is not None for row in t.customdata]
    cand = next(r for r in rows if r[1] == "candidate")  # hover thumbnail and click-to-open, as in the class map
    assert cand[4].startswith("gradio_api/file=") and int(cand[5]) in set(panel[P["anomalies"]]["anomaly"])
    assert all(r[4] == "" for r in rows if r[1] == "real")
    msg, fig2, _ = cb.embedding(state, "status")
    assert "from cache" in msg and "placed" not in msg
    xs = sorted(x for t in fig.data for x in t.x if x is not None)
    assert xs == sorted(x for t in fig2.data for x in t.x if x is not None)  # same coordinates, no refit
    cb.regenerate(state, 0, panel[P["aid"]], progress=None)
    msg, fig3, _ = cb.embedding(state, "class")
    assert f"{K} new points placed by transform" in msg


def test_the_star_and_accept_use_the_pick_the_pipeline_stored(cb, assets):
    """The panel never works the pick out again: even when the stored scores would rank another
    consistent candidate first, the star and "Accept" follow the pick the selection stored."""
    state, panel = ran(cb, assets)
    store = RunStore.open(state["run"])
    aid, pick, other = next(
        (a.id, store.auto_pick(a.id), c.id)
        for a in store.anomalies(0)
        for c in store.candidates(a.id)
        if store.auto_pick(a.id) is not None and c.id != store.auto_pick(a.id) and c.predicted == 0
    )
    store.set_scores([(other, 1.0, 99.0)])  # a consistent candidate now outscores the stored pick
    shown = cb.show_anomaly(state, 0, aid)
    table = shown[P["table"]]
    assert table.loc[table["pick"] == "★", "candidate"].tolist() == [pick]
    assert shown[P["cards"]].count("class='star'") == 1 and f"★ #{pick}" in shown[P["text"]]
    cb.decide(state, 0, aid, None, "accept")
    assert store.decision(aid).candidate_id == pick


def test_only_a_run_folder_right_inside_the_runs_folder_reopens(cb, assets):
    state, _ = ran(cb, assets)
    run = Path(state["run"])
    nested = cb.settings.uploads_dir / "upload-x" / run.name  # a copy of a run inside the uploads: not a run
    nested.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(run, nested)
    assert cb.open_run(str(nested))[0] == f"⚠ run {run.name} not found"
    assert cb.open_run("_uploads")[0] == "⚠ run _uploads not found"
    assert cb.open_run(run.name)[0] == f"✔ reopened run {run.name}"  # by id, too
    assert cb.open_run("/etc")[0] == "⚠ /etc is not a run of this app (runs live in runs)"  # no server path


# --- issue 21: a run's state, off-class picks, the place kept with the run, the typed panel ---------
def test_start_and_reopen_clear_what_the_previous_run_showed(cb, assets):
    first, _ = ran(cb, assets)
    out = start(cb, assets, seed=5)
    assert out.message.startswith("✔") and out.state["run"] != first["run"]
    cleared = {n: getattr(out, n) for n in ("run_message", "umap_message", "umap_info", "export_message",
                                             "overview_message")}  # fmt: skip
    assert set(cleared.values()) == {""}, cleared
    assert out.class_plot is None and out.run_plot is None and out.download["visible"] is False
    assert out.preview.empty and out.overview.empty
    labels = dict((v, t) for t, v in out.runs["choices"])
    assert set(labels) == {first["run"], out.state["run"]}
    assert "1/2 classes" in labels[first["run"]] and "0/2 classes" in labels[out.state["run"]]  # progress now
    for text in labels.values():  # each run tells itself apart: dataset, generator, IPC, tau, date
        assert re.search(r"^data · gen · IPC 3 · τ 0\.99 · \d/2 classes · \d{4}-\d\d-\d\d \d\d:\d\d · run-", text), text
    panel = cb.open_first(out.state, 0)  # the new run's class 0 has not run: no image label of the old one
    assert panel.anomaly_id is None and panel.original["label"] == "Flagged image"
    again = cb.open_run(first["run"], out.state)
    assert again.run_message == "" and again.state["run"] == first["run"]


def _off_class(store: RunStore, aid: int):
    a = store.image(aid)
    return next((c.id for c in store.candidates(aid) if c.predicted != a.label), None)


def test_an_off_class_candidate_is_kept_only_on_a_second_press(cb, assets):
    state, _ = ran(cb, assets)
    assert cb.run_class(state, 1, progress=None)[0].startswith("✔")
    store = RunStore.open(state["run"])
    off = [(a.id, a.label, _off_class(store, a.id)) for a in store.anomalies() if _off_class(store, a.id)]
    assert len(off) >= 2, "the random detector gives off-class candidates"
    (aid, lab, other), (aid2, lab2, other2) = off[:2]
    names, before = store.class_names, store.decision(aid)
    *panel, pending = cb.choose_candidate(state, lab, aid, other, None)
    warned = f"⚠ #{other} is predicted as class {names[1 - lab]}, not {names[lab]}"
    assert panel[0].startswith(warned) and "press “Use selected” again" in panel[0], panel[0]
    assert pending == [aid, other] and store.decision(aid) == before  # nothing kept yet
    assert all(o == {"__type__": "update"} for o in panel[1:])
    second = cb.choose_candidate(state, lab, aid, other, pending)
    kept = f"✔ #{aid}: candidate #{other} kept (overridden), though the detector predicts {names[1 - lab]}"
    assert second[0].startswith(kept), second[0]
    assert second[-1] is None and store.decision(aid).candidate_id == other
    assert "kept though it is assigned to another class" in Panel(*second[:-1]).anomaly_text
    stale = cb.choose_candidate(state, lab2, aid2, other2, pending)  # another candidate than the one pending
    assert stale[0].startswith("⚠") and stale[-1] == [aid2, other2] and store.decision(aid2).candidate_id != other2


def test_a_reload_reopens_the_tab_class_and_anomaly_of_the_run(cb, assets):
    state, _ = ran(cb, assets, label=1)
    store = RunStore.open(state["run"])
    second = store.anomalies(1)[1].id
    place = cb.remember_place(state, None, 1, second)
    place = cb.remember_place(state, place, tab="curate")
    assert place == {"run": state["run"], "label": 1, "anomaly": second, "tab": "curate"}
    reloaded = {"run": None}  # a new page: restore reopens the run, then the place
    out = cb.restore(state["run"], reloaded)
    panel = cb.open_place(out.state, out.picker["value"], place)
    assert panel.anomaly_id == second and panel.picker["value"] == 1
    assert cb.place_tab(out.state, place).selected == "curate"
    other_run = started(cb, assets, seed=3)  # a place of another run is not this run's: the first to review
    assert cb.remember_place(other_run, place, 0, None) == {"run": other_run["run"], "label": 0, "anomaly": None}
    assert (
        cb.open_place(out.state, 0, {"run": other_run["run"], "anomaly": second}).anomaly_id == store.anomalies(1)[0].id
    )


def test_a_candidate_clicked_on_a_map_opens_selected(cb, assets):
    state, panel = ran(cb, assets)
    aid = panel[P["aid"]]
    cid = int(panel[P["table"]]["candidate"].iloc[-1])
    out = cb.open_from_map(state, 0, f"{aid}:{cid}")
    assert out.anomaly_id == aid and out.candidate_id == cid and 'selected" data-cid="' + str(cid) in out.cards
    assert cb.open_from_map(state, 0, str(aid)).candidate_id != cid or cid == panel[P["cid"]]


def test_the_panel_wiring_follows_the_named_fields():
    """Every handler that fills the Curate panel is wired to the components in Panel's field order,
    and Start/Reopen/load to RunOutputs' (curator.ui.outputs): one added output cannot shift the rest."""
    from curator.ui import build_demo

    demo = build_demo(AppSettings(runs_dir=Path("/nonexistent-runs")))
    panel, run = demo.curator_outputs["panel"], demo.curator_outputs["run"]
    ids = {name: c.elem_id for name, c in zip(Panel._fields, panel)}
    assert ids["anomaly_id"] == "anomaly-id" and ids["candidate_id"] == "candidate-id" and ids["picker"] == "class-dd"
    assert ids["message"] == "status" and ids["cards"] == "candidates" and ids["queue"] == "queue-md"
    assert len(panel) == len(Panel._fields) and len(run) == len(RunOutputs._fields)
    by_fn = {}
    for dep in demo.fns.values():
        by_fn.setdefault(getattr(dep.fn, "__name__", ""), []).append([o._id for o in dep.outputs])
    want = [c._id for c in panel]
    for name in ("show_class", "show_anomaly", "open_first", "open_place", "undo", "next_unreviewed", "open_from_map"):
        assert by_fn[name] and all(o == want for o in by_fn[name]), name
    for name in ("run_class", "run_all", "regenerate"):
        assert all(o[1:] == want for o in by_fn[name]), name
    assert all(o[:-1] == want for o in by_fn["choose_candidate"])
    for name in ("start_run", "open_run", "restore"):
        assert all(o == [c._id for c in run] for o in by_fn[name]), name
