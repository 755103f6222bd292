"""Ray worker start-up against dataset size, and the bytes a generated image costs on the wire.

    python -m benchmarks.worker_startup        # -> the "Worker start-up" section of benchmarks/SCALE.md

For each factor (default 1 and 16), the ImageFolder of ``benchmarks.scale`` (mnist5k's digits as
PNG, each image ``factor`` times), measured in fresh processes, one after the other:

- *scan*: ``load_dataset(folder, size=28, channels=1)`` as the library does it now (each file's
  header read, no pixels decoded);
- *decode every file*: the scan as it was before (each file decoded and resized once), for
  comparison;
- *worker start-up*: a local Ray and one ``StageWorker`` on that folder with the shipped models,
  the seconds the worker itself measured from its constructor's start to ready (checking the
  run's paths, loading the data and both models).

Bytes on the wire: the pickled size of one ``ImagesDone`` item of one image as the worker sends it
(uint8, ``curator.engine.ray.to_wire``) and as float32, at 28 px grayscale and 512 px RGB.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Worker start-up and bytes on the wire"


def child(what: str, folder: str) -> dict:
    """One measurement in this (fresh) process; the clock starts after the imports."""
    from curator.data import _list_classes, _read_pixels, load_dataset

    t0 = time.perf_counter()
    if what == "scan":
        ds = load_dataset(folder, size=28, channels=1)
        return {"seconds": time.perf_counter() - t0, "images": len(ds.train) + len(ds.test)}
    if what == "decode":
        n = 0
        for files in _list_classes(Path(folder)).values():
            for f in files:
                _read_pixels(f, "L", 28)
                n += 1
        return {"seconds": time.perf_counter() - t0, "images": n}
    if what == "worker":
        from curator.config import RunConfig
        from curator.engine.ray import WorkerPool, connect, driver_data

        connect(None, num_cpus=1)
        config = RunConfig(data=folder)
        out = {}
        for name, data in (("scanning", None), ("indexed", driver_data(config))):
            t1 = time.perf_counter()
            pool = WorkerPool.start(config, workers=1, data=data)
            out[name], out[f"{name}_wall"] = pool.startup_s, time.perf_counter() - t1
            pool.kill()
        return out
    raise ValueError(what)


def measure(what: str, folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run([sys.executable, "-m", "benchmarks.worker_startup", "--child", what, str(folder)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=3600)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def wire_bytes() -> list[dict]:
    """Pickled bytes of one image's ``ImagesDone`` as float32 and as the worker sends it (uint8)."""
    import numpy as np
    import torch

    from curator import stages
    from curator.engine.ray import to_wire

    rows = []
    for name, shape in (("28 px grayscale", (1, 1, 28, 28)), ("512 px RGB", (1, 3, 512, 512))):
        item = stages.ImagesDone("synthesis", (stages.Job(0, (0, 0), 0, 0, 0),), torch.rand(shape),
                                 (stages.Inspected(0.9, 0, None, np.zeros(512, np.float32)),))  # fmt: skip
        rows.append({"image": name, "float32": len(pickle.dumps(item, protocol=5)),
                     "uint8": len(pickle.dumps(to_wire(item), protocol=5))})  # fmt: skip
    return rows


def report(rows: list[dict], wire: list[dict]) -> str:
    lines = [SECTION, "", f"Measured on {time.strftime('%Y-%m-%d %H:%M')} by `python -m benchmarks.worker_startup` "
             f"({os.cpu_count()} CPUs, one torch thread; the machine was shared, so times carry noise).", "",
             "| factor | images | scan, headers only (s) | decode every file, as before (s) | "
             "worker start-up, scanning itself (s) | worker start-up, given the driver's index (s) | "
             "the same, wall (s) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['factor']}x | {r['images']:,} | {r['scan']:.2f} | {r['decode']:.2f} | "
                     f"{r['scanning']:.2f} | {r['indexed']:.2f} | {r['indexed_wall']:.2f} |")  # fmt: skip
    last = rows[-1]
    per_file = last["scan"] / last["images"]
    lines += ["", f"The scan costs {per_file * 1e6:.0f} µs per file here, so ImageNet's 1.28 M files take about "
              f"{per_file * 1.28e6:.0f} s, once, in the driver (decoding them took about a core-hour: 2.4-3.6 ms per "
              "500x375 JPEG). The workers do not scan: the driver puts its file index into Ray's object store "
              "once and each worker builds its dataset from it (`curator.engine.ray.folder_index`)."]  # fmt: skip
    lines += ["", "*scan*: what the driver does to load an ImageFolder (and a worker given no index) "
              "(`load_dataset`: list the files, read each header). *decode every file*: the same files "
              "decoded and resized once each, as the scan did before. *worker start-up*: measured by the "
              "worker, from its constructor's start until it is ready (the run's paths checked, the data "
              "scanned or built from the driver's index, both models loaded); *wall*: the driver's wait, "
              "Ray's process start and placing included.", "",
              "Bytes sent back to the driver for one generated image (one `ImagesDone` item, pickled, with its "
              "512-float detector feature):", "",
              "| image | float32 (B) | uint8, as sent (B) |", "|---|---|---|"]  # fmt: skip
    for w in wire:
        lines.append(f"| {w['image']} | {w['float32']:,} | {w['uint8']:,} |")
    lines += ["", "The images are stored as 8-bit PNGs anyway, so uint8 is exactly what the driver stores (PNG bytes "
              "identical); the detector's features are computed on the worker from the float images.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factors", type=int, nargs="+", default=[1, 16])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "SCALE.md"))
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    from benchmarks.scale import build_folder

    base = ROOT / "benchmarks" / "_work" / "scale"
    rows = []
    for factor in args.factors:
        folder = build_folder(base, factor)
        scan, decode, worker = measure("scan", folder), measure("decode", folder), measure("worker", folder)
        rows.append({"factor": factor, "images": scan["images"], "scan": scan["seconds"], "decode": decode["seconds"],
                     **worker})  # fmt: skip
        print(rows[-1], flush=True)
    text = report(rows, wire_bytes())
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    out.write_text(pattern.sub(lambda m: text.rstrip() + "\n", old) if SECTION in old else old.rstrip() + "\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
