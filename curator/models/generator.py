"""Generators: turn (prototype, label, seed) into images.

The interface every backend implements (``Generator``) has three verbs:

* ``encode(images)``: images in [0, 1] -> the generator's init space (where prototypes live);
* ``generate(init, labels, seeds, ...)``: SDEdit from init points (or pure noise when ``init`` is
  None), one seed per image, batched; returns images in [0, 1];
* ``decode(latents)``: init space -> images in [0, 1].

``PixelDiffusion`` is the built-in backend: a class-conditional diffusers ``UNet2DModel`` in pixel
space, trained with v-prediction and the label dropped 10% of the time so that classifier-free
guidance works, sampled with DDIM (eta 0, so each image depends only on its seed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from curator.config import RunConfig
from curator.data import resize_images
from curator.errors import ModelFileError

ProgressFn = Callable[[int, int], None]  # (done, total) in images


_RUN_DEFAULTS = RunConfig()  # sampling defaults are the run's (curator/config.py), written nowhere else


class Generator(Protocol):
    """What the pipeline and the app need from a generator (PixelDiffusion, curator.models.backends.*).

    ``generate`` must make each image depend only on its own seed (per-image noise from a CPU
    ``torch.Generator``), so that (prototype, seed, parameters) regenerates it exactly. Backends
    that take the dataset's classes at run time (Stable Diffusion prompts, DiT ImageNet ids) also
    have ``configure(class_names, **options)``; see ``curator.models.loading.prepare_generator``.
    """

    num_classes: int
    resolution: int  # image side in pixels that encode() reads and generate() returns
    channels: int  # image channels (1 or 3)
    device: torch.device
    class_names: list[str]

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def generate(
        self,
        init: torch.Tensor | None,
        labels: Sequence[int],
        seeds: Sequence[int],
        *,
        strength: float,
        guidance: float,
        steps: int,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor: ...


def check_request(
    init: torch.Tensor | None,
    labels: Sequence[int],
    seeds: Sequence[int],
    strength: float,
    steps: int,
    num_classes: int,
) -> None:
    """The argument checks every ``Generator.generate`` makes, with messages naming the parameter."""
    n = len(labels)
    if len(seeds) != n or (init is not None and len(init) != n):
        raise ValueError(f"need one seed and one init per label: {n} labels, {len(seeds)} seeds")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if num_classes == 0:
        raise ValueError("the generator has no classes yet: call configure(class_names) first")
    bad = [int(y) for y in labels if not 0 <= int(y) < num_classes]
    if bad:
        raise ValueError(f"labels {bad} outside the generator's {num_classes} classes")


def build_unet(
    num_classes: int,
    resolution: int = 28,
    channels: int = 1,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
) -> UNet2DModel:
    """A small UNet sized for CPU training (about 1M parameters at the defaults).

    One extra class embedding (index ``num_classes``) is the "no label" class used for guidance.
    """
    if resolution % 4:
        raise ValueError(f"resolution must be a multiple of 4 (two 2x downsamplings), got {resolution}")
    n = len(block_out_channels)
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        num_class_embeds=num_classes + 1,
        norm_num_groups=min(32, min(block_out_channels)),
    )


def build_scheduler() -> DDPMScheduler:
    """Training noise schedule: cosine betas, v-prediction, 1000 steps, no x0 clipping."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
    )


class PixelDiffusion:
    """Class-conditional pixel diffusion (diffusers UNet2DModel + DDIM). Init space = pixels in [-1, 1]."""

    def __init__(
        self, unet: UNet2DModel, scheduler_config: dict, class_names: Sequence[str], device: torch.device | str = "cpu"
    ):
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.resolution = int(unet.config.sample_size)
        self.channels = int(unet.config.in_channels)
        self.to(device)

    def to(self, device: torch.device | str) -> PixelDiffusion:
        self.device = torch.device(device)
        self.unet.to(self.device)
        return self

    # --- persistence -----------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.unet.save_pretrained(path / "unet")
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")
        (path / "classes.json").write_text(json.dumps(self.class_names))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> PixelDiffusion:
        path = Path(path)
        for needed in ("unet/config.json", "scheduler/scheduler_config.json", "classes.json"):
            if not (path / needed).is_file():
                raise ModelFileError(f"generator folder {path} is missing {needed}")
        classes_file = path / "classes.json"
        try:
            class_names = json.loads(classes_file.read_text())
        except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ModelFileError(f"generator class list {classes_file} is unreadable or not JSON: {exc}") from exc
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise ModelFileError(f"generator class list {classes_file} must be a JSON list of class names")
        try:
            scheduler_config = dict(DDPMScheduler.load_config(path / "scheduler"))
        except Exception as exc:  # diffusers: EnvironmentError/OSError, ValueError for bad JSON
            raise ModelFileError(
                f"cannot read the generator scheduler config {path / 'scheduler/scheduler_config.json'}: {exc}"
            ) from exc
        unet_dir = path / "unet"
        try:
            json.loads((unet_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelFileError(
                f"generator UNet config {unet_dir / 'config.json'} is unreadable or not JSON: {exc}"
            ) from exc
        weights = unet_dir / "diffusion_pytorch_model.safetensors"  # what diffusers reads first
        if not weights.is_file():
            weights = next((f for f in sorted(unet_dir.glob("diffusion_pytorch_model*")) if f.is_file()), unet_dir)
        try:
            unet = UNet2DModel.from_pretrained(unet_dir)
        except Exception as exc:  # truncated weights (SafetensorError), OSError, ValueError, bad config values
            raise ModelFileError(f"cannot load the generator UNet from {weights}: {exc}") from exc
        embeds = unet.config.num_class_embeds
        if embeds is not None and embeds != len(class_names) + 1:  # one extra: the unconditional label
            raise ModelFileError(
                f"{classes_file} lists {len(class_names)} classes but the UNet in {unet_dir} has {embeds - 1}"
            )
        return cls(unet, scheduler_config, class_names, device)

    # --- init space ----------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] (any size/channels) -> pixels in [-1, 1] at model size."""
        return resize_images(images.float(), self.resolution, self.channels) * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float() + 1) / 2).clamp(0, 1)

    # --- sampling ------------------------------------------------------------------------------
    def _noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """One noise tensor per seed, drawn on the CPU so results match across devices."""
        shape = (self.channels, self.resolution, self.resolution)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    @torch.no_grad()
    def generate(
        self,
        init: torch.Tensor | None,
        labels: Sequence[int],
        seeds: Sequence[int],
        *,
        strength: float = _RUN_DEFAULTS.strength,
        guidance: float = _RUN_DEFAULTS.guidance,
        steps: int = _RUN_DEFAULTS.steps,
        batch_size: int = _RUN_DEFAULTS.batch_size,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """SDEdit: noise ``init`` (one row per image, in init space) to ``strength`` and denoise.

        ``init=None`` or ``strength=1`` samples from pure noise. ``guidance`` is the
        classifier-free guidance scale (1 = conditional only). Returns [N, C, H, W] in [0, 1].
        """
        n = len(labels)
        check_request(init, labels, seeds, strength, steps, self.num_classes)
        scheduler = DDIMScheduler.from_config(self.scheduler_config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        start = steps - max(1, min(steps, round(steps * strength)))
        timesteps = scheduler.timesteps[start:]
        out = []
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            noise = self._noise(seeds[lo:hi]).to(self.device)
            y = torch.as_tensor([int(v) for v in labels[lo:hi]], device=self.device)
            if init is None or strength >= 1:
                x = noise * scheduler.init_noise_sigma
            else:
                x0 = init[lo:hi].to(self.device, torch.float32)
                x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(hi - lo))
            out.append(self._denoise(scheduler, x, y, timesteps, guidance).cpu())
            if progress:
                progress(hi, n)
        return self.decode(torch.cat(out))

    def _denoise(
        self, scheduler: DDIMScheduler, x: torch.Tensor, y: torch.Tensor, timesteps: torch.Tensor, guidance: float
    ) -> torch.Tensor:
        null = torch.full_like(y, self.num_classes)
        for t in timesteps:
            if guidance == 1.0:
                pred = self.unet(x, t, class_labels=y).sample
            else:
                both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample
                cond, uncond = both.chunk(2)
                pred = uncond + guidance * (cond - uncond)
            x = scheduler.step(pred, t, x, eta=0.0).prev_sample
        return x
