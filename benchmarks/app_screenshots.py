"""Screenshots of the real app for docs/, and its cold start, measured.

    taskset -c 1 .venv/bin/python benchmarks/app_screenshots.py [DEFAULT_RUN_FOLDER]

Starts ``python app.py`` (shipped models, mnist5k) as a subprocess with its runs folder in
benchmarks/_work/shots_runs and times it until http://127.0.0.1:7860/ answers (cold start).
Then, in headless Chromium: starts a run from the set-up form with the default parameters, runs
class ``CURATOR_SHOT_CLASS`` (default 3, which has a label mismatch with the shipped models), selects its first
anomaly and saves the class view to docs/class-view.png; reopens DEFAULT_RUN_FOLDER (a run with
the default parameters, copied in) and draws its UMAP into docs/umap.png (colour by class) and
docs/umap-by-status.png, timing each click until the plot shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from test_app_browser import FLAGS, chromium_path  # noqa: E402

URL = "http://127.0.0.1:7860/"


def wait_for_page(proc: subprocess.Popen, timeout: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(URL, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("the app did not answer")


def main() -> None:
    default_run = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    runs = REPO / "benchmarks" / "_work" / "shots_runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    if default_run is not None:
        shutil.copytree(default_run, runs / default_run.name, ignore=shutil.ignore_patterns("embedding", "export"))
    env = dict(os.environ, CURATOR_RUNS=str(runs), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env)
    try:
        cold = wait_for_page(proc)
        print(f"cold start until the page answers: {cold:.1f} s (process start to HTTP 200 on /)")
        shoot(default_run)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"total {time.perf_counter() - t0:.0f} s")


def shoot(default_run: Path | None) -> None:
    from playwright.sync_api import sync_playwright

    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(240_000)
        page.goto(URL)
        page.get_by_text("Device in use:").wait_for()
        page.locator("#start-btn").click()
        page.locator("#status").get_by_text("created").wait_for()
        page.get_by_role("tab", name="Curate").click()
        shot_class = os.environ.get("CURATOR_SHOT_CLASS", "3")
        page.locator("#class-dd input").fill(shot_class)
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        time.sleep(1)
        t0 = time.perf_counter()
        page.locator("#run-class-btn").click()
        page.locator("#status").get_by_text("done in").wait_for()
        print(f"class {shot_class} (default parameters) run from the browser in {time.perf_counter() - t0:.1f} s")
        page.locator("#status").screenshot(path=str(docs / "_status.png"))
        time.sleep(1)
        page.screenshot(path=str(docs / "class-view.png"), full_page=True)
        print(page.locator("#status").inner_text())

        if default_run is not None:
            page.get_by_role("tab", name="Set-up").click()
            page.get_by_label("Existing runs").click()
            page.get_by_role("option", name=default_run.name).first.click()
            page.locator("#open-btn").click()
            page.locator("#status").get_by_text("reopened").wait_for()
        page.get_by_role("tab", name="Embeddings").click()
        t0 = time.perf_counter()
        page.locator("#umap-btn").click()
        page.locator("#status").get_by_text("UMAP fitted now").wait_for()
        page.locator("#umap-plot .main-svg").first.wait_for()
        print(f"UMAP first, click to plot: {time.perf_counter() - t0:.1f} s · {page.locator('#status').inner_text()}")
        time.sleep(2)
        page.screenshot(path=str(docs / "umap.png"), full_page=True)
        t0 = time.perf_counter()
        page.get_by_label("status").check()  # colour by status: a second UMAP call, from the cache
        page.locator("#status").get_by_text("UMAP from cache").wait_for()
        print(f"UMAP cached, click to plot: {time.perf_counter() - t0:.1f} s · {page.locator('#status').inner_text()}")
        time.sleep(2)
        page.screenshot(path=str(docs / "umap-by-status.png"), full_page=True)
        (docs / "_status.png").unlink(missing_ok=True)
        browser.close()


if __name__ == "__main__":
    main()
