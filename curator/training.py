"""Training loops for the shipped models, with progress bars, periodic checkpoints and resume.

Both loops are resumable: they write ``train_state.pt`` (weights, optimiser, step, RNG) next to
the exported model every ``checkpoint_every`` steps or ``checkpoint_minutes`` minutes, whichever
comes first, and pick it up again when called with the same output folder.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from curator.config import ConfigError, DetectorTraining, GeneratorTraining
from curator.data import Dataset
from curator.errors import DataError, ModelFileError
from curator.models.generator import PixelDiffusion, build_scheduler, build_unet

STATE_FILE = "train_state.pt"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is a ConfigError that says so."""
    device = str(device).strip()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"parameter device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"CUDA was asked for (--device {device}) but no CUDA GPU is available; use --device cpu or auto"
            )
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"CUDA device {index} was asked for (--device {device}) but this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s); use --device cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    return torch.device(device)


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_state(path: Path) -> dict:
    """The training state in ``path``; ModelFileError naming it when it is truncated or not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors, EOFError, RuntimeError: all mean a damaged file
        raise ModelFileError(f"cannot read the training state {path} (delete it to start afresh): {exc}") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} is not a training state of the curator (delete it to start afresh)")
    return state


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_generator(
    data: Dataset,
    out: str | os.PathLike,
    config: GeneratorTraining | None = None,
    *,
    progress: bool = True,
    **overrides,
) -> PixelDiffusion:
    """DDPM training (v-prediction, min-SNR-gamma loss weighting) of a class-conditional UNet.

    Min-SNR weighting (Hang et al. 2023) and v-prediction are chosen because they converge in far
    fewer steps than plain epsilon-MSE, which matters on a CPU. The EMA weights are exported.
    ``config`` (default ``GeneratorTraining()``, the CLI's defaults too) with ``overrides`` applied.
    """
    cfg = replace(config or GeneratorTraining(), **overrides).validate()
    steps, batch_size, lr, seed, device = cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.device
    label_dropout, ema_decay, min_snr_gamma = cfg.label_dropout, cfg.ema_decay, cfg.min_snr_gamma
    checkpoint_every, checkpoint_minutes = cfg.checkpoint_every, cfg.checkpoint_minutes
    from diffusers.training_utils import EMAModel

    dev = pick_device(device)  # before anything is written: a bad device leaves no folder behind
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    images = data.train.images  # the whole split as float: generator training is for small datasets
    labels = torch.from_numpy(data.train.labels)
    resolution = data.size if data.size % 4 == 0 else data.size + (-data.size % 4)
    if resolution != data.size:
        from curator.data import resize_images

        images = resize_images(images, resolution, data.channels)
    images = images * 2 - 1
    unet = build_unet(data.num_classes, resolution, data.channels, cfg.block_out_channels, cfg.layers_per_block).to(dev)
    scheduler = build_scheduler()
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, power=3 / 4)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    step, losses, elapsed = 0, [], 0.0
    state_path = out / STATE_FILE
    if state_path.exists():
        state = _load_state(state_path)
        if state["class_names"] != data.class_names:
            raise DataError(f"{state_path} was trained on classes {state['class_names']}, not {data.class_names}")
        try:
            unet.load_state_dict(state["unet"])
        except (KeyError, RuntimeError) as exc:  # another image size or channel count
            raise DataError(
                f"{state_path} holds the training state of another model or image size (delete it to start afresh)"
            ) from exc
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, losses, elapsed = state["step"], state["losses"], state.get("elapsed", 0.0)
        _set_rng_state(state["rng"])
    ema.to(dev)
    alphas_cumprod = scheduler.alphas_cumprod.to(dev)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = snr.clamp(max=min_snr_gamma) / (snr + 1)  # min-SNR-gamma for v-prediction

    def checkpoint() -> None:
        _save_atomic(
            {
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "losses": losses,
                "rng": _rng_state(),
                "class_names": data.class_names,
                "elapsed": elapsed + time.time() - t_start,
            },
            state_path,
        )
        export = build_unet(data.num_classes, resolution, data.channels, cfg.block_out_channels, cfg.layers_per_block)
        ema.copy_to(export.parameters())
        PixelDiffusion(export, dict(scheduler.config), data.class_names).save_pretrained(out)
        (out / "training.json").write_text(
            json.dumps(
                {
                    "steps": step,
                    "batch_size": batch_size,
                    "lr": lr,
                    "seed": seed,
                    "ema_decay": ema_decay,
                    "min_snr_gamma": min_snr_gamma,
                    "label_dropout": label_dropout,
                    "dataset": data.name,
                    "train_images": len(data.train),
                    "device": str(dev),
                    "train_seconds": round(elapsed + time.time() - t_start),
                    "final_loss_mean_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
                },
                indent=2,
            )
        )

    t_start, last_ckpt = time.time(), time.time()
    unet.train()
    bar = tqdm(total=steps, initial=step, desc="train generator", disable=not progress)
    while step < steps:
        idx = torch.randint(0, len(images), (batch_size,))
        x0, y = images[idx].to(dev), labels[idx].to(dev)
        y = torch.where(torch.rand(batch_size, device=dev) < label_dropout, torch.full_like(y, data.num_classes), y)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), device=dev)
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = unet(xt, t, class_labels=y).sample
        loss = ((pred - target) ** 2).mean(dim=(1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = lr * warm
        opt.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if step % checkpoint_every == 0 or time.time() - last_ckpt > checkpoint_minutes * 60 or step == steps:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    if not (out / "unet" / "config.json").exists():
        checkpoint()
    return PixelDiffusion.from_pretrained(out, dev)


def _augment(x: torch.Tensor, max_shift: float = 0.1, max_degrees: float = 10.0) -> torch.Tensor:
    """Per-image random shift (up to ``max_shift`` of the side) and rotation (up to ``max_degrees``),
    no flips (digits are not mirror-symmetric); one batched ``grid_sample`` (a per-image torchvision
    loop cost 4x the model's own step on 16x16 images), from torch's global RNG (resumable)."""
    import math

    n = len(x)
    angle = (torch.rand(n) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * max_shift)  # grid units: [-1, 1] spans the side
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_detector(
    data: Dataset,
    out: str | os.PathLike,
    config: DetectorTraining | None = None,
    *,
    progress: bool = True,
    **overrides,
):
    """Train a timm classifier with AdamW, a one-cycle schedule and shift/rotation augmentation.

    Checkpoints after every epoch (``train_state.pt``) and resumes from it. Returns the
    ``Detector``, saved to ``out`` with its test accuracy in ``config.json``. ``config`` (default
    ``DetectorTraining()``, the CLI's defaults too) with ``overrides`` applied.
    """
    cfg = replace(config or DetectorTraining(), **overrides).validate()
    arch, epochs, batch_size, lr, seed, device = cfg.arch, cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed, cfg.device
    input_size, pretrained, pretrained_file, model_kwargs = (
        cfg.input_size, cfg.pretrained, cfg.pretrained_file, cfg.model_kwargs
    )  # fmt: skip
    from curator.models.detector import Detector

    dev = pick_device(device)  # device and model are checked before anything is written
    torch.manual_seed(seed)
    det = Detector.create(
        arch, data.class_names, input_size or data.size, data.channels, model_kwargs, pretrained, pretrained_file, dev
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = det.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = max(1, len(data.train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start_epoch, elapsed = 0, 0.0
    state_path = out / STATE_FILE
    if state_path.exists():
        state = _load_state(state_path)
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as exc:  # another architecture, class count or channel count
            raise DataError(
                f"{state_path} holds the training state of another model or dataset (delete it to start afresh)"
            ) from exc
        opt.load_state_dict(state["opt"])
        start_epoch, elapsed = state["epoch"], state.get("elapsed", 0.0)
        if state.get("epochs") == epochs:
            sched.load_state_dict(state["sched"])
        else:  # more (or fewer) epochs asked for: continue at the same step of the new schedule
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min(start_epoch, epochs) * steps_per_epoch):
                    sched.step()
        _set_rng_state(state["rng"])
    t_start = time.time()
    images, labels = data.train.images, torch.from_numpy(data.train.labels)
    for epoch in range(start_epoch, epochs):
        model.train()
        perm = torch.randperm(len(images))
        bar = tqdm(range(steps_per_epoch), desc=f"train detector {epoch + 1}/{epochs}", disable=not progress)
        for i in bar:
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = det.preprocess(_augment(images[idx])).to(dev)
            logits, _ = det.forward(x)
            loss = torch.nn.functional.cross_entropy(logits, labels[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        _save_atomic(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch + 1,
                "epochs": epochs,
                "rng": _rng_state(),
                "elapsed": elapsed + time.time() - t_start,
            },
            state_path,
        )
    model.eval()
    acc = det.accuracy(data.test.images, data.test.labels) if len(data.test) else float("nan")
    det.save(
        out,
        info={
            "dataset": data.name,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "test_accuracy": acc,
            "test_images": len(data.test),
            "train_images": len(data.train),
            "device": str(dev),
            "train_seconds": round(elapsed + time.time() - t_start),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    return det
