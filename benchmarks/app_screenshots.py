"""Screenshots of the real app for the README (docs/*.png), and a few timings seen from the browser.

    .venv/bin/python benchmarks/app_screenshots.py

Starts ``python app.py`` as a subprocess with its runs folder in benchmarks/_work/shots_runs, on
a free port (``GRADIO_SERVER_PORT``: never another app already on 7860), and times it until its
page answers (cold start). Then, in headless Chromium at
1400×900: starts a run of mnist5k with the default parameters and the models of
``CURATOR_SHOT_MODELS`` (default: the shipped detector with the early generator, the testbed,
whose many anomalies make a representative picture; "shipped models" for the shipped pair),
presses "Run all classes" (timed until the first anomaly opens and until the run ends), picks
the anomaly whose candidate cards show the widest mix of marks (passes τ / below τ / other
class), records two decisions in its class (one accepted pick, one override), and saves:

* docs/setup.png: the Set-up tab with the models chosen (the viewport);
* docs/class-view.png: the Curate tab on that anomaly (the viewport);
* docs/tables.png: below it, the class's anomaly table and the candidates' scores, full width;
* docs/rounds.png: the same anomaly after "Regenerate K more": round 2 open, round 1 folded;
* docs/overview.png: the Overview tab (every column, the totals row);
* docs/export.png: the Export tab after an export (the Download button, the rounded preview);
* docs/class-map.png: the Embeddings tab's map of that class, hovering the anomaly's pick;
* docs/umap.png: the whole run's map, coloured by class.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from test_app_browser import FLAGS, POINT_XY, chromium_path, wait_msg  # noqa: E402

from curator.store import RunStore  # noqa: E402
from curator.ui.views import candidate_mark  # noqa: E402

RUNS = REPO / "benchmarks" / "_work" / "shots_runs"
DOCS = REPO / "docs"
MODELS = os.environ.get("CURATOR_SHOT_MODELS", "shipped detector, early generator (testbed)")
VIEWPORT = {"width": 1400, "height": 900}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(proc: subprocess.Popen, url: str, timeout: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("the app did not answer")


REUSE = os.environ.get("CURATOR_SHOT_REUSE") == "1"  # reopen the last finished run instead of running one


def main() -> None:
    if not REUSE:
        shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, CURATOR_RUNS=str(RUNS), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env)
    try:
        cold = wait_for_page(proc, url)
        print(f"cold start until the page answers: {cold:.1f} s (process start to HTTP 200 on /)", flush=True)
        shoot(url)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"total {time.perf_counter() - t0:.0f} s")


def mixed_anomaly(store: RunStore) -> tuple[int, int]:
    """(anomaly id, label) of the anomaly with a pick whose cards show the widest mix of marks,
    in a class with at least three anomalies when there is one."""
    tau, best = store.config.tau, None
    per_class = {}
    for a in store.anomalies():
        per_class.setdefault(a.label, []).append(a.id)
    for a in store.anomalies():
        marks = [candidate_mark(c.predicted, c.confidence, a.label, tau) for c in store.candidates(a.id)]
        counts = sorted((marks.count(m) for m in ("pass", "below", "other")), reverse=True)
        key = (store.auto_pick(a.id) is not None, len(per_class[a.label]) >= 3, sum(c > 0 for c in counts), counts[-1],
               counts[1])  # fmt: skip
        if best is None or key > best[0]:
            best = (key, a.id, a.label)
    return best[1], best[2]


def show(page, aid: int) -> None:
    page.locator("#anomaly-id input").fill(str(aid))
    page.locator("#show-btn").click()
    page.wait_for_function("v => document.querySelector('#anomaly-id input').value === v", arg=str(aid))
    page.locator("#anomaly-md").get_by_text(f"Anomaly #{aid}").wait_for()


def shoot(url: str) -> None:
    from playwright.sync_api import sync_playwright

    DOCS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(900_000)
        page.goto(url)
        page.get_by_text("Device in use:").wait_for()
        for models in ("model folders", MODELS):  # a choice (not the preselected one) fills in its defaults
            page.get_by_label(models, exact=True).check()
        try:
            wait_msg(page, "setup-msg", "defaults filled in", timeout=30_000)  # the form shows what will run
        except Exception:
            page.screenshot(path="/tmp/setup_fail.png")
            raise
        page.screenshot(path=str(DOCS / "setup.png"))
        if REUSE:
            run_id = sorted(p.parent.name for p in RUNS.glob("run-*/run.sqlite"))[-1]
            page.locator("#runs-dd input").fill(run_id)
            page.locator("#runs-dd input").press("Enter")
            page.locator("#open-btn").click()
            print(wait_msg(page, "setup-msg", f"reopened run {run_id}"), flush=True)
            page.get_by_role("tab", name="Curate").click()
        else:
            page.locator("#start-btn").click()
            print(wait_msg(page, "setup-msg", "run run-.* created"), flush=True)
            run_id = re.search(r"run-[\w-]+", page.locator("#run-info").inner_text()).group(0)
            page.get_by_role("tab", name="Curate").click()
            t0 = time.perf_counter()
            page.locator("#run-all-btn").click()
            page.wait_for_function("() => document.querySelector('#anomaly-id input').value !== ''", timeout=900_000)
            first = time.perf_counter() - t0
            done = wait_msg(page, "run-msg", "all 10 classes done", timeout=1_800_000)
            print(f"run all ({MODELS}), from the browser: first anomaly open after {first:.1f} s; {done}", flush=True)

        store = RunStore.open(RUNS / run_id)
        aid, label = mixed_anomaly(store)
        others = [a.id for a in store.anomalies(label) if a.id != aid]
        if len(others) >= 2:  # decision states in the class's table: one accepted pick, one override
            show(page, others[0])
            page.locator("#anomaly-md").click()  # focus out of the text fields for the keys
            page.keyboard.press("a")
            wait_msg(page, "status", f"#{others[0]}: automatic pick .* accepted")
            show(page, others[1])
            pick = store.auto_pick(others[1])
            alt = next((c.id for c in store.candidates(others[1]) if c.id != pick and c.predicted == label), None)
            if alt is not None:
                page.locator(f'#candidates .card[data-cid="{alt}"]').click()
                page.wait_for_function("v => document.querySelector('#candidate-id input').value === v", arg=str(alt))
                page.locator("#choose-btn").click()
                try:
                    wait_msg(page, "status", f"#{others[1]}: candidate #{alt} kept")
                except Exception:
                    page.screenshot(path="/tmp/shotfail.png")
                    print(
                        "status:",
                        page.locator("#status textarea").input_value(),
                        "shown:",
                        page.locator("#anomaly-id input").input_value(),
                        "selected:",
                        page.locator("#candidate-id input").input_value(),
                        flush=True,
                    )
                    raise
        show(page, aid)
        page.locator("#anomaly-md").click()
        page.evaluate("window.scrollTo(0, 0)")
        time.sleep(1.5)  # card images
        page.screenshot(path=str(DOCS / "class-view.png"))
        queue = page.locator("#queue-md").inner_text()
        print(f"class-view.png: anomaly #{aid} of class {store.class_names[label]} · {queue}", flush=True)
        page.locator("#anomaly-table").scroll_into_view_if_needed()
        page.locator("#anomaly-table").screenshot(path=str(DOCS / "tables.png"))

        page.get_by_role("tab", name="Overview").click()
        wait_msg(page, "overview-msg", "classes shown")
        page.wait_for_function("() => /10\\/10 done/.test((document.querySelector('#overview-table') || {}).innerText"
                               " || '')", timeout=60_000)  # fmt: skip  (the totals row is drawn)
        page.screenshot(path=str(DOCS / "overview.png"))
        page.get_by_role("tab", name="Export").click()
        page.locator("#export-btn").click()
        wait_msg(page, "export-msg", "exported")
        page.locator("#download-btn").wait_for()
        page.screenshot(path=str(DOCS / "export.png"))

        page.get_by_role("tab", name="Curate").click()
        page.locator("#regen-btn").click()
        wait_msg(page, "run-msg", f"#{aid}: round \\d+ of candidates added")
        page.locator("#candidates details.round[data-round='2']").wait_for()
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_function("() => [...document.querySelectorAll('#candidates details[open] img')].slice(0, 20)"
                               ".every(i => i.complete && i.naturalWidth > 0)")  # fmt: skip  (the cards' images)
        page.screenshot(path=str(DOCS / "rounds.png"))

        page.get_by_role("tab", name="Embeddings").click()
        t0 = time.perf_counter()
        msg = wait_msg(page, "umap-msg", f"class {store.class_names[label]}: .* in ")
        page.locator("#class-umap .js-plotly-plot").wait_for()
        print(f"class map, tab click to plot: {time.perf_counter() - t0:.1f} s · {msg}", flush=True)
        time.sleep(1)
        page.locator("#class-umap").scroll_into_view_if_needed()
        xy = page.evaluate(POINT_XY, [str(aid), "pick"]) or page.evaluate(POINT_XY, [str(aid), "anomaly"])
        if xy:
            page.mouse.move(xy[0] - 30, xy[1] - 30)
            page.mouse.move(xy[0], xy[1], steps=5)
            page.locator("#umap-thumb-tip").wait_for(state="visible")
            time.sleep(0.5)
        page.screenshot(path=str(DOCS / "class-map.png"))

        page.mouse.move(5, 5)
        t0 = time.perf_counter()
        page.locator("#umap-btn").click()
        msg = wait_msg(page, "umap-msg", "^✔ whole run: UMAP (fitted now|from cache)")
        page.locator("#umap-plot .main-svg").first.wait_for()
        print(f"whole-run map, click to plot: {time.perf_counter() - t0:.1f} s · {msg}", flush=True)
        time.sleep(2)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(DOCS / "umap.png"))
        store.close()
        browser.close()


if __name__ == "__main__":
    main()
