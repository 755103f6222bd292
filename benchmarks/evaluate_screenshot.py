"""The Evaluate tab's screenshot for the README (docs/evaluate.png), from a real evaluation in the browser.

    .venv/bin/python benchmarks/evaluate_screenshot.py [RUN_DIR] [--seeds 3] [--epochs 25]

RUN_DIR (default: a new default run, ``python -m curator run --data mnist5k``, in
benchmarks/_work/eval_shot) is opened in the app (served in this process on 127.0.0.1, a free
port). Unless it already holds decisions, a person's review is simulated with two decisions, so
that "curated, with your decisions" differs from "automatic": the first anomaly is kept as its
original and the second dropped. Then, in headless Chromium at 1400×900: Reopen the run, open the
Evaluate tab, all four sets, hard labels, ConvNet-3, ``--seeds`` seeds of ``--epochs`` epochs each
(the default protocol's 300 epochs take about 6 minutes a student at IPC 10 on one CPU core, so
the picture uses fewer; the table in the picture says how many), Start, wait for the end, and save

* docs/evaluate.png: the tab from its form down to the comparison and the charts (the viewport);
* docs/evaluate-tables.png: the per-set, per-class and per-student tables below.

Prints the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from test_app_browser import FLAGS, chromium_path, wait_msg  # noqa: E402


def main() -> int:
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}.items():
        os.environ.setdefault(k, v)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=25)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from curator.review import user_decide
    from curator.store import RunStore
    from curator.ui import AppSettings, build_demo, launch_kwargs

    if args.run is None:
        work = REPO / "benchmarks" / "_work" / "eval_shot"
        run = work / "default"
        if not (run / "run.sqlite").is_file():
            cmd = [sys.executable, "-m", "curator", "run", "--data", "mnist5k", "--out", str(work)]
            subprocess.run([*cmd, "--run-id", "default"], check=True)
    else:
        run = Path(args.run).resolve()
    store = RunStore.open(run)
    try:
        anomalies = store.anomalies()
        if len(anomalies) >= 2 and all(getattr(store.decision(a.id), "source", "auto") != "user" for a in anomalies):
            user_decide(store, anomalies[0].id, "original")
            user_decide(store, anomalies[1].id, "drop")
    finally:
        store.close()

    settings = AppSettings(runs_dir=run.parent)
    demo = build_demo(settings)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs(settings))  # fmt: skip
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(demo.local_url)
            page.locator("#runs-dd input").fill(str(run))
            page.locator("#open-btn").click()
            page.locator("#run-info").get_by_text(run.name).first.wait_for()
            page.get_by_role("tab", name="Evaluate").click()
            page.locator("#eval-comparison").wait_for()
            for box, value in (("#eval-seeds input", args.seeds), ("#eval-epochs input", args.epochs)):
                page.locator(box).fill(str(value))
                page.locator(box).press("Tab")
            t0 = time.time()
            page.locator("#eval-start-btn").click()
            wait_msg(page, "eval-msg", "^✔ done in", timeout=3_600_000)
            print(f"evaluation: {time.time() - t0:.0f} s in the browser")
            page.locator("#eval-help").scroll_into_view_if_needed()
            page.evaluate("window.scrollTo(0, document.querySelector('#eval-sets').getBoundingClientRect().top"
                          " + window.scrollY - 8)")  # fmt: skip
            page.wait_for_timeout(500)  # plotly's resize animation
            page.screenshot(path=str(REPO / "docs" / "evaluate.png"))
            page.locator("#eval-summary").scroll_into_view_if_needed()
            page.evaluate("window.scrollTo(0, document.querySelector('#eval-summary').getBoundingClientRect().top"
                          " + window.scrollY - 8)")  # fmt: skip
            page.wait_for_timeout(300)
            page.screenshot(path=str(REPO / "docs" / "evaluate-tables.png"))
            browser.close()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
