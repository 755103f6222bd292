"""The app in a real browser: headless Chromium driven by Python playwright (design §3).

At 1400×900, as a person reviews: a failed Start whose message (with ``<`` and ``>``) is still
on screen 3 s later, an out-of-range tau refused, a tiny run of all classes, the ★ on the pick the
pipeline stored, the candidate grid and the action bar inside the viewport (screenshot), a card
click that selects, N walking the queue over every anomaly once across classes, U undoing a
decision of another class and moving the view there, the class map (hover thumbnail, a click
opens the anomaly), reload, export and download. Screenshots go to ``test-artifacts/browser/``
(git-ignored). Without a Chromium the test skips, except under ``CI=true``, where it fails.
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

torch.set_num_threads(1)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


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
    page.wait_for_function("v => document.querySelector('#anomaly-id input').value === v", arg=str(aid))
    page.locator("#anomaly-md").get_by_text(f"Anomaly #{aid}").wait_for()


def class_shown(page) -> str:
    return page.locator("#class-dd input").input_value()


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
        time.sleep(0.5)
        assert page.evaluate("window.scrollY") > 200
        box = page.locator("#action-bar").bounding_box()  # ... the action bar stays in view
        assert box and -1 <= box["y"] <= 60, box
        page.evaluate("window.scrollTo(0, 0)")

        # a click on a card selects it; "Use selected" keeps it
        other = next(int(c) for c in cards.evaluate_all("els => els.map(e => e.dataset.cid)") if int(c) != pick)
        page.locator(f'#candidates .card[data-cid="{other}"]').click()
        page.wait_for_function("v => document.querySelector('#candidate-id input').value === v", arg=str(other))
        page.locator("#choose-btn").click()
        wait_msg(page, "status", f"#{aid}: candidate #{other} kept \\(overridden\\)")
        page.locator(f'#candidates .card.chosen[data-cid="{other}"]').wait_for()
        assert store.decision(aid).candidate_id == other

        # N walks the queue: every anomaly of the run once, the class picker following
        page.locator("#anomaly-md").click()  # focus out of any text field
        seen, classes = [], set()
        for _ in queue:
            seen.append(shown_anomaly(page))
            classes.add(class_shown(page).split(" ·")[0])
            page.keyboard.press("n")
            page.wait_for_function("v => document.querySelector('#anomaly-id input').value !== v", arg=str(seen[-1]))
        assert seen == queue and classes == {"0", "1"} and shown_anomaly(page) == queue[0]

        # undo across classes: a decision in class b, then U while looking at class a
        first_b = next(a.id for a in store.anomalies(1))
        page.locator("#anomaly-id input").fill(str(first_b))
        page.locator("#show-btn").click()
        wait_anomaly(page, first_b)
        page.locator("#drop-btn").click()
        wait_msg(page, "status", f"#{first_b}: dropped")
        page.locator("#anomaly-id input").fill(str(queue[0]))
        page.locator("#show-btn").click()
        wait_anomaly(page, queue[0])
        assert class_shown(page).startswith("0 ·")
        page.locator("#anomaly-md").click()
        page.keyboard.press("u")
        wait_msg(page, "status", f"undone on #{first_b} \\(class b\\): dropped")
        wait_anomaly(page, first_b)
        assert class_shown(page).startswith("1 ·")
        shot(page, "04-undone")

        # the class map: hover thumbnails, a click on an anomaly opens it in Curate
        page.get_by_role("tab", name="Embeddings").click()
        wait_msg(page, "umap-msg", "class b: .* in ")
        page.locator("#class-umap .js-plotly-plot").wait_for()
        time.sleep(1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "05-class-map.png"))
        target = queue[-1] if store.image(queue[-1]).label == 1 else first_b
        xy = page.evaluate(POINT_XY, [str(target), "anomaly"])
        assert xy, f"anomaly #{target} is not on the class map"
        page.get_by_role("tab", name="Curate").click()
        page.locator("#anomaly-id input").fill(str(queue[0]))
        page.locator("#show-btn").click()
        wait_anomaly(page, queue[0])
        page.get_by_role("tab", name="Embeddings").click()
        wait_msg(page, "umap-msg", "class a: .* in ")
        page.locator("#class-umap .js-plotly-plot").wait_for()
        time.sleep(1)
        target = queue[0]
        xy = page.evaluate(POINT_XY, [str(target), "anomaly"])
        assert xy, f"anomaly #{target} is not on the class map"
        page.mouse.move(xy[0], xy[1])
        page.locator("#umap-thumb-tip").wait_for(state="visible")  # hover shows the thumbnail
        page.mouse.click(xy[0], xy[1])
        page.locator("#anomaly-md").get_by_text(f"Anomaly #{target}").wait_for()
        assert page.locator("#candidates .cards").is_visible()  # back in Curate

        page.reload()  # the browser remembers its run: the same run and decision come back
        page.locator("#run-info").get_by_text(run_id).first.wait_for()
        page.get_by_role("tab", name="Curate").click()
        page.locator("#anomaly-md").get_by_text("Anomaly #").wait_for()

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
        user = meta[meta["decision"] == "overridden"]  # another candidate than the ★ (review.DECISION_STATES)
        assert len(user) == 1 and user["source"].iloc[0] == "refined"  # files are named by provenance
    except Exception:
        shot(page, "failure")
        raise
    finally:
        context.close()


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
