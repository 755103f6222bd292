"""The Evaluate tab in a real browser (headless Chromium, playwright; helpers of test_app_browser).

On a tiny run of the app's test models: start an evaluation of the curated and automatic sets,
one seed each, few epochs; the message line follows the student and its epoch; the result shows
(the curated-versus-automatic line, with the store's numbers); a reload reopens the Evaluate tab
with the same stored result. Screenshots go to ``test-artifacts/browser/``. Every wait is for the
state asserted, never for time.
"""

from __future__ import annotations

import re
from pathlib import Path

from test_app_browser import ARTIFACTS, browser, msg, shot, start_run, wait_msg  # noqa: F401 (fixture)

from curator.evaluation import _pct
from curator.store import RunStore, evaluations

EPOCHS = 40  # long enough to watch a few progress lines, short enough for 2 busy cores

# every value the message line takes, sampled each animation frame (a value lasts >= 0.5 s: POLL_SECONDS)
RECORD_MESSAGES = """
() => { window.__evalMsgs = []; const tick = () => {
  const el = document.querySelector('#eval-msg textarea, #eval-msg input');
  if (el && window.__evalMsgs[window.__evalMsgs.length - 1] !== el.value) window.__evalMsgs.push(el.value);
  window.__evalRaf = requestAnimationFrame(tick); }; tick(); }
"""


def comparison_text(page) -> str:
    return page.locator("#eval-comparison").inner_text()


def test_evaluate_a_run_and_read_the_result_after_a_reload(browser, app):  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app["url"])
        run_id = start_run(page, app, seed=7)
        page.get_by_role("tab", name="Curate").click()
        page.locator("#run-all-btn").click()
        wait_msg(page, "run-msg", "all 2 classes done")

        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#eval-comparison").get_by_text("No evaluation stored for this run yet").wait_for()
        # bad input is a message naming the thing, never a traceback
        page.locator("#eval-seeds input").fill("0")
        page.locator("#eval-start-btn").click()
        wait_msg(page, "eval-msg", "seeds must be between 1 and 10, got 0")

        page.get_by_label("unrefined synthesis").uncheck()
        page.get_by_label("random real").uncheck()
        page.locator("#eval-seeds input").fill("1")
        page.locator("#eval-epochs input").fill(str(EPOCHS))
        page.evaluate(RECORD_MESSAGES)
        page.locator("#eval-start-btn").click()
        wait_msg(page, "eval-msg", "done in \\d+ s: 2 student\\(s\\) trained, 2 set\\(s\\) evaluated")
        page.evaluate("() => cancelAnimationFrame(window.__evalRaf)")
        seen = page.evaluate("() => window.__evalMsgs")
        progress = [m for m in seen if re.search(rf"student [12] of 2 · .*seed 0 · epoch \d+ of {EPOCHS}", m)]
        assert progress, seen  # the student and its epoch were on screen while it trained

        store = RunStore.open(Path(app["runs"]) / run_id)
        try:
            records = {r.set_name: r for r in evaluations(store)}
        finally:
            store.close()
        assert set(records) == {"curated", "automatic"}
        assert all(r.status == "complete" and r.done_seeds == [0] and r.epochs == EPOCHS for r in records.values())
        expected = f"Curated, with your decisions: {_pct(records['curated'].mean)} ± 0.0 %"
        page.locator("#eval-comparison").get_by_text(expected).wait_for()
        assert f"automatic, the pipeline's picks: {_pct(records['automatic'].mean)}" in comparison_text(page)
        summary = page.locator("#eval-summary").inner_text()
        assert "curated (with your decisions)" in summary and "complete" in summary
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "eval-01-results-1400x900.png"))
        before = comparison_text(page)

        page.reload()  # the run, the Evaluate tab and its stored result come back
        page.locator("#run-info").get_by_text(run_id).first.wait_for()
        page.wait_for_function(  # the final text, not a pending event's timer over it
            "t => { const el = document.querySelector('#eval-comparison');"
            " return el && el.offsetParent !== null && el.innerText.trim() === t; }",
            arg=before.strip(),
        )
        assert "complete" in page.locator("#eval-summary").inner_text()
        shot(page, "eval-02-after-reload")
    except Exception:
        shot(page, "eval-failure")
        raise
    finally:
        context.close()
