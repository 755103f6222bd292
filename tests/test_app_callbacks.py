"""The app's callbacks, called directly (no server): set-up, runs, review decisions, errors, export.

Tiny random models saved as model folders and a 2-class synthetic ImageFolder keep each run
under a second; ``tau = 0.99`` makes every image of the random detector an anomaly.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

from curator.review import summarize
from curator.store import RunStore
from curator.ui import jobs
from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES, PANEL_SIZE, Callbacks
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


def ran(cb: Callbacks, assets: dict, label: int = 0, **kw) -> tuple[dict, tuple]:
    state = started(cb, assets, **kw)
    panel = cb.run_class(state, label, progress=None)
    assert panel[0].startswith("✔"), panel[0]
    return state, panel


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
    msg, state, saved, runs, classes, info = out
    assert msg.startswith("✔") and "2 classes" in msg
    assert (Path(state["run"]) / "run.sqlite").is_file() and saved == state["run"]
    assert [v for _, v in runs["choices"]] == [state["run"]]
    assert classes["choices"] == [("0: a (pending)", 0), ("1: b (pending)", 1)] and classes["value"] == 0
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
    elif kw == "nomodel":
        det = tmp_path / "det"
        det.mkdir()
        (det / "config.json").write_text((assets["det"] / "config.json").read_text())
        kw = dict(det=str(det))
    out = start(cb, assets, **kw)
    assert out[0].startswith("⚠") and expected in out[0], out[0]
    assert "Traceback" not in out[0]
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
    panel = cb.run_class(state, 0, progress=rec)
    msg, gallery, anomalies, aid, text, original, proto, cands, table, cid = panel[:PANEL_SIZE]
    stages = [d.split(": ", 1)[1].split(" ")[0] for _, d in rec.calls]
    assert [s for s in STAGES if s in stages] == STAGES and stages.index("synthesis") < stages.index("refinement")
    assert all(total >= done for (done, total), _ in rec.calls)
    assert msg.startswith("✔ done") and panel[PANEL_SIZE]["choices"][0] == ("0: a (done)", 0)
    assert len(gallery["value"]) == IPC and all(Path(p).is_file() for p, _ in gallery["value"])
    assert len(anomalies) == IPC and aid == anomalies["anomaly"][0]  # tau 0.99: all anomalous
    assert gallery["selected_index"] == 0 and gallery["value"][0][1].startswith(f"⚠ #{aid}")
    assert Path(original["value"]).is_file() and Path(proto).is_file()
    assert len(cands["value"]) == K and len(table) == K
    assert list(table.columns[:5]) == ["candidate", "round", "confidence", "uniqueness", "score"]
    assert table["score"].notna().all() and table["predicted"].isin(list(CLASSES)).all()
    pick = table[table["mark"].str.contains("auto pick")]
    consistent = table[table["consistent"]]
    if len(consistent):
        assert len(pick) == 1 and pick["score"].iloc[0] == consistent["score"].max()
        assert cid == pick["candidate"].iloc[0] and "★ auto pick" in cands["value"][cands["selected_index"]][1]


def test_cancel_stops_between_batches_and_the_run_resumes(cb, assets):
    state = started(cb, assets)
    rec = Recorder(cancel_at="synthesis", run_path=state["run"])
    out = cb.run_class(state, 0, progress=rec)
    assert out[0].startswith("⚠ cancelled") and len(out) == PANEL_SIZE + 1
    store = RunStore.open(state["run"])
    assert store.class_status(0) == "running"
    assert not store.db.execute("SELECT COUNT(*) FROM images WHERE kind='candidate'").fetchone()[0]
    out = cb.run_class(state, 0, progress=Recorder())  # the flag is cleared when a job starts
    assert out[0].startswith("✔ done") and store.class_status(0) == "done"
    assert len(store.candidates(store.anomalies(0)[0].id)) == K


def test_regenerate_adds_a_round_of_k_candidates(cb, assets):
    state, panel = ran(cb, assets)
    aid = panel[3]
    out = cb.regenerate(state, 0, aid, progress=None)
    assert out[0] == f"✔ #{aid}: round 2 of candidates added and rescored"
    assert len(out[8]) == 2 * K and sorted(set(out[8]["round"])) == [1, 2]


# --- review ---------------------------------------------------------------------------------------
def test_decisions_are_saved_undoable_and_survive_a_restart(cb, assets):
    state, panel = ran(cb, assets)
    aid, table = panel[3], panel[8]
    other = int(table["candidate"][~table["mark"].str.contains("auto")].iloc[0])
    out = cb.decide(state, 0, aid, other, "candidate")
    assert out[0].startswith(f"✔ #{aid}: candidate #{other} chosen") and out[9] == other
    assert "✔ your choice" in out[8].set_index("candidate").loc[other, "mark"]
    assert RunStore.open(state["run"]).decision(aid).source == "user"  # written before returning

    second = int(panel[2]["anomaly"][1])
    cb.decide(state, 0, second, None, "drop")
    assert cb.undo(state, 0, second)[0].startswith(f"✔ undone: #{second}")
    assert RunStore.open(state["run"]).decision(second).choice != "drop"

    # a new server process (fresh Callbacks) reopening the run sees the same decision
    fresh = Callbacks(AppSettings(runs_dir=cb.settings.runs_dir))
    out = fresh.open_run(state["run"])
    assert out[0].startswith("✔ reopened") and out[1] == state
    shown = fresh.show_anomaly(out[1], 0, aid)
    assert f"candidate #{other} (you)" in shown[4]
    assert shown[2].set_index("anomaly").loc[aid, "decision"] == f"candidate #{other} (you)"


def test_keep_original_accept_and_navigation(cb, assets):
    state, panel = ran(cb, assets)
    ids = [int(a) for a in panel[2]["anomaly"]]
    out = cb.decide(state, 0, ids[0], None, "original")
    assert "keep original (you)" in out[4]
    assert cb.step_anomaly(state, 0, ids[0], 1)[3] == ids[1]
    assert cb.step_anomaly(state, 0, ids[0], -1)[3] == ids[-1]  # wraps around
    picks = {a: RunStore.open(state["run"]).decision(a) for a in ids}
    accepted = next((a for a in ids if picks[a].choice == "candidate"), None)
    if accepted is not None:
        out = cb.decide(state, 0, accepted, None, "accept")
        assert "accepted; next anomaly" in out[0] and out[3] == ids[(ids.index(accepted) + 1) % len(ids)]
        store = RunStore.open(state["run"])
        d = store.decision(accepted)  # a person reviewed it: a user decision, shown as "accepted"
        assert (d.source, d.candidate_id) == ("user", store.auto_pick(accepted))
        assert cb.show_anomaly(state, 0, accepted)[2].set_index("anomaly").loc[accepted, "decision"].endswith(
            "(accepted)"
        )
        assert summarize(store, [0])[0].accepted == 1
    assert cb.decide(state, 0, ids[0], 123456, "candidate")[0].endswith("has no image 123456")
    foreign = int(cb.show_anomaly(state, 0, ids[1])[8]["candidate"].iloc[0])
    bad = cb.decide(state, 0, ids[0], foreign, "candidate")
    assert bad[0] == f"⚠ image {foreign} is not a candidate of anomaly {ids[0]}"


def test_two_sessions_keep_their_own_runs(cb, assets):
    s1, _ = ran(cb, assets, seed=1)
    s2, _ = ran(cb, assets, seed=2)
    assert s1["run"] != s2["run"]
    g1, g2 = cb.show_class(s1, 0)[1]["value"], cb.show_class(s2, 0)[1]["value"]
    served = cb.settings.served_dir  # the served links of each run's own images
    assert all(p.startswith(f"{served / Path(s1['run']).name}/") for p, _ in g1)
    assert all(p.startswith(f"{served / Path(s2['run']).name}/") for p, _ in g2)
    assert cb.restore(s1["run"], None)[1] == s1  # a reload reopens the run that browser had
    # with nothing saved, a page-load restore that finishes late must not wipe status or state
    late = cb.restore(None, s2)
    assert late[0] == late[1] == {"__type__": "update"}  # gr.skip(): leave the component as it is


def test_show_anomaly_rejects_images_that_are_not_anomalies(cb, assets):
    state, panel = ran(cb, assets)
    cid = int(panel[8]["candidate"].iloc[0])
    assert cb.show_anomaly(state, 0, cid)[0] == f"⚠ image #{cid} is not an anomaly (it is a candidate)"
    assert cb.show_class(state, 7)[0] == "⚠ class 7 is not in this run (it has 2 classes)"


# --- overview, export -----------------------------------------------------------------------------
def test_overview_filters_sorts_and_jumps(cb, assets):
    state, panel = ran(cb, assets)
    cb.decide(state, 0, panel[3], None, "drop")
    msg, df = cb.overview(state, "all classes", "overridden", True)
    assert list(df["class"]) == ["a", "b"] and df["overridden"].iloc[0] == 1 and df["IPC"].iloc[0] == IPC
    assert df["anomalies"].iloc[0] == df["label mismatch"].iloc[0] + df["low confidence"].iloc[0] == IPC
    assert list(cb.overview(state, "not run yet", "label", False)[1]["class"]) == ["b"]
    assert list(cb.overview(state, "with overrides", "label", False)[1]["class"]) == ["a"]

    class Evt:
        index = [1, 0]
        row_value = None

    msg, label, tabs = cb.jump_to_class(state, df.sort_values("label"), Evt())
    assert label["value"] == 1 and tabs.selected == "curate" and msg == "✔ class b opened"
    Evt.row_value = [0, "a", "done"]  # the page reports the row as displayed (sorted there)
    assert cb.jump_to_class(state, df, Evt())[1]["value"] == 0

    Evt.index, Evt.row_value = [0, 0], None  # selecting a row of the anomaly table shows that anomaly
    ids = [int(a) for a in panel[2]["anomaly"]]
    assert cb.select_anomaly_row(state, 0, panel[2], Evt())[3] == ids[0]
    Evt.row_value = [ids[2]] + [""] * 7
    assert cb.select_anomaly_row(state, 0, panel[2], Evt())[3] == ids[2]


def test_export_offers_a_zip_with_metadata_recording_the_override(cb, assets):
    state, panel = ran(cb, assets)
    aid = panel[3]
    cb.decide(state, 0, aid, None, "original")
    msg, button, preview = cb.export(state)
    assert msg.startswith("✔ exported") and button["visible"] is True
    with zipfile.ZipFile(button["value"]) as zf:
        meta = pd.read_csv(zf.open("provenance.csv"))
        assert "metadata.parquet" in zf.namelist()
        assert set(meta["file_name"]) <= set(zf.namelist())
    assert len(preview) == len(meta) and (meta["decision"] == "user").sum() == 1
    assert meta.loc[meta["decision"] == "user", "source"].iloc[0] == "original"


# --- device function, UMAP ------------------------------------------------------------------------
def test_only_the_job_function_is_decorated_with_spaces_gpu(monkeypatch):
    marked = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration=60):
            def deco(fn):
                marked.append(fn.__name__)
                return fn

            return deco

    assert jobs._gpu(len) is len  # no spaces package here: undecorated
    monkeypatch.setitem(sys.modules, "spaces", FakeSpaces)
    import importlib

    importlib.reload(jobs)
    try:
        assert marked == ["run_job"]
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(jobs)


def test_umap_fits_once_then_reads_the_cache_and_transforms_new_points(cb, assets):
    state, panel = ran(cb, assets)
    msg, fig, info = cb.embedding(state, "class")
    assert "fitted now" in msg and fig.data and "prototype" in info
    kinds = {t.name for t in fig.data}
    assert {"class a", "kind: real", "kind: anomaly", "kind: prototype"} <= kinds
    assert all(t.type == "scattergl" for t in fig.data)
    msg, fig2, _ = cb.embedding(state, "status")
    assert "from cache" in msg and "placed" not in msg
    xs = sorted(x for t in fig.data for x in t.x if x is not None)
    assert xs == sorted(x for t in fig2.data for x in t.x if x is not None)  # same coordinates, no refit
    cb.regenerate(state, 0, panel[3], progress=None)
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
    table = cb.show_anomaly(state, 0, aid)[8]
    assert table.loc[table["mark"].str.contains("auto pick"), "candidate"].tolist() == [pick]
    cb.decide(state, 0, aid, None, "accept")
    assert store.decision(aid).candidate_id == pick
