"""The app in a real browser: headless Chromium driven by Python playwright (design §3).

At 1400×900, as a person reviews: a failed Start whose message (with ``<`` and ``>``) is still
on screen 3 s later, an out-of-range tau refused, a tiny run of all classes, the ★ on the pick the
pipeline stored, the candidate grid and the action bar inside the viewport (screenshot), a card
click that selects, a candidate of another class kept only on a second press, N walking the queue
over every anomaly once across classes, U undoing a decision of another class and moving the view
there, the class map (hover thumbnail, a click opens the anomaly, a click on a candidate selects
it), a reload that returns to the same anomaly, export and download. A second test starts two runs
in a row and checks that nothing of the first stays on screen. Screenshots go to
``test-artifacts/browser/`` (git-ignored). Without a Chromium the test skips, except under
``CI=true``, where it fails.

Every wait is for the state asserted (``wait_for_function``, playwright's ``expect``), never for
time; the one ``time.sleep`` checks that a message *stays* 3 s.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.app_scale import BROWSER_FLAGS

torch.set_num_threads(1)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
FLAGS = BROWSER_FLAGS  # Chromium's flags, one list for the tests and the benchmarks


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no Chromium found: apt-get install -y chromium chromium-driver")
        pytest.skip("no Chromium found (apt-get install -y chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def status(page):
    return page.locator("#status")


def fill_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Tab")


def msg(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def wait_msg(page, elem_id: str, pattern: str, timeout: int = 120_000) -> str:
    page.wait_for_function(
        "([id, p]) => { const el = document.querySelector(`#${id} textarea, #${id} input`);"
        " return el && new RegExp(p).test(el.value); }",
        arg=[elem_id, pattern],
        timeout=timeout,
    )
    return msg(page, elem_id)


def shown_anomaly(page) -> int | None:
    v = page.locator("#anomaly-id input").input_value()
    return int(float(v)) if v else None


def wait_anomaly(page, aid: int) -> None:
    """Wait until the panel shows anomaly ``aid``: its summary names exactly that id. (A substring
    wait, "Anomaly #1", was already met by a previous "Anomaly #16": the test then read the class
    picker before the response arrived, the flake of issue 17.)"""
    page.wait_for_function(
        "v => { const md = document.querySelector('#anomaly-md'), box = document.querySelector('#anomaly-id input');"
        " return box && box.value === v && md"
        " && new RegExp('Anomaly #' + v + '(?!\\d)').test(md.innerText); }",
        arg=str(aid),
    )


def class_shown(page) -> str:
    return page.locator("#class-dd input").input_value()


def expect_class(page, label: int) -> None:
    """The class picker reads class ``label`` (waits for it, never for time)."""
    from playwright.sync_api import expect

    expect(page.locator("#class-dd input")).to_have_value(re.compile(rf"^{label} · "))


def test_review_a_run_in_a_browser(browser, app, tmp_path):
    """The review panel as a person uses it, at 1400×900: errors that stay, the pipeline's ★, cards
    that select, one queue across classes, undo that moves the view, the class map, export."""
    from curator.store import RunStore

    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app["url"])
        page.get_by_text("The curator", exact=True).first.wait_for()
        page.get_by_text("Device in use:").wait_for()
        shot(page, "01-loaded")

        # a failed Start: its message (with < and > as they are) is still next to Start 3 s later
        flat = tmp_path / "flat"
        flat.mkdir()
        (flat / "notes.txt").write_text("not images")
        page.get_by_label("folder on the server").check()
        page.get_by_label("ImageFolder path on the server").fill(str(flat))
        page.get_by_label("model folders").check()
        page.get_by_label("Generator folder").fill(app["gen"])
        page.get_by_label("Detector folder").fill(app["det"])
        fill_number(page, "IPC (images per class)", 3)
        fill_number(page, "K (candidates per anomaly)", 4)
        fill_number(page, "DDIM steps", 2)
        fill_number(page, "tau (confidence threshold)", 5)  # out of range: refused, not clamped
        page.locator("#start-btn").click()
        wait_msg(page, "setup-msg", "tau must be in \\[0, 1\\], got 5")
        fill_number(page, "tau (confidence threshold)", 0.99)
        page.locator("#start-btn").click()
        wait_msg(page, "setup-msg", "is not an ImageFolder")
        time.sleep(3)
        failed = msg(page, "setup-msg")
        assert "expected root/<class>/<image>" in failed and str(app["runs"]) not in failed
        shot(page, "02-start-error-after-3s")

        page.get_by_label("ImageFolder path on the server").fill(app["data"])
        page.locator("#start-btn").click()
        wait_msg(page, "setup-msg", "run run-.* created")
        run_id = re.search(r"run-[\w-]+", page.locator("#run-info").inner_text()).group(0)
        store = RunStore.open(Path(app["runs"]) / run_id)

        page.get_by_role("tab", name="Curate").click()
        page.locator("#run-all-btn").click()
        wait_msg(page, "run-msg", "all 2 classes done")
        queue = [a.id for a in store.anomalies()]
        assert {a.label for a in store.anomalies()} == {0, 1}  # tau 0.99: anomalies in both classes
        wait_anomaly(page, queue[0])  # opened on the first anomaly to review

        # the ★ is on the pick the pipeline stored
        aid = shown_anomaly(page)
        cards = page.locator("#candidates .card")
        assert cards.count() == 4
        pick = store.auto_pick(aid)
        starred = page.locator("#candidates .card:has(.star)")
        assert [int(c) for c in starred.evaluate_all("els => els.map(e => e.dataset.cid)")] == (
            [pick] if pick is not None else []
        )
        # one screen per anomaly: the candidate grid and the action bar fit a 1400×900 viewport
        for sel in ("#candidates .cards", "#action-bar", "#original", "#accept-btn", "#status"):
            box = page.locator(sel).bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 900 and box["x"] + box["width"] <= 1400, sel
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "03-curate-1400x900.png"))  # the viewport only
        page.locator("#class-gallery").scroll_into_view_if_needed()  # scrolled down to the synthetic set ...
        page.mouse.wheel(0, 400)
        page.wait_for_function("() => window.scrollY > 200")
        box = page.locator("#action-bar").bounding_box()  # ... the action bar stays in view
        assert box and -1 <= box["y"] <= 60, box
        page.evaluate("window.scrollTo(0, 0)")

        # a click on a card selects it; "Use selected" keeps a candidate of the class at once
        a = store.image(aid)
        cands = store.candidates(aid)
        other = next(c.id for c in cands if c.id != pick and c.predicted == a.label)
        page.locator(f'#candidates .card[data-cid="{other}"]').click()
        page.wait_for_function("v => document.querySelector('#candidate-id input').value === v", arg=str(other))
        page.locator("#choose-btn").click()
        wait_msg(page, "status", f"#{aid}: candidate #{other} kept \\(overridden\\)")
        page.locator(f'#candidates .card.chosen[data-cid="{other}"]').wait_for()
        assert store.decision(aid).candidate_id == other

        # ... but one the detector assigns to another class needs a second press, and says so
        off_aid, off = next((x.id, c.id) for x in store.anomalies() if x.id != aid for c in store.candidates(x.id)
                            if c.predicted != x.label)  # fmt: skip
        show(page, off_aid)
        before = store.decision(off_aid)
        page.locator(f'#candidates .card[data-cid="{off}"]').click()
        wait_msg(page, "status", f"candidate #{off} selected: .*needs a second press")
        page.locator("#choose-btn").click()
        wait_msg(page, "status", f"#{off} is predicted as class .*press “Use selected” again to keep it anyway")
        assert store.decision(off_aid) == before  # nothing kept on the first press
        page.locator("#choose-btn").click()
        wait_msg(page, "status", f"#{off_aid}: candidate #{off} kept \\(overridden\\), though the detector predicts")
        assert store.decision(off_aid).candidate_id == off
        page.locator("#anomaly-md").get_by_text("kept though it is assigned to another class").wait_for()

        # N walks the queue: every anomaly of the run once, the class picker following
        show(page, queue[0])
        page.locator("#anomaly-md").click()  # focus out of any text field
        for q in queue:
            wait_anomaly(page, q)
            expect_class(page, store.image(q).label)
            page.keyboard.press("n")
        wait_anomaly(page, queue[0])  # wrapped around
        assert {store.image(q).label for q in queue} == {0, 1}

        # undo across classes: a decision in class b, then U while looking at class a
        first_b = next(x.id for x in store.anomalies(1) if x.id != off_aid)
        show(page, first_b)
        page.locator("#drop-btn").click()
        wait_msg(page, "status", f"#{first_b}: dropped")
        show(page, queue[0])
        expect_class(page, 0)
        page.locator("#anomaly-md").click()
        page.keyboard.press("u")
        wait_msg(page, "status", f"undone on #{first_b} \\(class b\\): dropped")
        wait_anomaly(page, first_b)
        expect_class(page, 1)
        shot(page, "04-undone")

        # the class map: hover thumbnails; a click on an anomaly opens it, on a candidate selects it too
        page.get_by_role("tab", name="Embeddings").click()
        wait_msg(page, "umap-msg", "class b: .* in ")
        target = queue[-1] if store.image(queue[-1]).label == 1 else first_b
        page.wait_for_function(POINT_XY, arg=[str(target), "anomaly"])  # plotted, with plotly's axes
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "05-class-map.png"))
        page.get_by_role("tab", name="Curate").click()
        show(page, queue[0])
        page.get_by_role("tab", name="Embeddings").click()
        wait_msg(page, "umap-msg", "class a: .* in ")
        target = queue[0]
        page.wait_for_function(POINT_XY, arg=[str(target), "anomaly"])
        xy = page.evaluate(POINT_XY, [str(target), "anomaly"])
        page.mouse.move(xy[0], xy[1])
        page.locator("#umap-thumb-tip").wait_for(state="visible")  # hover shows the thumbnail
        page.mouse.click(xy[0], xy[1])
        wait_anomaly(page, target)
        page.locator("#candidates .cards").first.wait_for(state="visible")  # back in Curate
        page.get_by_role("tab", name="Embeddings").click()
        pick0 = store.auto_pick(target)
        cand = next(c.id for c in store.candidates(target) if c.id not in (pick0, store.decision(target).candidate_id))
        # plotly's own click event on that point (a mouse click could land on a neighbour in a dense map)
        page.wait_for_function(CLICK_CANDIDATE, arg=str(cand))
        wait_anomaly(page, target)
        page.wait_for_function("v => document.querySelector('#candidate-id input').value === v", arg=str(cand))
        page.locator(f'#candidates .card.selected[data-cid="{cand}"]').wait_for()  # the clicked one, not the ★

        # a reload returns to the place: the Curate tab, the class and the anomaly in view
        place = queue[-1]
        show(page, place)
        page.reload()
        page.locator("#run-info").get_by_text(run_id).first.wait_for()
        wait_anomaly(page, place)
        expect_class(page, store.image(place).label)
        page.locator("#candidates .cards").first.wait_for(state="visible")  # the Curate tab is open

        page.get_by_role("tab", name="Export").click()
        page.locator("#export-btn").click()
        wait_msg(page, "export-msg", "exported")
        with page.expect_download() as info:
            page.locator("#download-btn").click()
        zip_path = tmp_path / "export.zip"
        info.value.save_as(zip_path)
        shot(page, "06-exported")
        with zipfile.ZipFile(zip_path) as zf:
            meta = pd.read_csv(zf.open("provenance.csv"))
        kept = meta.set_index("candidate_id")  # the audit columns say which candidate answers which anomaly
        assert kept.loc[other, "anomaly_id"] == aid and kept.loc[off, "anomaly_id"] == off_aid
        assert kept.loc[off, "predicted_class"] != kept.loc[off, "class_name"]  # the off-class keep, on record
        assert set(kept.loc[[other, off], "decision"]) <= {"overridden", "accepted"}  # review.DECISION_STATES
    except Exception:
        shot(page, "failure")
        raise
    finally:
        context.close()


def start_run(page, app, seed: int) -> str:
    """Start a tiny run on the app's test models from Set-up; its run id."""
    page.get_by_role("tab", name="Set-up").click()
    page.get_by_label("folder on the server").check()
    page.get_by_label("ImageFolder path on the server").fill(app["data"])
    page.get_by_label("model folders").check()
    page.get_by_label("Generator folder").fill(app["gen"])
    page.get_by_label("Detector folder").fill(app["det"])
    for label, value in (("IPC (images per class)", 3), ("K (candidates per anomaly)", 4), ("DDIM steps", 2),
                         ("tau (confidence threshold)", 0.99), ("seed", seed)):  # fmt: skip
        fill_number(page, label, value)
    before = msg(page, "setup-msg")
    page.locator("#start-btn").click()
    page.wait_for_function(  # a new "created" message, not the last run's
        "([old]) => { const el = document.querySelector('#setup-msg textarea, #setup-msg input');"
        " return el && el.value !== old && /run run-.* created/.test(el.value); }",
        arg=[before],
    )
    return re.search(r"run-[\w-]+", msg(page, "setup-msg")).group(0)


def test_a_second_run_shows_nothing_of_the_first(browser, app):
    """Start a run and run it all, then start another: no message, label, map or export of the first
    stays on screen, and the runs list tells both apart with their progress as it stands."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app["url"])
        page.get_by_text("Device in use:").wait_for()
        first = start_run(page, app, seed=11)
        page.get_by_role("tab", name="Curate").click()
        page.locator("#run-all-btn").click()
        wait_msg(page, "run-msg", "all 2 classes done")
        page.locator("#original").get_by_text("Flagged #").first.wait_for()
        page.get_by_role("tab", name="Export").click()
        page.locator("#export-btn").click()
        wait_msg(page, "export-msg", "exported")

        second = start_run(page, app, seed=12)
        assert second != first
        page.locator("#run-info").get_by_text(second).first.wait_for()
        wait_msg(page, "status", "class a has not been run yet")
        for elem_id in ("run-msg", "export-msg", "umap-msg"):  # a tab never opened has no element: nothing shown
            page.wait_for_function(
                "id => { const el = document.querySelector(`#${id} textarea, #${id} input`);"
                " return !el || !el.value; }",
                arg=elem_id,
            )
        assert msg(page, "run-msg") == "" and msg(page, "export-msg") == ""  # both were on screen in the first run
        page.get_by_role("tab", name="Curate").click()
        page.locator("#anomaly-md").get_by_text("This class has not been run yet.").wait_for()
        from playwright.sync_api import expect

        expect(page.locator("#original")).not_to_contain_text("Flagged #")  # no image label of the first run
        expect(page.locator("#class-dd input")).to_have_value(re.compile(r"^0 · a — not run yet"))
        page.get_by_role("tab", name="Export").click()
        expect(page.locator("#download-btn")).to_be_hidden()
        page.get_by_role("tab", name="Set-up").click()
        page.locator("#runs-dd input").click()  # the runs list: both, each with its progress and date
        options = page.get_by_role("option")
        expect(options.filter(has_text=first)).to_contain_text(re.compile(r"τ 0\.99 · 2/2 classes · \d{4}-"))
        expect(options.filter(has_text=second)).to_contain_text(re.compile(r"τ 0\.99 · 0/2 classes · \d{4}-"))
        shot(page, "07-second-run")
    except Exception:
        shot(page, "failure-second-run")
        raise
    finally:
        context.close()


def show(page, aid: int) -> None:
    """Type an anomaly id and press Show; wait until it is in view."""
    page.locator("#anomaly-id input").fill(str(aid))
    page.locator("#show-btn").click()
    wait_anomaly(page, aid)


# Emit plotly's click event for the class map's candidate point whose image id (customdata[0]) is
# ``cid``, as plotly does for a click on it; true once done (false while the map is not drawn yet).
CLICK_CANDIDATE = """
(cid) => {
  const gd = document.querySelector('#class-umap .js-plotly-plot');
  if (!gd || !gd._fullData || !gd.__curatorOn) return false;
  for (const t of gd._fullData) {
    const cd = t.customdata || [];
    for (let i = 0; i < cd.length; i++) {
      if (cd[i] && String(cd[i][0]) === cid && (cd[i][1] === 'candidate' || cd[i][1] === 'pick')) {
        gd.emit('plotly_click', {points: [{customdata: cd[i], pointIndex: i}], event: {}});
        return true;
      }
    }
  }
  return false;
}
"""

# Page coordinates of the class map's point of ``kind`` whose anomaly id (customdata[5]) is ``aid``,
# from plotly's own axes.
POINT_XY = """
([aid, kind]) => {
  const gd = document.querySelector('#class-umap .js-plotly-plot');
  if (!gd || !gd._fullLayout) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  for (const t of gd._fullData) {
    const cd = t.customdata || [];
    for (let i = 0; i < cd.length; i++) {
      if (cd[i] && String(cd[i][5]) === aid && cd[i][1] === kind) {
        return [r.left + xa._offset + xa.l2p(t.x[i]), r.top + ya._offset + ya.l2p(t.y[i])];
      }
    }
  }
  return null;
}
"""
