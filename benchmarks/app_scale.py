"""The app at 10, 100 and 1,000 classes (issue #18), through its own handlers, against its targets.

    python -m benchmarks.app_scale            # -> benchmarks/APP_SCALE.md (about 25 min on 2 cores)
    python -m benchmarks.app_scale --quick    # 10 classes, seconds -> benchmarks/_work/app_scale/quick/APP_SCALE.md

Data and models: the glyph testbed (``curator make-testbed``, made under benchmarks/_work/app_scale/
when missing; benchmarks/TESTBED.md) and ``assets/testbed-generator`` / ``assets/testbed-detector``,
at TESTBED.md's run parameters (IPC 10, K 5, 10 steps, strength 0.3; default tau and lambda). The
10- and 100-class runs are the first classes of the 1,000 (the models know 1,000 classes): they are
made as ``curator run --classes`` makes them and opened with the app's Reopen (``open_run``); the
1,000-class run is made with the app's Start (``start_run``).

Everything runs on one ``Callbacks`` in this process (as benchmarks/app_timings.py does), per size:
Run all (``run_all``, iterated as Gradio does: first reviewable anomaly, whole wall); the same run by
the CLI in a fresh process (``python -m curator run``, its printed wall); the keys N / A / J / U
(``step_anomaly``, ``decide(accept)``, ``next_unreviewed``, ``undo``); the class chooser's search,
the overview, bulk accept and its undo (called by name where this build has them, else "not
measured"); the whole-run map (first fit after the app's UMAP warm-up, then from its cache); the
export; and, on the largest run, Regenerate on the local engine against the app on Ray (after its
first job, on the app's pooled workers). The app's peak RSS is sampled while its handlers run (the
CLI runs in its own process). Each measurement is saved as it is made (``results.json``), so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "app_scale"
REPORT = REPO / "benchmarks" / "APP_SCALE.md"
GENERATOR, DETECTOR = REPO / "assets" / "testbed-generator", REPO / "assets" / "testbed-detector"
PARAMS = dict(ipc=10, k=5, steps=10, strength=0.3)  # benchmarks/TESTBED.md
SIZES, QUICK_SIZES = (10, 100, 1000), (10,)
KEY_REPEATS = 15  # N / A / J / U cycles per run

# (key, what, target at 1,000 classes, limit in seconds or a ratio, unit)
ROWS = [
    ("first_anomaly", "Run all classes → first anomaly reviewable", "< 15 s", 15.0, "s"),
    ("key_N", "N (next; handler)", "< 150 ms", 0.15, "ms"),
    ("key_A", "A (accept and next; handler)", "< 150 ms", 0.15, "ms"),
    ("key_J", "J (next to review; handler)", "< 150 ms", 0.15, "ms"),
    ("key_U", "U (undo; handler)", "< 150 ms", 0.15, "ms"),
    ("browser_keys", "N / A / J / U (seen in the browser)", "< 400 ms", 0.4, "ms"),
    ("class_search", "class chooser search (in the browser)", "< 300 ms", 0.3, "ms"),
    ("overview_page", "overview page (page 1 by class, page 10 by anomalies)", "< 500 ms", 0.5, "ms"),
    ("bulk_preview", "bulk accept: the count before it runs", "(< 2 s)", 2.0, "s"),
    ("bulk_accept", "bulk accept of 1,000 decisions", "< 2 s", 2.0, "s"),
    ("bulk_undo", "its undo", "< 2 s", 2.0, "s"),
    ("map_fit", "whole-run map, first fit", "< 20 s", 20.0, "s"),
    ("map_cached", "whole-run map, from cache", "< 2 s", 2.0, "s"),
    ("export", "export of the whole run", "< 60 s", 60.0, "s"),
    ("app_over_cli", "Run all, whole run: app ÷ CLI", "≤ 1.2", 1.2, "x"),
    ("ray_over_local", "Regenerate after the first job: app on Ray ÷ app local", "≤ 1.5", 1.5, "x"),
]
# --- measuring --------------------------------------------------------------------------------------


class RSS:
    """Samples this process's resident memory (and the load average) while the app's handlers run."""

    def __init__(self) -> None:
        self.peak_mb, self.loads, self.active = 0.0, [], threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def _sample(self) -> None:
        while True:
            if self.active.is_set():
                self.peak_mb = max(self.peak_mb, self.now_mb())
                self.loads.append(os.getloadavg()[0])
            time.sleep(0.2)


def guarded(key: str, fn, *args, **kwargs) -> dict:
    """``fn``'s results, or ``{key: "not measured: <the error>"}``: one failed phase keeps the others."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the row, the run goes on
        import traceback

        traceback.print_exc()
        return {key: f"not measured: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.is_available()}  # fmt: skip


# --- one size -----------------------------------------------------------------------------------------


def make_run(cb, args, n: int, total: int) -> dict:
    """A run of the first ``n`` classes: Start (all classes) or the CLI's --classes, then Reopen."""
    from curator.config import RunConfig
    from curator.engine import LocalEngine
    from curator.ui import resources
    from curator.ui.callbacks import DATA_SOURCES, MODEL_SOURCES

    for cache in (resources._DATA, resources._GENERATORS, resources._DETECTORS):  # each size loads afresh
        cache.clear()
    d = RunConfig()
    p = {**PARAMS, **args.params}
    t0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    if n == total:
        out = cb.start_run(DATA_SOURCES[1], str(args.data), None, MODEL_SOURCES[1], str(args.generator),
                           str(args.detector), p["ipc"], p["k"], d.tau, d.lam, p["steps"], p["strength"], d.guidance,
                           d.seed, None, d.uniqueness_centre)  # fmt: skip
        how = "Start (start_run)"
    else:
        config = RunConfig(data=str(args.data), generator=str(args.generator), detector=str(args.detector),
                           classes=[str(i) for i in range(n)], device="cpu", **p)  # fmt: skip
        data, gen, det = resources.components(config)
        engine = LocalEngine.create(config, str(cb.settings.runs_dir), data=data, generator=gen, detector=det)
        path = str(engine.store.path)
        engine.close()
        out = cb.open_run(path)
        how = "`curator run --classes` made, Reopen (open_run)"
    assert out[0].startswith("✔"), out[0]
    cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu0
    return {"state": out[1], "create_s": time.perf_counter() - t0, "create_cpu_s": cpu, "how": how}


def run_all(cb, state: dict) -> dict:
    from curator.ui.outputs import Panel

    aid_at = 1 + Panel._fields.index("anomaly_id")
    cpu0 = cpu_seconds(resource.RUSAGE_SELF)
    t0, first, yields, last = time.perf_counter(), None, 0, ""
    for out in cb.run_all(state, 0, None, progress=None):
        yields += 1
        last = out[0]
        if first is None and isinstance(out[aid_at], int):
            first = time.perf_counter() - t0
    assert last.startswith("✔ all"), last
    wall, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - cpu0
    return {"first_anomaly": first, "run_all_s": wall, "run_all_cpu_s": cpu, "yields": yields, "message": last}


def cpu_seconds(who: int) -> float:
    """CPU seconds (user + system) of this process (``RUSAGE_SELF``, every thread) or of its
    finished children (``RUSAGE_CHILDREN``): a measure of the work that the load does not stretch."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def cli_run(args, n: int, total: int, out: Path) -> dict:
    """The same run by ``curator run`` in a fresh process: the wall it prints (run creation to the end)."""
    p = {**PARAMS, **args.params}
    cmd = [sys.executable, "-m", "curator", "run", "--data", str(args.data), "--generator", str(args.generator),
           "--detector", str(args.detector), "--device", "cpu", "--out", str(out), "--run-id", f"cli{n}",
           *[f"--{k}={v}" for k, v in p.items()]]  # fmt: skip
    if n != total:
        cmd += ["--classes", ",".join(str(i) for i in range(n))]
    shutil.rmtree(out / f"cli{n}", ignore_errors=True)
    t0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=7200)
    process_s, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"curator run failed: {proc.stderr[-2000:]}")
    wall = float(re.search(r"run cli\d+: ([\d.]+) s wall", proc.stdout).group(1))
    return {"cli_s": wall, "cli_process_s": process_s, "cli_process_cpu_s": cpu}


def keys(cb, state: dict) -> dict:
    """N / A / J / U as the keys call them, around the review queue; per-key medians and maxima (s)."""
    from curator.review import review_queue
    from curator.store import RunStore
    from curator.ui.outputs import Panel

    aid_at = Panel._fields.index("anomaly_id")
    store = RunStore.open(state["run"])
    try:
        ids = [q.anomaly_id for q in review_queue(store)]
        with_pick = {a for a in ids if store.auto_pick(a) is not None}
    finally:
        store.close()
    times: dict[str, list[float]] = {"N": [], "A": [], "J": [], "U": []}
    if not with_pick:
        return {"key_A": "not measured: no anomaly has an automatic pick", "anomalies": len(ids)}
    aid = ids[0]
    for _ in range(KEY_REPEATS):
        t, out = timed(cb.step_anomaly, state, None, aid, 1)
        times["N"].append(t)
        aid = out[aid_at]
        target = aid if aid in with_pick else next(iter(with_pick))
        t, out = timed(cb.decide, state, None, target, None, "accept")
        assert out[0].startswith("✔"), out[0]
        times["A"].append(t)
        t, out = timed(cb.next_unreviewed, state, None, out[aid_at])
        times["J"].append(t)
        t, out = timed(cb.undo, state, None, out[aid_at])  # takes the accept back: the run is as it was
        assert out[0].startswith("✔ undone"), out[0]
        times["U"].append(t)
        aid = out[aid_at]
    return (
        {f"key_{k}": statistics.median(v) for k, v in times.items()}
        | {f"key_{k}_max": max(v) for k, v in times.items()}
        | {"anomalies": len(ids)}
    )


def probes(cb, state: dict) -> dict:
    """The overview's pages, and a bulk accept of 1,000 automatic picks (the first 1,000 its preview
    counts, whole queue, no threshold) with its one-step undo, through the app's handlers."""
    out: dict = {}
    t1, first = timed(cb.overview, state, "all classes", "label", False, 1)
    t10, tenth = timed(cb.overview, state, "with anomalies", "anomalies", True, 10)
    for res in (first, tenth):
        assert res[0].startswith("✔"), res[0]
    out |= {"overview_page": max(t1, t10), "overview_page_1_s": t1, "overview_page_10_s": t10,
            "overview_message": first[0]}  # fmt: skip
    t, (msg, _, _, pending) = timed(cb.bulk_preview, state, None, 0.0, 0.0)
    assert pending and pending["ids"], msg
    out["bulk_preview"], out["bulk_preview_count"] = t, len(pending["ids"])
    pending = {**pending, "ids": pending["ids"][:1000]}
    t, got = timed(cb.bulk_confirm, state, None, None, pending)
    assert got[0].startswith("✔ bulk accept"), got[0]
    out["bulk_accept"], out["bulk_message"] = t, got[0]
    t, res = timed(cb.undo, state, None, None)
    assert res[0].startswith("✔ undone"), res[0]
    out["bulk_undo"], out["bulk_undo_message"] = t, res[0]
    return out


def whole_map(cb, state: dict) -> dict:
    from curator.embedding import CACHE_DIR, warm_up

    shutil.rmtree(Path(state["run"]) / CACHE_DIR, ignore_errors=True)
    warm = warm_up()  # the app does this in the background at start (CURATOR_WARM_UMAP)
    t_fit, out = timed(cb.embedding, state, "class")
    assert out[0].startswith("✔") and "fitted now" in out[0], out[0]
    t_cached, out2 = timed(cb.embedding, state, "class")
    assert "from cache" in out2[0], out2[0]
    return {"map_fit": t_fit, "map_cached": t_cached, "map_points": int(str(out[2]).split()[0]), "umap_warm_up_s": warm}


def export(cb, state: dict) -> dict:
    t, out = timed(cb.export, state)
    assert out[0].startswith("✔ exported"), out[0]
    return {"export": t, "export_message": out[0]}


def regenerate_local_vs_ray(cb, state: dict, repeats: int) -> dict:
    """Regenerate on ``repeats`` anomalies with the local engine, then with CURATOR_ENGINE=ray: the
    first Ray job starts the pooled workers, the next ``repeats`` reuse them (medians compared)."""
    from curator.store import RunStore
    from curator.ui import jobs

    store = RunStore.open(state["run"])
    try:
        ids = [a.id for a in store.anomalies()][: 2 * repeats + 1]
    finally:
        store.close()
    local = [timed(cb.regenerate, state, None, a, progress=None)[0] for a in ids[:repeats]]
    os.environ["CURATOR_ENGINE"] = "ray"
    try:
        starts0 = jobs.engine_pool().starts
        first, out = timed(cb.regenerate, state, None, ids[repeats], progress=None)
        assert out[0].startswith("✔"), out[0]
        on_ray = [timed(cb.regenerate, state, None, a, progress=None)[0] for a in ids[repeats + 1 :]]
        starts = jobs.engine_pool().starts - starts0
    finally:
        os.environ.pop("CURATOR_ENGINE", None)
        jobs.close_engines()
        import ray

        ray.shutdown()
    med_local, med_ray = statistics.median(local), statistics.median(on_ray)
    return {"regen_local": med_local, "regen_ray_first": first, "regen_ray": med_ray,
            "ray_over_local": med_ray / med_local, "ray_worker_starts": starts}  # fmt: skip


# --- in the browser -----------------------------------------------------------------------------------

BROWSER_FLAGS = [
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
_CHANGED = (  # the panel shows another anomaly than ``old``, its summary names it (the chain's final effect)
    "old => { const box = document.querySelector('#anomaly-id input'), md = document.querySelector('#anomaly-md');"
    " return box && box.value && box.value !== old && md && new RegExp('Anomaly #' + box.value + '(?!\\d)')"
    ".test(md.innerText); }"
)
_STATUS = (  # the action bar's message changed from ``old`` and matches ``p``
    "([old, p]) => { const el = document.querySelector('#status textarea, #status input');"
    " return el && el.value !== old && new RegExp(p).test(el.value); }"
)


def browser_keys(settings, run_path: str, repeats: int = 5) -> dict:
    """N / A / J / U pressed in headless Chromium at 1400x900 on the app serving ``run_path``
    (reopened from Set-up): seconds from the key press to its final visible effect, medians."""
    from playwright.sync_api import expect, sync_playwright

    from curator.ui import build_demo, launch_kwargs

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return {"browser_keys": "not measured: no Chromium (apt-get install chromium)"}
    demo = build_demo(settings)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs(settings))  # fmt: skip
    times: dict[str, list[float]] = {"N": [], "A": [], "J": [], "U": [], "search": []}
    from curator.store import RunStore

    store = RunStore.open(run_path)
    names = [c.name for c in store.classes()]  # what the class chooser lists
    store.close()
    search_for = [names[i] for i in sorted({0, len(names) // 2, len(names) - 1})]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=BROWSER_FLAGS, headless=True)
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(120_000)
            t0 = time.perf_counter()
            page.goto(demo.local_url)
            page.get_by_text("Device in use:").wait_for()
            load = time.perf_counter() - t0
            page.locator("#runs-dd input").click()
            page.locator("#runs-dd input").fill(Path(run_path).name)
            page.keyboard.press("Enter")
            page.locator("#open-btn").click()
            page.locator("#run-info").get_by_text(Path(run_path).name).wait_for()
            page.get_by_role("tab", name="Curate").click()
            page.wait_for_function(_CHANGED, arg="")
            page.locator("#anomaly-md").click()  # focus out of any text field: the keys go to the page

            def press(key: str, js: str, arg) -> float:
                t = time.perf_counter()
                page.keyboard.press(key)
                page.wait_for_function(js, arg=arg)
                return time.perf_counter() - t

            def status() -> str:
                return page.locator("#status textarea, #status input").first.input_value()

            def aid() -> str:
                return page.locator("#anomaly-id input").input_value()

            page.locator("#anomaly-md").click()
            for _ in range(repeats):
                times["N"].append(press("n", _CHANGED, aid()))
                times["A"].append(press("a", _STATUS, [status(), "accepted|no automatic pick"]))
                times["J"].append(press("j", _CHANGED, aid()))
                times["U"].append(press("u", _STATUS, [status(), "undone on|nothing to undo"]))
            box = page.locator("#class-dd input")  # then the class chooser: type a name
            options = page.get_by_role("option", name=re.compile(r"^\d+ · "))  # class options only
            for name in search_for:
                box.click()
                box.press("Control+a")
                box.press_sequentially(name[:-1])
                t = time.perf_counter()
                box.press(name[-1])  # from the last key typed to the one option left
                expect(options).to_have_count(1)
                expect(options.first).to_contain_text(name)
                times["search"].append(time.perf_counter() - t)
                box.press("Escape")
            browser.close()
    finally:
        demo.close()
    search = times.pop("search")
    med = {k: statistics.median(v) for k, v in times.items()}
    per_key = {f"browser_{k}": v for k, v in med.items()}
    return {"browser_keys": max(med.values()), "browser_page_load_s": load, "class_search": statistics.median(search),
            "class_search_max": max(search)} | per_key  # fmt: skip


# --- the report ---------------------------------------------------------------------------------------


def fmt(value, unit: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if unit == "ms":
        return f"{1000 * value:.0f} ms"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:.1f} s"


def write_report(results: dict, path: Path, quick: bool) -> None:
    sizes = sorted(int(n) for n in results["sizes"])
    head = (
        "| what | target at 1,000 classes | " + " | ".join(f"{n:,} classes" for n in sizes) + " | met at the largest |"
    )
    lines = [head, "|" + "---|" * (3 + len(sizes))]
    for key, what, target, limit, unit in ROWS:
        cells = [fmt(results["sizes"][str(n)].get(key), unit) for n in sizes]
        last = results["sizes"][str(sizes[-1])].get(key)
        met = "–" if not isinstance(last, int | float) else ("yes" if last <= limit else "**no**")
        lines.append(f"| {what} | {target} | " + " | ".join(cells) + f" | {met} |")
    extra = [
        ("the app's whole run (Run all)", "run_all_s", "s"), ("the CLI's whole run (printed wall)", "cli_s", "s"),
        ("run creation in the app (models and data loaded)", "create_s", "s"),
        ("Run all, whole run: app ÷ CLI in CPU seconds (the load does not stretch these)", "app_over_cli_cpu", "x"),
        ("CPU seconds: app (creation + Run all) / CLI process", "cpu_pair", ""),
        ("Regenerate, local (median)", "regen_local", "s"), ("Regenerate, app on Ray (median after the first)",
        "regen_ray", "s"), ("Regenerate, app on Ray, the first (starts the pooled workers)", "regen_ray_first", "s"),
        ("peak RSS of the app process", "peak_rss_mb", "MB"), ("anomalies in the run", "anomalies", ""),
        ("whole-run map: points drawn", "map_points", ""),
        ("bulk accept: picks its preview counted (whole queue, no threshold)", "bulk_preview_count", ""),
    ]  # fmt: skip
    lines += ["", "| also measured | " + " | ".join(f"{n:,}" for n in sizes) + " |", "|" + "---|" * (1 + len(sizes))]
    for what, key, unit in extra:
        vals = [results["sizes"][str(n)].get(key) for n in sizes]
        cells = ["–" if v is None else (f"{v:.0f} MB" if unit == "MB" else fmt(v, unit) if unit else str(v))
                 for v in vals]  # fmt: skip
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    m = results["machine"]
    loads = results.get("load", {})
    text = [
        "# The app at scale (issue #18)",
        "",
        f"Written by `python -m benchmarks.app_scale{' --quick' if quick else ''}` on {results['date']}.",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, Python {m['python']}, torch {m['torch']} "
        f"({m['threads']} torch threads), GPU: {'yes' if m['gpu'] else 'none'}. **Load**: load average "
        f"{loads.get('start', '?')} at the start, {loads.get('end', '?')} at the end, mean "
        f"{loads.get('mean', '?')} while the app's handlers ran (other sessions share the machine).",
        "",
        f"Runs: {results.get('runs', '')}",
        "",
        *lines,
        "",
        *results.get("notes", []),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text).rstrip() + "\n")


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 classes, no Ray, no CLI process: seconds")
    p.add_argument("--sizes", default=None, help="class counts, e.g. 10,100,1000 (default: all three)")
    p.add_argument("--data", type=Path, default=None, help="an ImageFolder (default: the 1,000-class testbed)")
    p.add_argument("--generator", type=Path, default=GENERATOR)
    p.add_argument("--detector", type=Path, default=DETECTOR)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=None, help="the report (default: APP_SCALE.md, or work/quick/)")
    p.add_argument("--no-ray", action="store_true", help="skip Regenerate on Ray")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="skip the keys in Chromium")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the last results.json")
    p.add_argument("--regen-only", action="store_true",
                   help="only Regenerate local against Ray, on the largest run of results.json")  # fmt: skip
    p.add_argument(
        "--browser-only",
        action="store_true",
        help="measure only the keys in Chromium, on the runs of the last full run (results.json)",
    )
    p.add_argument("--no-map-above", type=int, default=None, help="skip the whole-run map above this many classes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--params", type=json.loads, default={}, help="run parameters over TESTBED.md's, JSON")
    args = p.parse_args(argv)
    args.browser = args.browser and not args.quick
    args.sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    sub = "quick" if args.quick else "full"
    args.out = args.out or (args.work / "quick" / "APP_SCALE.md" if args.quick else REPORT)
    args.data = args.data or args.work / "g1000"
    args.work = args.work / sub
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                       ("GRADIO_ANALYTICS_ENABLED", "False"), ("RAY_USAGE_STATS_ENABLED", "0")):  # fmt: skip
        os.environ.setdefault(var, value)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the CLI's process and Ray's workers alike
    if not args.data.exists():
        subprocess.run([sys.executable, "-m", "curator", "make-testbed", str(args.data), "--classes", "1000"],
                       cwd=REPO, check=True)  # fmt: skip
    from curator.data import load_dataset
    from curator.ui.callbacks import Callbacks
    from curator.ui.resources import AppSettings

    if args.browser_only:
        return browser_only(args)
    if args.regen_only:
        return regen_only(args)
    if args.report_only:
        results = json.loads((args.work / "results.json").read_text())
        results["notes"] = notes(results)
        write_report(results, args.out, args.quick)
        return 0
    total = load_dataset(str(args.data)).num_classes
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                     "sizes": {}, "load": {"start": round(os.getloadavg()[0], 2)}}  # fmt: skip
    p = {**PARAMS, **args.params}
    results["runs"] = (
        f"{args.data.name} ({total} classes), {args.generator.name} / {args.detector.name}, "
        f"{', '.join(f'{k} {v}' for k, v in p.items())}; default tau and lambda; local engine."
    )
    saved = args.work / "results.json"
    rss = RSS()

    def save() -> None:
        loads = rss.loads or [os.getloadavg()[0]]
        results["load"].update(end=round(os.getloadavg()[0], 2), mean=round(statistics.fmean(loads), 2))
        saved.write_text(json.dumps(results, indent=1, default=str))
        write_report(results, args.out, args.quick)

    cb = Callbacks(AppSettings(runs_dir=args.work / "runs"))
    for n in args.sizes:
        row: dict = results["sizes"].setdefault(str(n), {})
        print(f"--- {n} classes", flush=True)
        rss.active.set()
        made = make_run(cb, args, n, total)
        state = made.pop("state")
        row.update(made)
        row.update(run_all(cb, state))
        print(f"run_all: {row['run_all_s']:.1f} s, first anomaly {row['first_anomaly']}", flush=True)
        save()
        row["run"] = state["run"]
        row.update(keys(cb, state))
        row.update(guarded("bulk_accept", probes, cb, state))
        if args.browser:
            row.update(guarded("browser_keys", browser_keys, cb.settings, state["run"]))
        else:
            row["browser_keys"] = row["class_search"] = "not measured (--no-browser)"
        row["peak_rss_mb"] = rss.peak_mb
        save()
        if args.no_map_above is None or n <= args.no_map_above:
            row.update(guarded("map_fit", whole_map, cb, state))
        else:
            row["map_fit"] = row["map_cached"] = f"not measured (skipped above {args.no_map_above} classes)"
        row.update(export(cb, state))
        if not args.no_ray and not args.quick and n == max(args.sizes):
            row.update(guarded("ray_over_local", regenerate_local_vs_ray, cb, state, repeats=5))
        row["peak_rss_mb"] = rss.peak_mb
        rss.active.clear()
        save()
        if not args.quick:  # the CLI's own process (its start-up not counted: the printed wall)
            row.update(cli_run(args, n, total, args.work / "cli"))
        else:  # quick: the CLI's engine path in this process
            from curator.cli import main as cli_main

            t0 = time.perf_counter()
            argv = ["run", "--data", str(args.data), "--generator", str(args.generator), "--detector",
                    str(args.detector), "--device", "cpu", "--out", str(args.work / "cli"), "--run-id", f"cli{n}",
                    *[f"--{k}={v}" for k, v in p.items()]]  # fmt: skip
            if n != total:
                argv += ["--classes", ",".join(str(i) for i in range(n))]
            assert cli_main(argv) == 0
            row["cli_s"] = time.perf_counter() - t0
        row["app_over_cli"] = (row["create_s"] + row["run_all_s"]) / row["cli_s"]
        if "cli_process_cpu_s" in row:
            row["cpu_pair"] = f"{row['create_cpu_s'] + row['run_all_cpu_s']:.0f} / {row['cli_process_cpu_s']:.0f}"
            row["app_over_cli_cpu"] = (row["create_cpu_s"] + row["run_all_cpu_s"]) / row["cli_process_cpu_s"]
        save()
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, str)}, default=str), flush=True)
    results["notes"] = notes(results)
    save()
    print(f"wrote {args.out}", flush=True)
    return 0


def regen_only(args) -> int:
    """Regenerate local against the app on Ray again, on the largest run of the last full run (with
    ``--threads``: at that many torch threads), kept beside the first figures."""
    from curator.ui.callbacks import Callbacks
    from curator.ui.resources import AppSettings

    saved = args.work / "results.json"
    results = json.loads(saved.read_text())
    n = max(int(k) for k in results["sizes"])
    row = results["sizes"][str(n)]
    cb = Callbacks(AppSettings(runs_dir=args.work / "runs"))
    state = cb.open_run(row["run"])[1]
    import torch

    got = regenerate_local_vs_ray(cb, state, repeats=5)
    tag = f"threads{torch.get_num_threads()}"
    row[f"regen_{tag}"] = got
    print(json.dumps(got), flush=True)
    saved.write_text(json.dumps(results, indent=1, default=str))
    return 0


def browser_only(args) -> int:
    """The browser rows for the runs of the last full run, added to its results and report."""
    from curator.store import read_config
    from curator.ui.resources import AppSettings

    saved = args.work / "results.json"
    results = json.loads(saved.read_text())
    settings = AppSettings(runs_dir=args.work / "runs")
    for run in sorted(settings.runs_dir.glob("run-*")):
        config = read_config(run)
        n = len(config.classes) if config.classes else max(int(k) for k in results["sizes"])
        if str(n) in results["sizes"]:
            print(f"--- browser, {n} classes ({run.name})", flush=True)
            results["sizes"][str(n)].update(browser_keys(settings, str(run)))
    results["notes"] = notes(results)
    saved.write_text(json.dumps(results, indent=1, default=str))
    write_report(results, args.out, args.quick)
    print(f"wrote {args.out}", flush=True)
    return 0


# why a target is missed: what the code does there (read from it, not measured), by row
CAUSES = {
    "first_anomaly": "before the first group runs, the engine computes the feature centres of every class of the "
    "data (`Engine.centres`: up to `real_sample` real images per class through the detector, one class per detector "
    "call), once per run, and writes nothing a person can review until they are stored; the app then opens the "
    "first anomaly as soon as the first group (classes filling about four generator batches) is done",
    "overview_page": "each page is cut from the whole filtered and sorted table (`views.overview_frame`: the "
    "per-class summary of every class, read from the store in a few whole-run queries), so a page costs a pass over "
    "every class",
    "bulk_preview": "the preview builds the whole doubt queue (every anomaly with its candidates' scores) to count "
    "the picks that pass the thresholds",
    "bulk_accept": "one transaction writes a decision row per anomaly and the batch's log, then the panel is redrawn "
    "from the store",
    "bulk_undo": "the undo deletes the batch's decisions in one transaction, then the panel is redrawn from the store",
    "class_search": "Gradio's dropdown filters its choices in the browser; with 1,000 choices each keystroke "
    "re-filters and re-renders the list",
    "map_fit": "the whole-run map fits UMAP (single-threaded for a fixed seed) on a sample of at most "
    "`embedding.MAX_FIT` points and places every other point with `reducer.transform`, on the CPU",
    "map_cached": "from its cache the map still reads every point's row and feature from the store (about 1.2 s at "
    "43,000 points) and builds a WebGL plotly figure of every point (about 0.9 s), with the load of the machine "
    "on top",
    "browser_keys": "the handler is the smaller part (the rows above; the review queue of every anomaly is read "
    "once per key); the rest is Gradio's round trip and the browser redrawing the panel (gallery, candidate cards, "
    "tables, the class chooser's choices), with the app, the browser and the load sharing 2 cores: the same "
    "round trip costs about 0.45 s at 10 classes",
    "export": "in the build measured, each class's curated set (`review.final_set`) read every decision and pick "
    "of the run, once per class and twice per export (cProfile: 41 of 58 s); it now reads its own class's rows "
    "(see the notes below); the rest is copying every kept image, the metadata and the zip",
    "app_over_cli": "see the CPU-seconds row: where the app's CPU seconds match the CLI's, the wall-time gap is the "
    "load of other processes on the shared machine, not the app's work",
    "ray_over_local": "on one 2-core machine each Ray worker has one core (one torch thread) where the local engine "
    "uses both, and each job also pays Ray's scheduling and the images' trip to the driver",
}


def notes(results: dict) -> list[str]:
    sizes = sorted(int(n) for n in results["sizes"])
    last = results["sizes"][str(sizes[-1])]
    missed = [
        (key, what) for key, what, _, limit, _ in ROWS if isinstance(last.get(key), int | float) and last[key] > limit
    ]
    out = ["## Targets missed, and why", ""]
    out += [f"- **{what}**: {CAUSES.get(key, 'not analysed')}." for key, what in missed] or ["- none measured."]
    ray = {k: last[k] for k in ("regen_ray_first", "regen_ray", "regen_local", "ray_worker_starts") if k in last}
    if ray:
        out += ["", f"Ray on the {sizes[-1]:,}-class run: the first Regenerate on Ray (it starts the app's pooled "
                f"workers) took {ray.get('regen_ray_first', 0):.1f} s; the next ones {ray.get('regen_ray', 0):.2f} s "
                f"(median) against {ray.get('regen_local', 0):.2f} s locally; workers started "
                f"{ray.get('ray_worker_starts', '?')} time(s) for all of them."]  # fmt: skip
    for key, again in sorted((k, v) for k, v in last.items() if k.startswith("regen_threads")):
        if isinstance(again, dict) and "regen_local" in again:
            out += ["", f"Measured again with `--regen-only` at {key.removeprefix('regen_threads')} torch thread(s) in "
                    f"the app's process: Regenerate local {again['regen_local']:.2f} s, app on Ray "
                    f"{again['regen_ray']:.2f} s after a first of {again['regen_ray_first']:.1f} s: Ray ÷ local "
                    f"{again['ray_over_local']:.2f}; worker starts {again['ray_worker_starts']}."]  # fmt: skip
    out += [
        "",
        "Notes: *app ÷ CLI* compares the app's run creation (Start or Reopen, with data and models loaded) plus Run "
        "all with the wall `curator run` prints (run creation to the end, in its own process); the CPU-seconds row "
        "compares the same in CPU time (the CLI's includes its Python start-up). N / A / J / U are the handlers the "
        f"keys call, medians of {KEY_REPEATS} cycles (N, then A on an anomaly with a pick, J, then U taking the "
        "accept back); in the browser, the same keys pressed in Chromium at 1400×900, from the key press to the "
        "panel showing the next anomaly (N, J) or the action bar's new message (A, U), medians of 5, the slowest "
        "key in the table; the class chooser's search is the median of three (the first, middle and last class's name "
        "typed, from the last key to its one option shown; the slowest is in results.json). Bulk accept: the "
        "preview's count over the whole queue (no "
        "threshold), then the first 1,000 of those accepted through Confirm, then U.",
        *results.get("extra_notes", []),
    ]
    return out


if __name__ == "__main__":
    sys.exit(main())
