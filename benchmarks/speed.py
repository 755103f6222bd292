"""Speed benchmark: generation throughput, pipeline efficiency, refinement overhead, peak memory.

    taskset -c 1 .venv/bin/python -m benchmarks.speed --threads 1     # CPU, one core
    .venv/bin/python -m benchmarks.speed --threads 2                   # the default run on 2 cores
    .venv/bin/python -m benchmarks.speed --device cuda --dtype bf16    # GPU (autocast fp16 or bf16)
    .venv/bin/python -m benchmarks.speed --quick                       # seconds: a plumbing check

Definitions (one *image-step* = one guided denoising step of one image, i.e. one UNet row, or two
with classifier-free guidance since the conditional and unconditional rows run together):

* **throughput**: ``generator.generate`` over batch sizes 1..256 at the run's steps, strength and
  guidance; images/s and image-steps/s.
* **raw UNet throughput**: the UNet alone (no scheduler, no noise drawing, no copies) on the same
  batch (doubled for guidance), timesteps and resolution; image-steps/s.
* **pipeline efficiency**: image-steps done during a real run (synthesis and refinement) divided
  by the run's wall time, over the raw UNet throughput at the run's batch size; measured in the
  same process. 1.0 would mean the run does nothing but batched UNet work.
* **refinement overhead**: wall time of the full run over the wall time of the unrefined synthesis
  alone (k-means prototypes + one SDEdit image per prototype, same batch size, no inspection).
* **peak memory**: the process's peak resident set (CPU, ``ru_maxrss``, so it only grows) after
  each part, or the peak CUDA allocation of each part.

It writes SPEED.md and speed.json (default ``benchmarks/``; ``--quick`` writes under ``_work/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR, RunConfig
from curator.data import load_dataset
from curator.engine import LocalEngine
from curator.models.detector import Detector
from curator.models.loading import load_generator
from curator.prototypes import class_prototypes
from curator.training import pick_device

HERE = Path(__file__).resolve().parent
DEFAULT_RUN_LIMIT_S = 180.0  # target: the default run under 3 minutes on 2 CPU cores


def denoise_steps(steps: int, strength: float, from_noise: bool = False) -> int:
    """Timesteps one image goes through in ``PixelDiffusion.generate`` (SDEdit skips the first ones)."""
    return steps if from_noise or strength >= 1 else max(1, min(steps, round(steps * strength)))


class Clock:
    """Wall time with CUDA synchronisation, and the peak memory of what ran since ``reset``."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class TimedGenerator:
    """Wraps a generator: counts image-steps and the seconds spent in ``generate``."""

    def __init__(self, inner, clock: Clock, autocast):
        self.inner, self.clock, self.autocast = inner, clock, autocast
        self.image_steps, self.seconds, self.images = 0, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, init, labels, seeds, *, strength, guidance, steps, batch_size=64, progress=None):
        t0 = self.clock.now()
        with self.autocast():
            out = self.inner.generate(init, labels, seeds, strength=strength, guidance=guidance, steps=steps,
                                      batch_size=batch_size, progress=progress)  # fmt: skip
        self.seconds += self.clock.now() - t0
        self.images += len(labels)
        self.image_steps += len(labels) * denoise_steps(steps, strength, init is None)
        return out


def autocast_for(device: torch.device, dtype: str):
    """fp32 (no autocast) or autocast to fp16/bf16; the weights stay fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return lambda: torch.autocast(device.type, dtype=torch_dtype)


@torch.no_grad()
def raw_unet(gen, batch: int, cfg: RunConfig, clock: Clock, autocast, repeats: int = 1) -> float:
    """Image-steps/s of the bare UNet on ``batch`` images (2x rows with guidance) at the run's timesteps."""
    rows = batch * (1 if cfg.guidance == 1.0 else 2)
    n_t = denoise_steps(cfg.steps, cfg.strength)
    x = torch.randn(rows, gen.channels, gen.resolution, gen.resolution, device=gen.device)
    y = torch.randint(0, gen.num_classes, (rows,), device=gen.device)
    ts = torch.linspace(999, 0, n_t).long().to(gen.device)
    with autocast():
        gen.unet(x, ts[0], class_labels=y)  # warm-up
        t0 = clock.now()
        for _ in range(repeats):
            for t in ts:
                gen.unet(x, t, class_labels=y)
        secs = clock.now() - t0
    return batch * n_t * repeats / secs


def throughput(gen, data, batch: int, cfg: RunConfig, clock: Clock, autocast, min_images: int) -> dict:
    n = batch * max(1, math.ceil(min_images / batch))
    init = gen.encode(data.train.images[torch.arange(n) % len(data.train)])
    labels = [int(v) for v in data.train.labels[torch.arange(n).numpy() % len(data.train)]]
    clock.reset()
    t0 = clock.now()
    with autocast():
        gen.generate(init, labels, list(range(n)), strength=cfg.strength, guidance=cfg.guidance, steps=cfg.steps,
                     batch_size=batch)  # fmt: skip
    secs = clock.now() - t0
    steps = n * denoise_steps(cfg.steps, cfg.strength)
    return {"batch": batch, "images": n, "seconds": secs, "images_per_s": n / secs, "image_steps_per_s": steps / secs,
            "peak_mb": clock.peak_mb()}  # fmt: skip


def unrefined_alone(gen, data, cfg: RunConfig, labels: list[int], clock: Clock, autocast) -> float:
    """Seconds for k-means prototypes + one SDEdit image per prototype, every class, no inspection."""
    t0 = clock.now()
    init, ys = [], []
    for c in labels:
        centres, _ = class_prototypes(gen.encode(data.train.of_class(c)), cfg.ipc, cfg.seed)
        init.append(centres)
        ys += [c] * cfg.ipc
    with autocast():
        gen.generate(torch.cat(init), ys, list(range(len(ys))), strength=cfg.strength, guidance=cfg.guidance,
                     steps=cfg.steps, batch_size=cfg.batch_size)  # fmt: skip
    return clock.now() - t0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--generator", default=DEFAULT_GENERATOR)
    p.add_argument("--detector", default=DEFAULT_DETECTOR)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--min-images", dest="min_images", type=int, default=16, help="least images per point")
    p.add_argument("--ipc", type=int, default=RunConfig.ipc, help="images per class of the measured run")
    p.add_argument("--k", type=int, default=RunConfig.k, help="candidates per anomaly of the measured run")
    p.add_argument("--classes", default=None, help="comma-separated classes of the measured run (default: all)")
    p.add_argument("--out", default=None, help="folder for SPEED.md and speed.json (default benchmarks/)")
    p.add_argument("--quick", action="store_true", help="batch sizes 1 and 4, a 2-class IPC 2 run with 4 steps, K 4")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.min_images, args.ipc, args.k = [1, 4], 4, 2, 4
        args.classes = args.classes or "0,1"
        args.out = args.out or str(HERE / "_work" / "quick")
    args.out = args.out or str(HERE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    autocast, clock = autocast_for(device, dtype), Clock(device)
    gen = load_generator(args.generator, device)
    detector = Detector.load(args.detector, device)
    data = load_dataset(args.data, size=gen.resolution, channels=gen.channels)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    cfg = RunConfig(data=args.data, generator=args.generator, detector=args.detector, ipc=args.ipc, k=args.k,
                    device=str(device), classes=classes)  # fmt: skip
    if args.quick:
        cfg.steps = 4
    result: dict = {"device": str(device), "dtype": dtype, "threads": torch.get_num_threads(), "config": {
        k: getattr(cfg, k) for k in ("ipc", "k", "tau", "steps", "strength", "guidance", "batch_size")} | {
        "classes": classes or "all"}}  # fmt: skip
    with autocast():  # warm-up: first-call allocations and kernel choice are not throughput
        gen.generate(None, [0], [0], strength=1.0, guidance=cfg.guidance, steps=2, batch_size=1)
    result["throughput"] = []
    for b in args.batch_sizes:
        row = throughput(gen, data, b, cfg, clock, autocast, args.min_images)
        row["raw_unet_image_steps_per_s"] = raw_unet(gen, b, cfg, clock, autocast)
        result["throughput"].append(row)
        print(f"batch {b:3d}: {row['images_per_s']:7.2f} images/s, {row['image_steps_per_s']:8.1f} image-steps/s "
              f"(raw UNet {row['raw_unet_image_steps_per_s']:8.1f}), peak {row['peak_mb']:.0f} MB")  # fmt: skip
    labels = [data.class_index(c) for c in classes] if classes else list(range(data.num_classes))
    clock.reset()
    t_unref = unrefined_alone(gen, data, cfg, labels, clock, autocast)
    peak_unref = clock.peak_mb()
    timed = TimedGenerator(gen, clock, autocast)
    with tempfile.TemporaryDirectory() as tmp:
        clock.reset()
        t0 = clock.now()
        engine = LocalEngine.create(cfg, tmp, "speed", data=data, generator=timed, detector=detector)
        summaries = engine.run()
        wall = clock.now() - t0
        engine.store.close()
    peak_run = clock.peak_mb()
    raw = raw_unet(gen, cfg.batch_size, cfg, clock, autocast, repeats=2)
    achieved = timed.image_steps / wall
    result["run"] = {
        "wall_seconds": wall,
        "images_generated": timed.images,
        "image_steps": timed.image_steps,
        "seconds_in_generate": timed.seconds,
        "anomalies": sum(s.anomalies for s in summaries),
        "unresolved": sum(s.unresolved for s in summaries),
        "achieved_image_steps_per_s": achieved,
        "raw_unet_image_steps_per_s_at_batch": raw,
        "pipeline_efficiency": achieved / raw,
        "generate_efficiency": timed.image_steps / timed.seconds / raw if timed.seconds else float("nan"),
        "unrefined_seconds": t_unref,
        "refinement_overhead": wall / t_unref,
        "peak_mb_unrefined": peak_unref,
        "peak_mb_run": peak_run,
    }
    r = result["run"]
    print(f"run: {wall:.1f} s wall, {timed.images} images generated, efficiency {r['pipeline_efficiency']:.2f}, "
          f"refinement overhead {r['refinement_overhead']:.2f}x, peak {peak_run:.0f} MB", flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["command"] = " ".join(["python -m benchmarks.speed", *(argv if argv is not None else sys.argv[1:])])
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    from benchmarks.report_speed import write_speed

    write_speed(result, args, out / "SPEED.md")
    print(f"results: {out / 'SPEED.md'} and {out / 'speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
