"""The per-class embedding view: one class's points only, PCA below 15 points and UMAP from 15,
a per-class cache refitted when the class gains points, and the class figure's customdata (the
thumbnail URL and anomaly id that ``PLOT_JS`` reads), checked in headless Chromium when present.

Tiny random models on mnist5k: the random detector predicts class 4 for every image, so on class
4 the threshold ``tau`` splits the images into passed ones and low-confidence anomalies whose
candidates are all label-consistent (so each gets an automatic pick), while every image of class 7
is an unresolved label-mismatch anomaly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_detector, make_tiny_generator

from curator import embedding
from curator.config import RunConfig
from curator.embedding import COLUMNS, class_embedding, collect_points
from curator.engine import LocalEngine
from curator.review import user_decide
from curator.ui.plots import (
    CLASS_CUSTOMDATA,
    DENSE_POINTS,
    MAX_CLASS_TRACES,
    PALETTE,
    PLOT_JS,
    SIZES,
    class_figure,
    umap_figure,
)

torch.set_num_threads(1)
DIGITS = [str(i) for i in range(10)]
REAL = 6
PASSED_TAU = 0.1675  # between the confidences of class 4's synthetic images (about 0.166 .. 0.169)


@pytest.fixture(scope="module")
def models():
    return make_tiny_generator(DIGITS), make_tiny_detector(DIGITS)


def make_run(root, mnist, models, **overrides):
    cfg = dict(ipc=4, k=4, steps=3, strength=0.6, tau=PASSED_TAU, classes=["4", "7"], batch_size=8, real_sample=REAL)
    cfg.update(overrides)
    gen, det = models
    engine = LocalEngine.create(RunConfig(**cfg), str(root), data=mnist, generator=gen, detector=det)
    engine.run()
    return engine


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist, models):
    """Classes 4 (passed images, anomalies with picks) and 7 (unresolved anomalies), IPC 4, K 4."""
    return make_run(tmp_path_factory.mktemp("class_view"), mnist, models)


class Counting:
    """Wraps embedding._fit / _pca and counts the calls."""

    def __init__(self, monkeypatch):
        self.calls = {"_fit": 0, "_pca": 0}
        for name in self.calls:
            monkeypatch.setattr(embedding, name, self._wrap(name, getattr(embedding, name)))

    def _wrap(self, name, fn):
        def counted(*args, **kw):
            self.calls[name] += 1
            return fn(*args, **kw)

        return counted


def expected_points(store, label: int) -> dict[str, tuple[str, str, float]]:
    """{key: (kind, file, anomaly id)} of every point the class view of ``label`` should hold."""
    _, indices, _ = store.real_features(label)
    out = {f"real:{label}:{i}": ("real", "", np.nan) for i in indices}
    out.update({f"proto:{p.id}": ("prototype", p.preview, np.nan) for p in store.prototypes(label)})
    picks = {d.candidate_id for d in store.decisions().values() if d.choice == "candidate"}
    for s in store.synthetic(label):
        out[f"img:{s.id}"] = ("anomaly" if s.is_anomaly else "synthetic", s.file, s.id if s.is_anomaly else np.nan)
        for c in store.candidates(s.id):
            out[f"img:{c.id}"] = ("pick" if c.id in picks else "candidate", c.file, s.id)
    return out


def test_a_class_view_holds_that_class_only_with_every_kind(run, models):
    store, det = run.store, models[1]
    emb = class_embedding(store, det, 4)
    f = emb.frame
    assert list(f.columns) == COLUMNS
    assert set(f["label"]) == {4} and set(f["class_name"]) == {"4"}
    assert set(f["kind"]) == {"real", "prototype", "synthetic", "anomaly", "candidate", "pick"}
    expected = expected_points(store, 4)
    assert sorted(f["key"]) == sorted(expected)
    for key, kind, file, aid in f[["key", "kind", "file", "anomaly_id"]].itertuples(index=False):
        e_kind, e_file, e_aid = expected[key]
        assert (kind, file) == (e_kind, e_file), key
        assert (np.isnan(aid) and np.isnan(e_aid)) or aid == e_aid, key
    assert (f["kind"] == "real").sum() == REAL and (f["kind"] == "prototype").sum() == 4
    assert f[["x", "y"]].notna().all().all()
    # class 7's view shares no point with class 4's, and every anomaly there is unresolved
    f7 = class_embedding(store, det, 7).frame
    assert not set(f7["key"]) & set(f["key"]) and set(f7["label"]) == {7}
    assert set(f7.loc[f7["kind"] == "anomaly", "status"]) == {"unresolved"}
    assert (f7["kind"] == "pick").sum() == 0


def test_class_features_are_normalised_like_the_run_view(run, models):
    store, det = run.store, models[1]
    whole, whole_feats = collect_points(store, det)
    one, one_feats = collect_points(store, det, 4)
    rows = whole.reset_index().set_index("key").loc[one["key"], "index"].to_numpy()
    np.testing.assert_allclose(one_feats, whole_feats[rows], atol=1e-5)


def test_umap_from_15_points_then_the_cache_without_refitting(run, models, monkeypatch):
    store, det = run.store, models[1]
    (store.path / "embedding" / "class-4.npz").unlink(missing_ok=True)
    counting = Counting(monkeypatch)
    first = class_embedding(store, det, 4)
    assert len(first.frame) >= 15 and first.method == "umap" and first.fitted
    assert first.frame.attrs["method"] == "umap"
    assert counting.calls == {"_fit": 1, "_pca": 0}
    assert (store.path / "embedding" / "class-4.npz").is_file()
    again = class_embedding(store, det, 4)
    assert not again.fitted and again.method == "umap" and counting.calls["_fit"] == 1
    pd.testing.assert_frame_equal(first.frame, again.frame)
    # a person's decision changes what a point is (pick or candidate), not where it is
    a = store.anomalies(4)[0]
    auto = store.decision(a.id).candidate_id
    other = next(c.id for c in store.candidates(a.id) if c.id != auto)
    user_decide(store, a.id, "candidate", other)
    third = class_embedding(store, det, 4)
    assert not third.fitted and counting.calls["_fit"] == 1
    kind = dict(zip(third.frame["key"], third.frame["kind"]))
    assert (kind[f"img:{other}"], kind[f"img:{auto}"]) == ("pick", "candidate")
    pd.testing.assert_frame_equal(first.frame[["key", "x", "y"]], third.frame[["key", "x", "y"]])
    # a different seed is a different map: fitted again
    assert class_embedding(store, det, 4, seed=1).fitted and counting.calls["_fit"] == 2


def test_pca_below_15_points_and_new_candidates_refit_the_class(tmp_path, mnist, models, monkeypatch):
    engine = make_run(tmp_path, mnist, models, ipc=2, k=2, tau=1.0, classes=["4"], real_sample=3)
    store, det = engine.store, models[1]
    counting = Counting(monkeypatch)
    emb = class_embedding(store, det, 4)  # 3 real + 2 prototypes + 2 anomalies + 4 candidates
    assert (len(emb.frame), emb.method, emb.fitted) == (11, "pca", True)
    assert counting.calls == {"_fit": 0, "_pca": 1}
    assert np.ptp(emb.frame["x"]) > 0 and np.ptp(emb.frame["y"]) > 0
    assert not class_embedding(store, det, 4).fitted and counting.calls["_pca"] == 1
    aid = store.anomalies(4)[0].id
    engine.regenerate(aid)
    new = {f"img:{c.id}" for c in store.candidates(aid) if c.round == 2}
    emb = class_embedding(store, det, 4)
    assert len(new) == 2 and new <= set(emb.frame["key"]) and emb.fitted and emb.method == "pca"
    cand = emb.frame[emb.frame["key"].isin(new)]
    assert set(cand["anomaly_id"]) == {aid} and set(cand["kind"]) <= {"candidate", "pick"}
    engine.regenerate(aid)  # 15 points now: UMAP
    emb = class_embedding(store, det, 4)
    assert (len(emb.frame), emb.method, emb.fitted) == (15, "umap", True)
    assert counting.calls == {"_fit": 1, "_pca": 2}


def test_real_images_are_sampled_deterministically_above_the_limit(run, models, monkeypatch):
    monkeypatch.setattr(embedding, "MAX_CLASS_REAL", 4)
    store, det = run.store, models[1]
    (store.path / "embedding" / "class-7.npz").unlink(missing_ok=True)
    one = class_embedding(store, det, 7).frame
    (store.path / "embedding" / "class-7.npz").unlink()
    two = class_embedding(store, det, 7).frame
    assert (one["kind"] == "real").sum() == 4
    assert one["key"].tolist() == two["key"].tolist()
    assert (one["kind"] != "real").sum() == len(expected_points(store, 7)) - REAL  # every other point kept
    (store.path / "embedding" / "class-7.npz").unlink()


def test_the_run_view_samples_real_points_fits_a_sample_and_places_the_rest(run, models, monkeypatch):
    """At ImageNet's size the run view keeps a seeded sample of the real cloud and fits UMAP on a
    bounded sample of points; every other point is placed by transform, and the cache serves it all."""
    monkeypatch.setattr(embedding, "MAX_RUN_REAL", 5)
    monkeypatch.setattr(embedding, "MAX_FIT", 20)
    store, det = run.store, models[1]
    everything, _ = collect_points(store, det)
    cache = store.path / embedding.CACHE_DIR
    try:
        first = embedding.run_embedding(store, det)
        f = first.frame
        assert (f["kind"] == "real").sum() == 5
        assert sorted(f.loc[f["kind"] != "real", "key"]) == sorted(everything.loc[everything["kind"] != "real", "key"])
        assert first.fitted and first.fit_points == 20 and first.placed == len(f) - 20
        assert f[["x", "y"]].notna().all().all()
        second = embedding.run_embedding(store, det)
        assert not second.fitted and second.placed == 0
        assert second.frame["key"].tolist() == f["key"].tolist()  # the same seeded sample
        assert np.array_equal(second.frame[["x", "y"]].to_numpy(), f[["x", "y"]].to_numpy())
    finally:
        for name in ("umap.npz", "umap.pkl"):
            (cache / name).unlink(missing_ok=True)


def test_a_run_view_of_many_classes_is_one_legend_group_coloured_by_class_number():
    n = MAX_CLASS_TRACES + 5
    frame = pd.DataFrame(
        dict(key=[f"img:{i}" for i in range(2 * n)], kind="synthetic", status="passed", label=list(range(n)) * 2,
             class_name=[f"c{i}" for i in range(n)] * 2, image_id=range(2 * n), x=0.0, y=0.0, confidence=0.5,
             uniqueness=0.5, score=0.75, file="", anomaly_id=np.nan)
    )  # fmt: skip
    frame.loc[frame.index % 4 == 3, "kind"] = "candidate"
    fig = umap_figure(frame, "class")
    drawn = [t for t in fig.data if t.x[0] is not None]
    assert [t.marker.symbol for t in drawn] == ["square", "circle-open"]  # a trace per kind, one symbol each
    assert sum(len(t.x) for t in drawn) == 2 * n and sum(t.showlegend for t in drawn) == 1
    points = drawn[0]
    labels = frame.loc[frame["kind"] == "synthetic", "label"].to_numpy()
    assert list(points.marker.color) == list(labels % len(PALETTE))  # colour = class number, on a stepped scale
    scale = dict((round(v, 6), c) for v, c in points.marker.colorscale)
    assert scale[0.0] == PALETTE[0] and scale[round(1 / len(PALETTE), 6)] in (PALETTE[0], PALETTE[1])
    assert list(points.customdata[:, 6]) == [f"c{lab}" for lab in labels]
    few = umap_figure(frame[frame["label"] < 3], "class")  # few classes: a legend row each, in class order
    assert [t.name for t in few.data if t.x[0] is not None and t.showlegend] == ["class c0", "class c1", "class c2"]
    assert {t.marker.color for t in few.data if t.name == "class c1"} == {PALETTE[1]}


def test_a_dense_run_view_draws_smaller_markers_without_outlines():
    """Above DENSE_POINTS points (a run of 1,000 classes), picks drawn full size hide the map."""

    def frame(n: int) -> pd.DataFrame:
        return pd.DataFrame(
            dict(key=[f"img:{i}" for i in range(n)], kind="pick", status="auto", label=0, class_name="c0",
                 image_id=range(n), x=0.0, y=0.0, confidence=0.5, uniqueness=0.5, score=0.75, file="",
                 anomaly_id=np.nan)
        )  # fmt: skip

    sparse = [t for t in umap_figure(frame(DENSE_POINTS)).data if t.x[0] is not None][0]
    dense = [t for t in umap_figure(frame(DENSE_POINTS + 1)).data if t.x[0] is not None][0]
    assert sparse.marker.size == SIZES["pick"] and sparse.marker.line.width > 0
    assert dense.marker.size < sparse.marker.size and dense.marker.line.width == 0


def test_class_view_errors(run, models):
    with pytest.raises(ValueError, match="no class 12"):
        class_embedding(run.store, models[1], 12)


def thumb(file: str) -> str:
    return f"/thumbs/{file}"


def test_class_figure_customdata_carries_thumbnail_and_anomaly(run, models):
    store = run.store
    frame = class_embedding(store, models[1], 4).frame
    fig = class_figure(frame, "class 4", thumb)
    assert all(t.type == "scatter" for t in fig.data)
    assert sum(len(t.x) for t in fig.data) == len(frame)
    by_id = {}
    for t in fig.data:
        for cd in t.customdata:
            assert len(cd) == len(CLASS_CUSTOMDATA)
            if cd[0]:
                by_id[int(cd[0])] = (t.name, t.marker.symbol, t.marker.color, *cd[1:])
            elif cd[1] == "prototype":
                assert cd[4].startswith("/thumbs/prototypes/") and cd[5] == ""
            else:
                assert (cd[1], cd[4], cd[5]) == ("real", "", "")  # a real image has no file in the run
    for c in (c for a in store.anomalies(4) for c in store.candidates(a.id)):
        name, symbol, color, kind, status, scores, url, aid = by_id[c.id]
        assert url == f"/thumbs/{c.file}" and aid == str(c.parent_id)
        assert "conf" in scores and "uniq" in scores and "score" in scores
        if kind == "pick":
            assert (name, symbol, color) == ("picks", "star", "#2ca02c")
    for a in store.anomalies(4):
        assert by_id[a.id][6:] == (f"/thumbs/{a.file}", str(a.id))
    passed = next(s for s in store.synthetic(4) if not s.is_anomaly)
    assert by_id[passed.id][6:] == (f"/thumbs/{passed.file}", "")
    no_thumbs = class_figure(frame, "class 4", lambda f: None)
    assert {cd[4] for t in no_thumbs.data for cd in t.customdata} == {""}
    f7 = class_figure(class_embedding(store, models[1], 7).frame, "class 7", thumb)
    assert [t.marker.color for t in f7.data if t.name == "anomaly · unresolved"] == ["#d62728"]
    lo, hi = fig.layout.xaxis.range
    span = frame["x"].max() - frame["x"].min()
    assert lo < frame["x"].min() and hi > frame["x"].max() and hi - lo < 1.25 * span  # zoomed to the data


# --- PLOT_JS in a real browser -----------------------------------------------------------------
def browser_frame() -> pd.DataFrame:
    rows = [
        ("real:4:1", "real", "real", None, 0.0, 0.0, "", None),
        ("img:7", "anomaly", "auto", 7, 10.0, 0.0, "images/c4/a.png", 7),
        ("img:8", "candidate", "candidate", 8, 0.0, 10.0, "images/c4/c8.png", 7),
        ("img:9", "pick", "picked", 9, 10.0, 10.0, "images/c4/c9.png", 7),
    ]
    f = pd.DataFrame(rows, columns=["key", "kind", "status", "image_id", "x", "y", "file", "anomaly_id"])
    f["label"], f["class_name"] = 4, "4"
    f["confidence"], f["uniqueness"], f["score"] = 0.9, 0.5, 1.15
    f.loc[f["kind"] == "real", ["confidence", "uniqueness", "score"]] = np.nan
    f["anomaly_id"] = f["anomaly_id"].astype(float)
    return f[COLUMNS]


PAGE = """<!doctype html><html><head><meta charset="utf-8"><script>{plotly}</script><script>{plot_js}</script>
</head><body><div id="umap-click"><label><textarea></textarea></label></div>
<button id="umap-open-btn">open</button>
<div id="class-umap" style="width:700px"></div>
<script>
window.opened = []; window.inputs = 0;
const box = document.querySelector('#umap-click textarea');
box.addEventListener('input', () => window.inputs++);
document.getElementById('umap-open-btn').addEventListener('click', () => window.opened.push(box.value));
window.fig = {fig};
setTimeout(() => {{  // rendered late, as Gradio does
  const gd = document.createElement('div'); gd.id = 'gd';
  document.getElementById('class-umap').appendChild(gd);
  Plotly.newPlot(gd, fig.data, fig.layout);
}}, 300);
</script></body></html>"""


def test_plot_js_shows_thumbnails_and_opens_anomalies_in_a_browser(tmp_path):
    from test_app_browser import FLAGS, chromium_path

    exe = chromium_path()
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no Chromium found")
        pytest.skip("no Chromium found")
    from playwright.sync_api import sync_playwright
    from plotly.offline import get_plotlyjs

    fig = class_figure(browser_frame(), "class 4", lambda f: f"data:image/png;base64,{f}")
    page_file = tmp_path / "page.html"
    page_file.write_text(PAGE.format(plotly=get_plotlyjs(), plot_js=PLOT_JS, fig=fig.to_json()))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri())
            page.wait_for_selector("#gd[data-curator-umap]")

            def at(image_id: str) -> tuple[float, float]:
                """Screen position of the point whose customdata[0] is ``image_id``."""
                return page.evaluate(
                    """(id) => {
                    const gd = document.getElementById('gd'), fl = gd._fullLayout, r = gd.getBoundingClientRect();
                    for (const t of gd._fullData) {
                      const i = (t.customdata || []).findIndex((c) => c[0] === id);
                      if (i >= 0) return [r.left + fl._size.l + fl.xaxis.l2p(t.x[i]),
                                          r.top + fl._size.t + fl.yaxis.l2p(t.y[i])];
                    }
                    return null; }""",
                    image_id,
                )

            def click(xy: tuple[float, float]) -> None:
                page.mouse.move(*xy)
                page.wait_for_timeout(150)  # plotly throttles hover; a click goes to the hovered point
                page.mouse.click(*xy)

            tip = page.locator("#umap-thumb-tip")
            page.mouse.move(*at("9"))
            tip.wait_for(state="visible")
            assert tip.get_attribute("src") == "data:image/png;base64,images/c4/c9.png"
            page.mouse.move(5, 690)
            tip.wait_for(state="hidden")
            click(at("9"))
            page.wait_for_function("window.opened.length === 1")
            # a candidate (or pick) opens its anomaly with that candidate selected: "anomaly:candidate"
            assert page.evaluate("[window.opened, window.inputs]") == [["7:9"], 1]
            # a Gradio update (Plotly.react) keeps one set of handlers; a re-initialised div gets them again
            page.evaluate("Plotly.react(document.getElementById('gd'), fig.data, fig.layout)")
            click(at("8"))
            page.wait_for_function("window.opened.length === 2")
            page.evaluate("Plotly.purge(document.getElementById('gd'))")
            page.evaluate("Plotly.newPlot(document.getElementById('gd'), fig.data, fig.layout)")
            page.wait_for_timeout(200)
            click(at("7"))
            page.wait_for_function("window.opened.length === 3")
            assert page.evaluate("window.opened") == ["7:9", "7:8", "7"]  # the anomaly itself: its id alone
            # a point without an anomaly (the real image) opens nothing and shows no thumbnail
            real = page.evaluate(
                """() => { const gd = document.getElementById('gd'), fl = gd._fullLayout,
                r = gd.getBoundingClientRect();
                return [r.left + fl._size.l + fl.xaxis.l2p(0), r.top + fl._size.t + fl.yaxis.l2p(0)]; }"""
            )
            click(real)
            page.wait_for_timeout(300)
            assert page.evaluate("window.opened.length") == 3 and not tip.is_visible()
            assert errors == []
            assert json.loads(fig.to_json())["data"][0]["customdata"][0] == ["", "real", "real", "", "", ""]
        finally:
            browser.close()
