"""Load test of the public web app: several visitors at once against a live server on 127.0.0.1.

    .venv/bin/python -m benchmarks.load                  # 8 visitors + the GPU calls timed on the CPU
    .venv/bin/python -m benchmarks.load --quick          # 2 small visitors, seconds: a plumbing check

1. **Visitors.** The app is started as a subprocess exactly as ``python app.py --public`` starts it
   (``app.main``; public mode, a fixed ``CURATOR_SECRET``, a fresh runs folder, loopback only),
   with one addition: ``jobs.run_job`` is wrapped to log the start and end of every device job
   (``spans.jsonl``). N visitors (``gradio_client``, one thread each, each with its own
   ``curator_visitor`` cookie and its own 2-class ImageFolder with class names of its own) start
   together: each starts a run (tiny random models from folders, as in the tests: the shipped
   models have 10 classes, a 2-class run needs 2-class models), runs every class (``/run_all``),
   reviews every anomaly (``/next_unreviewed``, then ``/accept_pick``, or ``/drop_image`` for every
   fourth one and for those with no automatic pick) and exports (``/export``). Checks: no visitor
   saw a warning; each export zip lies under ``RUNS/_exports/<its key>/<its run>/``, names its own
   run and classes and holds 2 x IPC less the dropped images; the visitor downloads it (200) and
   the next visitor cannot (404); the device served the jobs in turn (no two spans overlap). The
   queue wait of a visitor is the time from submitting ``/run_all`` to the start of its first job.
   Bounded: ``--timeout`` seconds in all (default 900), N visitors.
2. **GPU calls on the CPU.** The functions decorated with ``spaces.GPU`` on a Space,
   ``jobs.run_class_job`` (every class) and ``jobs.regenerate_job`` (a few anomalies), timed in
   this process on the built-in data (mnist5k) with the shipped models and the default parameters,
   next to ``jobs.estimate_seconds`` (the duration a Space would reserve, within [20, 300] s) and
   the estimate before that clamp.

Writes ``LOAD.md`` (default ``benchmarks/``; ``--quick``: ``_work/quick/``, the GPU calls on the
tiny models). Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATE = time.strftime("%Y-%m-%d")


# --- the server (a subprocess) ---------------------------------------------------------------------


def serve() -> None:
    """``app.main(["--public"])`` with every device job logged to ``$CURATOR_LOAD_SPANS``."""
    sys.path[:0] = [str(REPO)]
    from curator.ui import jobs

    spans, guard = Path(os.environ["CURATOR_LOAD_SPANS"]), threading.Lock()
    real_job, real_stream = jobs.run_job, jobs.run_stream

    def log(run_path, labels, regenerate_id, start: float, ok: bool) -> None:
        line = json.dumps({"run": Path(run_path).name, "labels": labels, "regenerate": regenerate_id,
                           "start": start, "end": time.time(), "ok": ok})  # fmt: skip
        with guard, spans.open("a") as f:
            f.write(line + "\n")

    def logged(run_path, labels=None, regenerate_id=None, progress=None):
        start, ok = time.time(), False
        try:
            out = real_job(run_path, labels, regenerate_id, progress)
            ok = True
            return out
        finally:
            log(run_path, labels, regenerate_id, start, ok)

    def logged_stream(run_path, labels=None, progress=None):  # Run all: one job over the classes, in groups
        start, ok = time.time(), False
        try:
            yield from real_stream(run_path, labels, progress)
            ok = True
        finally:
            log(run_path, labels, None, start, ok)

    # the handlers call jobs.run_job / jobs.run_stream by attribute: they get these
    jobs.run_job, jobs.run_stream = logged, logged_stream
    import app

    app.main(["--public"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, secret: str, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, CURATOR_PUBLIC="1", CURATOR_RUNS=str(work / "runs"), CURATOR_SECRET=secret,
               CURATOR_SERVER_FOLDERS=str(work),  # the tiny models and data folders are offered there
               CURATOR_LOAD_SPANS=str(work / "spans.jsonl"), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), CURATOR_WARM_UMAP="0", HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False")  # fmt: skip
    env.pop("SPACE_ID", None)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.load", "--serve"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}/"


def wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} (see its log)")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


# --- the visitors ----------------------------------------------------------------------------------


@dataclass
class Visit:
    index: int
    classes: list[str]
    folder: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    key: str = ""
    run_id: str = ""
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    t_start: float = 0.0
    t_created: float = 0.0
    t_submit: float = 0.0
    t_serving: float | None = None  # the client first saw its /run_all processed (not queued)
    t_first_output: float | None = None
    t_ran: float = 0.0
    t_reviewed: float = 0.0
    t_exported: float = 0.0
    anomalies: int = 0
    accepted: int = 0
    dropped: int = 0
    exported: int = 0
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and not self.warnings and bool(self.checks) and all(self.checks.values())


class VisitorError(RuntimeError):
    pass


def _said(visit: Visit, message, expect: str | None = None) -> str:
    text = message if isinstance(message, str) else str(message)
    if text.startswith("⚠"):
        visit.warnings.append(text)
        raise VisitorError(text)
    if expect and not text.startswith(expect):
        raise VisitorError(f"expected {expect!r}, got {text!r}")
    return text


def visit(v: Visit, url: str, args, models: dict, barrier: threading.Barrier, deadline: float) -> None:
    """One visitor: start a run, run every class, review every anomaly, export."""
    from gradio_client import Client
    from gradio_client.utils import Status

    try:
        client = Client(url, verbose=False, download_files=False,
                        headers={"Cookie": f"curator_visitor={v.token}"})  # fmt: skip
        barrier.wait(max(1.0, deadline - time.time()))
        v.t_start = time.time()
        out = client.predict(
            "folder on the server", v.folder, None, "model folders", models["gen"], models["det"],
            args.ipc, args.k, args.tau, 0.5, args.steps, 0.7, 2.0, v.index,
            api_name="/start_run",
        )  # fmt: skip
        _said(v, out[0], "✔ run ")
        v.run_id = Path(out[1]).name
        v.t_created = v.t_submit = time.time()
        job = client.submit(None, None, api_name="/run_all")
        while not job.done():
            if time.time() > deadline:
                raise VisitorError("timed out while running")
            now = time.time()
            if v.t_serving is None and job.status().code not in (Status.STARTING, Status.JOINING_QUEUE,
                                                                  Status.IN_QUEUE):  # fmt: skip
                v.t_serving = now
            if v.t_first_output is None and job.outputs():
                v.t_first_output = now
            time.sleep(0.05)
        outs = job.outputs()
        for o in outs:
            _said(v, o[0])
        _said(v, outs[-1][0], f"✔ all {len(v.classes)} classes done")
        v.t_ran = time.time()

        aid = None
        for _ in range(len(v.classes) * args.ipc + 1):
            out = client.predict(None, aid, api_name="/next_unreviewed")
            if str(out[0]).startswith("⚠ every anomaly in this queue has been reviewed"):
                break
            _said(v, out[0])
            aid = out[3]
            v.anomalies += 1
            if v.anomalies % 4 != 0:
                msg = client.predict(None, aid, None, api_name="/accept_pick")[0]
                if "has no automatic pick" not in msg:
                    _said(v, msg, f"✔ #{aid}: automatic pick")
                    v.accepted += 1
                    continue
            _said(v, client.predict(None, aid, None, api_name="/drop_image")[0], f"✔ #{aid}: dropped")
            v.dropped += 1
        else:
            raise VisitorError("the review did not end")
        v.t_reviewed = time.time()

        msg = _said(v, client.predict(api_name="/export")[0], "✔ exported ")
        v.t_exported = time.time()
        v.exported = int(re.match(r"✔ exported (\d+) images", msg).group(1))
    except Exception as exc:  # noqa: BLE001 - reported per visitor
        v.error = v.error or f"{type(exc).__name__}: {exc}"


def check_export(v: Visit, runs: Path, other: Visit | None, url: str, ipc: int) -> None:
    """The visitor's own export: where it lies, what it holds, who may download it."""
    import httpx

    zip_path = runs / "_exports" / v.key / v.run_id / f"{v.run_id}-export.zip"
    v.checks["zip under its key and run"] = bool(v.run_id) and zip_path.is_file()
    if not v.checks["zip under its key and run"]:
        return
    with zipfile.ZipFile(zip_path) as zf:
        info = json.loads(zf.read("run.json"))
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
        rows = len(zf.read("provenance.csv").decode().strip().splitlines()) - 1
    v.checks["its run id"] = info["run_id"] == v.run_id
    v.checks["its classes"] = info["class_names"] == v.classes and {n.split("/")[0] for n in pngs} <= set(v.classes)
    expected = len(v.classes) * ipc - v.dropped
    v.checks["2 x IPC - dropped images"] = len(pngs) == rows == v.exported == expected
    file_url = f"{url}gradio_api/file={zip_path}"
    mine = httpx.get(file_url, cookies={"curator_visitor": v.token}, timeout=30)
    v.checks["downloads it"] = mine.status_code == 200 and mine.content == zip_path.read_bytes()
    if other is not None:
        v.checks["others get 404"] = httpx.get(file_url, cookies={"curator_visitor": other.token}).status_code == 404


def make_data(work: Path, n: int, images: int) -> tuple[list[list[str]], list[str], dict]:
    """One 2-class ImageFolder per visitor (class names of its own) and tiny 2-class models."""
    sys.path[:0] = [str(REPO / "tests")]
    from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

    classes = [[f"v{i}-left", f"v{i}-right"] for i in range(n)]
    folders = [str(write_image_folder(work / "data" / f"v{i}", dict.fromkeys(c, images), seed=i))
               for i, c in enumerate(classes)]  # fmt: skip
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(work / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(work / "det")
    return classes, folders, {"gen": str(work / "gen"), "det": str(work / "det")}


def read_spans(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda s: s["start"])  # fmt: skip


def load_test(args, work: Path) -> dict:
    from curator.ui import visitors
    from curator.ui.resources import AppSettings

    classes, folders, models = make_data(work, args.visitors, args.images)
    secret = secrets.token_urlsafe(32)
    log = (work / "server.log").open("w")
    proc, url = start_server(work, secret, log)
    t_launch = time.time()
    visits = [Visit(i, c, f) for i, (c, f) in enumerate(zip(classes, folders, strict=True))]
    try:
        wait_ready(proc, url, args.timeout / 3)
        startup = time.time() - t_launch
        deadline = time.time() + args.timeout
        settings = AppSettings(runs_dir=work / "runs", public=True, secret=secret.encode())
        for v in visits:
            v.key = visitors.owner_key(f"visitor:{v.token}", settings)
        barrier = threading.Barrier(len(visits))
        threads = [threading.Thread(target=visit, args=(v, url, args, models, barrier, deadline), daemon=True)
                   for v in visits]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.time()))
        for v, t in zip(visits, threads, strict=True):
            if t.is_alive():
                v.error = v.error or f"still running after {args.timeout:.0f} s"
        for i, v in enumerate(visits):
            if not v.error:
                check_export(v, settings.runs_dir, visits[(i + 1) % len(visits)] if len(visits) > 1 else None, url,
                             args.ipc)  # fmt: skip
    finally:
        stop_server(proc)
        log.close()
    spans = read_spans(work / "spans.jsonl")
    overlaps = sum(b["start"] < a["end"] for a, b in zip(spans, spans[1:], strict=False))
    by_run = {}
    for s in spans:
        by_run.setdefault(s["run"], []).append(s)
    t0 = min((v.t_start for v in visits if v.t_start), default=0.0)
    rows = []
    for v in visits:
        own = by_run.get(v.run_id, [])
        rows.append({
            "visitor": v.index, "run": v.run_id, "ok": v.ok, "error": v.error or "; ".join(v.warnings),
            "start_s": v.t_start - t0 if v.t_start else None,
            "queue_wait_s": own[0]["start"] - v.t_submit if own and v.t_submit else None,
            "client_wait_s": v.t_serving - v.t_submit if v.t_serving and v.t_submit else None,
            "run_all_s": v.t_ran - v.t_submit if v.t_ran else None,
            "device_s": sum(s["end"] - s["start"] for s in own),
            "jobs": len(own),
            "review_s": v.t_reviewed - v.t_ran if v.t_reviewed else None,
            "export_s": v.t_exported - v.t_reviewed if v.t_exported else None,
            "total_s": v.t_exported - v.t_start if v.t_exported else None,
            "anomalies": v.anomalies, "accepted": v.accepted, "dropped": v.dropped, "exported": v.exported,
            "checks": v.checks,
        })  # fmt: skip
    end = max((v.t_exported for v in visits if v.t_exported), default=t0)
    return {
        "visitors": rows,
        "spans": [dict(s, start_s=s["start"] - t0, end_s=s["end"] - t0) for s in spans],
        "overlaps": overlaps,
        "startup_s": startup,
        "wall_s": end - t0,
        "all_ok": all(v.ok for v in visits) and overlaps == 0
        and {s["run"] for s in spans} == {v.run_id for v in visits},
    }


# --- the GPU calls on the CPU ----------------------------------------------------------------------


def gpu_calls(args, work: Path) -> dict:
    """``run_class_job`` per class and ``regenerate_job`` for a few anomalies, timed, with their estimates."""
    import torch

    from curator.config import RunConfig
    from curator.engine import LocalEngine
    from curator.store import RunStore
    from curator.ui import jobs, resources

    torch.set_num_threads(args.threads)
    if args.quick:
        classes, folders, models = make_data(work / "calls", 1, args.images)
        config = RunConfig(data=folders[0], generator=models["gen"], detector=models["det"], ipc=args.ipc, k=args.k,
                           steps=args.steps, guidance=2.0, device="cpu")  # fmt: skip
    else:
        config = RunConfig(device="cpu")  # mnist5k, the shipped models, the default parameters
    t = time.perf_counter()
    data, gen, det = resources.components(config)
    load_s = time.perf_counter() - t
    engine = LocalEngine.create(config, str(work / "calls-runs"), data=data, generator=gen, detector=det)
    path = str(engine.store.path)
    engine.close()

    def unclamped(**kw) -> float:
        lo, hi = jobs.MIN_SECONDS, jobs.MAX_SECONDS
        jobs.MIN_SECONDS, jobs.MAX_SECONDS = 0.0, float("inf")
        try:
            return jobs.estimate_seconds(path, **kw)
        finally:
            jobs.MIN_SECONDS, jobs.MAX_SECONDS = lo, hi

    calls = []
    for label in range(len(data.class_names)):
        est, raw = jobs.estimate_seconds(path, label=label), unclamped(label=label)
        t = time.perf_counter()
        s = jobs.run_class_job(path, label)
        seconds = time.perf_counter() - t
        made = s.images + s.anomalies * config.k * config.rounds  # synthetic images and candidates
        calls.append({"call": "run_class_job", "what": f"class {s.name}", "images": made, "anomalies": s.anomalies,
                      "measured_s": seconds, "estimate_s": est, "unclamped_s": raw})  # fmt: skip
    store = RunStore.open(path)
    try:
        anomalies = [(a.id, a.label) for a in store.anomalies()][: args.regenerations]
    finally:
        store.close()
    for aid, label in anomalies:
        est, raw = jobs.estimate_seconds(path, regenerate_id=aid), unclamped(regenerate_id=aid)
        t = time.perf_counter()
        round_ = jobs.regenerate_job(path, aid)
        calls.append({"call": "regenerate_job", "what": f"anomaly #{aid} (class {data.class_names[label]}), "
                      f"round {round_}", "images": config.k, "anomalies": 1, "measured_s": time.perf_counter() - t,
                      "estimate_s": est, "unclamped_s": raw})  # fmt: skip
    return {
        "config": {
            "data": config.data if config.data == "mnist5k" else Path(config.data).name,
            "generator": _shown(config.generator),
            "ipc": config.ipc,
            "k": config.k,
            "steps": config.steps,
            "strength": config.strength,
            "tau": config.tau,
        },  # fmt: skip
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "calls": calls,
    }


# --- the report ------------------------------------------------------------------------------------


def _shown(path: str) -> str:
    """A model folder as the report shows it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name


def _f(x, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report(result: dict, args, command: str, machine: str) -> str:
    load, calls = result.get("load"), result.get("calls")
    parts = [
        "# Load test of the public app",
        "",
        f"Generated by `benchmarks/load.py` on {DATE}." + (" **Quick mode** (a plumbing check)." if args.quick else ""),
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
    ]
    if load:
        rows = load["visitors"]
        waits = [r["queue_wait_s"] for r in rows if r["queue_wait_s"] is not None]
        slow = max(rows, key=lambda r: r["queue_wait_s"] or 0)
        device = sum(s["end"] - s["start"] for s in load["spans"])
        parts += [
            '- Server: `app.main(["--public"])` in a subprocess on 127.0.0.1 (public mode; torch\'s default '
            "threads), every device job logged; visitors: `gradio_client`, one thread each, in this process",
            f"- Each visitor: its own cookie and its own 2-class ImageFolder ({args.images} images per class), tiny "
            f"random models (a 2-class run needs 2-class models; the shipped ones have 10 classes), IPC {args.ipc}, "
            f"K {args.k}, tau {args.tau}, {args.steps} DDIM steps, strength 0.7; the review accepts every "
            "automatic pick and drops every fourth anomaly and those without a pick",
            "",
            "## Visitors",
            "",
            _table(
                ["measure", "value"],
                [
                    ["visitors, all checks passed", f"{len(rows)}, **{'yes' if load['all_ok'] else 'NO'}**"],
                    ["server start (s)", _f(load["startup_s"])],
                    [
                        "**wall time**, all visitors together, first start to last export (s)",
                        f"**{_f(load['wall_s'])}**",
                    ],
                    ["device jobs / overlapping pairs", f"{len(load['spans'])} / {load['overlaps']}"],
                    [
                        "device busy (s), share of the wall time",
                        f"{_f(device)}, {device / max(load['wall_s'], 1e-9):.0%}",
                    ],
                    [
                        "queue wait: median / **slowest** (s)",
                        f"{_f(sorted(waits)[len(waits) // 2] if waits else None)} / **{_f(max(waits, default=None))}** "
                        f"(visitor {slow['visitor']})",
                    ],
                    [
                        "total per visitor: fastest / slowest (s)",
                        f"{_f(min((r['total_s'] for r in rows if r['total_s']), default=None))} / "
                        f"{_f(max((r['total_s'] for r in rows if r['total_s']), default=None))}",
                    ],
                ],
            ),  # fmt: skip
            "",
            "Queue wait: from submitting `/run_all` to the start of the visitor's first device job (server log); "
            "*seen* = until the client's job status left the queue. Run all: submit to the last class done. "
            "Times in seconds from the moment all visitors were released together.",
            "",
            _table(
                [
                    "visitor",
                    "run",
                    "start",
                    "queue wait",
                    "seen",
                    "run all",
                    "device",
                    "review",
                    "export",
                    "total",
                    "anomalies (accepted / dropped)",
                    "exported",
                    "checks",
                ],
                [
                    [
                        str(r["visitor"]),
                        f"`{r['run']}`",
                        _f(r["start_s"], 2),
                        _f(r["queue_wait_s"]),
                        _f(r["client_wait_s"]),
                        _f(r["run_all_s"]),
                        _f(r["device_s"]),
                        _f(r["review_s"]),
                        _f(r["export_s"]),
                        _f(r["total_s"]),
                        f"{r['anomalies']} ({r['accepted']} / {r['dropped']})",
                        str(r["exported"]),
                        (
                            "ok"
                            if r["ok"]
                            else "**FAILED**: "
                            + (r["error"] or ", ".join(k for k, ok in r["checks"].items() if not ok))
                        ),
                    ]
                    for r in rows
                ],
            ),  # fmt: skip
            "",
            "Checks per visitor: no warning in any message; the zip under `RUNS/_exports/<its key>/<its run>/`; "
            "its run id and class names in `run.json`; 2 x IPC less the dropped images (PNGs = provenance rows = "
            "the export message's count); downloaded by its cookie (200) and refused to the next visitor's (404).",
            "",
            f"The device serves one job at a time, first come first served: the slowest wait "
            f"({_f(max(waits, default=None))} s) is the device time of the {len(rows) - 1} visitors served before "
            f"(each visitor's Run all is one job over its classes); a visitor's own run takes "
            f"{_f(min(r['device_s'] for r in rows))}-{_f(max(r['device_s'] for r in rows))} s of device time, and "
            "reviewing goes on while others' jobs run.",
            "",
            "### The device queue",
            "",
            _table(
                ["job", "run", "classes", "start", "end", "seconds"],
                [
                    [
                        str(i + 1),
                        f"`{s['run']}`",
                        ", ".join(map(str, s["labels"] or [])),
                        _f(s["start_s"], 2),
                        _f(s["end_s"], 2),
                        _f(s["end"] - s["start"], 2),
                    ]
                    for i, s in enumerate(load["spans"])
                ],
            ),  # fmt: skip
        ]
    if calls:
        c = calls["config"]
        parts += [
            "",
            "## The GPU calls, timed on the CPU",
            "",
            f"`jobs.run_class_job` for every class and `jobs.regenerate_job` for {args.regenerations} anomalies, "
            f"called directly in one process ({calls['threads']} torch threads, CPU): data {c['data']}, generator "
            f"{c['generator']}, IPC {c['ipc']}, K {c['k']}, tau {c['tau']}, {c['steps']} steps, strength "
            f"{c['strength']}. Loading the models and data once before: {_f(calls['load_s'])} s (not in the calls). "
            "*Estimate*: `jobs.estimate_seconds`, the duration a Space reserves for the call (ZeroGPU rates, within "
            "[20, 300] s); *unclamped*: the same work estimate before that clamp.",
            "",
            _table(
                ["call", "what", "images", "anomalies", "measured on CPU (s)", "estimate (s)", "unclamped (s)"],
                [
                    [
                        f"`{x['call']}`",
                        x["what"],
                        str(x["images"]),
                        str(x["anomalies"]),
                        _f(x["measured_s"], 2),
                        _f(x["estimate_s"]),
                        _f(x["unclamped_s"], 1),
                    ]
                    for x in calls["calls"]
                ],
            ),  # fmt: skip
        ]
        per = {}
        for x in calls["calls"]:
            per.setdefault(x["call"], []).append(x["measured_s"])
        worst = max(calls["calls"], key=lambda x: x["measured_s"] / x["estimate_s"])
        parts += [
            "",
            f"Every call ran within its estimate here (the closest: `{worst['call']}` {worst['what']}, "
            f"{_f(worst['measured_s'], 2)} s of {_f(worst['estimate_s'])} s): the estimates use ZeroGPU rates"
            + (
                ", and every one here is the 20 s floor." if all(x["estimate_s"] <= 20 for x in calls["calls"]) else "."
            ),
        ]
        parts += ["", "Totals: " + "; ".join(f"`{k}` {len(v)} calls, {sum(v):.1f} s (mean {sum(v) / len(v):.2f}, "
                                             f"max {max(v):.2f})" for k, v in per.items())]  # fmt: skip
    return "\n".join(parts) + "\n"


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    p.add_argument("--visitors", type=int, default=8)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for all visitors together")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tau", type=float, default=0.99)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--images", type=int, default=30, help="images per class of each visitor's ImageFolder")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the GPU-call timings")
    p.add_argument("--regenerations", type=int, default=3)
    p.add_argument("--parts", nargs="+", choices=["load", "calls"], default=["load", "calls"])
    p.add_argument("--quick", action="store_true", help="2 visitors, IPC 2, K 2, 2 steps; GPU calls on tiny models")
    p.add_argument("--work", default=None, help="scratch folder (default benchmarks/_work/load[-quick])")
    p.add_argument("--out", default=None, help="where LOAD.md goes (default benchmarks/, quick: the work folder)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    args = p.parse_args(argv)
    if args.quick:
        args.visitors, args.ipc, args.k, args.steps, args.images, args.regenerations = 2, 2, 2, 2, 8, 1
        args.timeout = min(args.timeout, 300.0)
    if args.visitors < 1:
        p.error("--visitors must be at least 1")
    args.work = Path(args.work or HERE / "_work" / ("load-quick" if args.quick else "load"))
    args.out = Path(args.out or (args.work if args.quick else HERE))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve()
        return 0
    sys.path[:0] = [str(REPO)]
    from benchmarks.quality import machine

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    command = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict = {}
    if "load" in args.parts:
        result["load"] = load_test(args, args.work)
        print(f"load: {len(result['load']['visitors'])} visitors, all ok: {result['load']['all_ok']}, "
              f"wall {result['load']['wall_s']:.1f} s")  # fmt: skip
    if "calls" in args.parts:
        result["calls"] = gpu_calls(args, args.work)
        print(f"GPU calls: {len(result['calls']['calls'])} timed")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "LOAD.md").write_text(report(result, args, command.strip(), machine()))
    print(f"wrote {args.out / 'LOAD.md'}")
    return 0 if result.get("load", {"all_ok": True})["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
