"""The review queue on a 100-class run in a real browser (issue 18), at 1400×900.

A run the pipeline made (``curator make-testbed`` glyphs, the testbed models, IPC 2, 3 steps; no
fabricated rows) is reopened in the app: the queue switched to doubt order and stepped with N, a
bulk accept previewed (its count), confirmed and undone with U in one step, and a class found by
typing in the class chooser (which lists all 1,000 classes of the testbed, 900 not run), and
the overview paged. Screenshots in ``test-artifacts/browser/``; with ``CURATOR_UPDATE_DOCS=1`` also
``docs/queue.png`` and ``docs/bulk-accept.png`` (the README shows them). Every wait is for the state
asserted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from test_app_browser import browser, msg, shot, wait_anomaly, wait_msg  # noqa: F401  (fixture and helpers)

from curator.cli import main as cli_main
from curator.review import bulk_targets, review_queue
from curator.store import RunStore

torch.set_num_threads(1)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DOCS = Path(__file__).resolve().parent.parent / "docs"
UPDATE_DOCS = os.environ.get("CURATOR_UPDATE_DOCS") == "1"  # a test run leaves the README's pictures alone
RUN_ID = "glyphs100"


@pytest.fixture(scope="module")
def app100(tmp_path_factory):
    """The app over a 100-class run of the testbed (made by the CLI, as a person would)."""
    from conftest import serving

    from curator.ui import AppSettings

    root = tmp_path_factory.mktemp("queue100")
    data = root / "data"
    # the testbed models know 1,000 classes: make them all (3 tiny images each), run the first 100
    assert cli_main(["make-testbed", str(data), "--classes", "1000", "--per-class", "3", "--test-per-class", "1",
                     "--size", "16"]) == 0  # fmt: skip
    args = ["run", "--data", str(data), "--generator", str(ASSETS / "testbed-generator"), "--detector",
            str(ASSETS / "testbed-detector"), "--ipc", "2", "--k", "3", "--steps", "3", "--strength", "0.3",
            "--device", "cpu", "--out", str(root / "runs"), "--run-id", RUN_ID,
            "--classes", ",".join(str(i) for i in range(100))]  # fmt: skip
    assert cli_main(args) == 0
    settings = AppSettings(runs_dir=root / "runs")
    with serving(settings) as url:
        yield {"url": url, "run": root / "runs" / RUN_ID}


def queue_line(page) -> str:
    return page.locator("#queue-md").inner_text()


def wait_queue(page, pattern: str) -> str:
    page.wait_for_function(
        "p => { const el = document.querySelector('#queue-md'); return el && new RegExp(p).test(el.innerText); }",
        arg=pattern,
    )
    return queue_line(page)


def user_decisions(run: Path) -> int:
    store = RunStore.open(run)
    try:
        return sum(d.source == "user" for d in store.decisions().values())
    finally:
        store.close()


def test_doubt_queue_bulk_accept_and_class_search_on_100_classes(browser, app100):  # noqa: F811
    from playwright.sync_api import expect

    store = RunStore.open(app100["run"])
    try:
        done = [c.label for c in store.classes() if c.status == "done"]
        assert done == list(range(100)) and len(store.class_names) == 1000  # the chooser lists all 1,000
        by_doubt = review_queue(store, order="doubt")
        n = len(by_doubt)
        will = len(bulk_targets(by_doubt, 0.9, 0.02))
    finally:
        store.close()
    assert n >= 50 and will >= 2, (n, will)  # the run has a queue worth ordering and picks to accept

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app100["url"])
        page.get_by_text("Device in use:").wait_for()
        page.locator("#runs-dd input").click()
        page.get_by_role("option").filter(has_text=RUN_ID).first.click()
        page.locator("#open-btn").click()
        wait_msg(page, "setup-msg", f"reopened run {RUN_ID}")
        page.get_by_role("tab", name="Curate").click()
        wait_queue(page, rf"^\d+ of {n} · ")  # the chain after Reopen has shown the first anomaly to review

        # doubt order: the position line names the place in it; N walks it
        page.locator("#queue-order").get_by_text("by doubt").click()
        wait_msg(page, "status", f"review queue: {n} anomalies by doubt")
        line = wait_queue(page, rf"^\d+ of {n} · .*\(by doubt\)")
        i = int(line.split(" of ")[0])
        ids = [q.anomaly_id for q in by_doubt]
        page.locator("#anomaly-md").click()  # focus out of the radio (keys in a field are the field's)
        for step in range(2):
            page.keyboard.press("n")
            want = ids[(i + step) % n]
            wait_anomaly(page, want)
            wait_queue(page, rf"^{(i + step) % n + 1} of {n} · ")
        expect(page.locator("#anomaly-md")).to_contain_text("Doubt ")
        page.keyboard.press("n")  # to the next: its doubt, the top of the queue when wrapping
        wait_anomaly(page, ids[(i + 2) % n])
        shot(page, "queue-100-doubt")
        if UPDATE_DOCS:
            page.screenshot(path=str(DOCS / "queue.png"))

        # bulk accept: a count before it runs, then one step that U takes back
        page.locator("#bulk-btn").click()
        text = wait_msg(page, "status", r"^⚠ Accept \d+ automatic pick")
        assert text.startswith(f"⚠ Accept {will} automatic pick"), text
        expect(page.locator("#bulk-confirm-btn")).to_be_visible()
        assert user_decisions(app100["run"]) == 0  # nothing happened before the confirmation
        if UPDATE_DOCS:
            page.screenshot(path=str(DOCS / "bulk-accept.png"))
        shot(page, "queue-100-bulk-confirm")
        page.locator("#bulk-confirm-btn").click()
        wait_msg(page, "status", f"bulk accept: {will} automatic picks accepted in one step")
        expect(page.locator("#bulk-confirm-btn")).to_be_hidden()
        assert user_decisions(app100["run"]) == will
        page.locator("#anomaly-md").click()
        page.keyboard.press("u")
        wait_msg(page, "status", f"undone the bulk accept: {will} decisions taken back")
        assert user_decisions(app100["run"]) == 0

        # the class chooser: typing filters its 1,000 choices by name or number
        box = page.locator("#class-dd input")
        box.click()
        box.press("Control+a")
        box.press_sequentially("glyph042")
        options = page.get_by_role("option", name=re.compile(r"^\d+ · glyph\d{3}"))  # class options only
        expect(options).to_have_count(1)
        options.first.click()
        expect(box).to_have_value(re.compile(r"^42 · glyph042"))
        wait_msg(page, "status", "class glyph042")
        shot(page, "queue-100-class-search")

        # the overview: 1,000 classes, 50 a page
        page.get_by_role("tab", name="Overview").click()
        wait_msg(page, "overview-msg", r"^✔ classes 1–50 of 1000 .* page 1 of 20")
        box = page.locator("#overview-page input")
        box.fill("2")
        box.press("Enter")
        wait_msg(page, "overview-msg", r"^✔ classes 51–100 of 1000 .* page 2 of 20")
        table = page.locator("#overview-table")
        expect(table).to_contain_text("glyph050")  # page 2 starts at class 50 ...
        expect(table).not_to_contain_text("glyph049")  # ... and holds nothing of page 1
        shot(page, "queue-100-overview")
    except Exception:
        shot(page, "failure-queue-100")
        raise
    finally:
        context.close()
