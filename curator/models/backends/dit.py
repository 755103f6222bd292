"""DiT backend: class-conditional latent diffusion on ImageNet-1k classes (e.g. facebook/DiT-XL-2-256).

Init space = the VAE's scaled latents at the model's resolution (256 px for DiT-XL-2-256). The
dataset's class names are mapped to ImageNet class ids (``class_map``; ImageNette ships built in,
see ``imagenette.json``), then ``generate`` runs SDEdit with the pipeline's own components: noise
the prototype latents to the strength's timestep (``scheduler.add_noise``), then denoise with the
DiT transformer and classifier-free guidance against the null class. Noise, and any noise a
stochastic scheduler adds, comes from one CPU ``torch.Generator`` per image, so each image depends
only on its seed.

    gen = DiTGenerator.from_pretrained("facebook/DiT-XL-2-256", "cuda", class_names=["n01440764", ...])
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers.utils.torch_utils import randn_tensor

from curator.config import ConfigError
from curator.data import resize_images
from curator.models.backends.common import (
    BatchSizer,
    check_request,
    imagenette_table,
    resolve_dtype,
    resolve_model_dir,
    sdedit_steps,
    seeded_generators,
)
from curator.models.generator import ModelFileError, ProgressFn

# DiT's own default guidance is 4 (DiTPipeline); strength 0.7 as in D4M/VLCP.
DEFAULTS = {"strength": 0.7, "guidance": 4.0, "steps": 50}


def _key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).lower()


def load_class_map(spec: Mapping[str, int] | str | None) -> dict[str, int]:
    """A class map {dataset class name: ImageNet id} from a dict, a JSON file, or ``"imagenette"``."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        raw = dict(spec)
    elif spec == "imagenette":
        raw = {wnid: e["imagenet_id"] for wnid, e in imagenette_table().items()}
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"class map file {path} does not exist (expected JSON: {{class name: ImageNet id}})")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError, a folder
            raise ConfigError(f"class map file {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"class map file {path} must hold a JSON object {{class name: ImageNet id}}")
    bad = {k: v for k, v in raw.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad:
        raise ConfigError(f"class map values must be integer ImageNet class ids; got {bad}")
    return {str(k): int(v) for k, v in raw.items()}


def map_classes(
    class_names: Sequence[str], class_map: Mapping[str, int], model_labels: Mapping[str, int], num_ids: int
) -> list[int]:
    """ImageNet id per dataset class: the explicit map first, then ImageNette's WordNet ids and names,
    then the model's own label names (``id2label``); matching ignores case and ``_`` vs space."""
    lookups: list[dict[str, int]] = [{_key(k): v for k, v in class_map.items()}]
    nette: dict[str, int] = {}
    for wnid, entry in imagenette_table().items():
        nette[_key(wnid)] = entry["imagenet_id"]
        nette.update({_key(n): entry["imagenet_id"] for n in entry["names"]})
    lookups += [nette, {_key(k): v for k, v in model_labels.items()}]
    ids, missing = [], []
    for name in class_names:
        hit = next((table[_key(name)] for table in lookups if _key(name) in table), None)
        if hit is None:
            missing.append(name)
        ids.append(hit)
    if missing:
        raise ConfigError(
            f"no ImageNet class id for the dataset classes {missing}: give a class map "
            "(--class-map FILE.json with {\"class name\": ImageNet id})"
        )
    out_of_range = {n: i for n, i in zip(class_names, ids) if not 0 <= i < num_ids}
    if out_of_range:
        raise ConfigError(f"class map ids outside the model's {num_ids} classes: {out_of_range}")
    return ids


class DiTGenerator:
    """SDEdit with a class-conditional DiT transformer in the VAE latent space."""

    backend = "dit"
    defaults = DEFAULTS

    def __init__(
        self,
        pipe,
        device: torch.device | str = "cpu",
        class_names: Sequence[str] | None = None,
        *,
        class_map: Mapping[str, int] | str | None = None,
        source: str = "",
    ):
        self.pipe = pipe
        self.transformer, self.vae = pipe.transformer, pipe.vae
        cfg = self.transformer.config
        self.latent_channels = int(cfg.in_channels)
        self.learned_sigma = int(cfg.out_channels) == 2 * self.latent_channels
        self.null_class = int(cfg.num_embeds_ada_norm)  # the label embedding's extra row = "no class"
        self.scaling = float(self.vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = int(cfg.sample_size) * self.vae_scale
        self.channels = 3
        self.dtype = self.transformer.dtype
        self.model_labels = dict(getattr(pipe, "labels", {}) or {})
        self.source = source
        self.batches = BatchSizer()
        self.encode_batches = BatchSizer()
        self.configure(class_names or [], class_map=class_map)
        self.to(device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        *,
        dtype: str = "auto",
        class_names: Sequence[str] | None = None,
        class_map: Mapping[str, int] | str | None = None,
    ) -> DiTGenerator:
        """Load a diffusers DiT pipeline folder (or cached repo id); nothing downloads."""
        from diffusers import DiTPipeline

        folder = resolve_model_dir(str(path))
        device = torch.device(device)
        try:
            pipe = DiTPipeline.from_pretrained(folder, torch_dtype=resolve_dtype(dtype, device), local_files_only=True)
        except Exception as exc:  # also a truncated weights file (safetensors' SafetensorError) or bad JSON
            raise ModelFileError(f"cannot load a DiT pipeline from {folder}: {exc}") from exc
        return cls(pipe, device, class_names, class_map=class_map, source=str(path))

    def configure(
        self, class_names: Sequence[str], *, class_map: Mapping[str, int] | str | None = None, **_: object
    ) -> DiTGenerator:
        """Bind the dataset's classes to ImageNet ids (prompt options of other backends are ignored)."""
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.imagenet_ids = map_classes(self.class_names, load_class_map(class_map), self.model_labels, self.null_class)
        return self

    def to(self, device: torch.device | str) -> DiTGenerator:
        self.device = torch.device(device)
        self.pipe.to(self.device)
        return self

    # --- init space ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] -> scaled VAE latents (float32, CPU)."""

        def run(lo: int, hi: int) -> torch.Tensor:
            x = resize_images(images[lo:hi].float(), self.resolution, 3) * 2 - 1
            return (self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist.mean * self.scaling).float().cpu()

        return self.encode_batches.run(len(images), batch_size, run)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Scaled VAE latents -> images [N, 3, R, R] in [0, 1] (float32, CPU)."""

        def run(lo: int, hi: int) -> torch.Tensor:
            x = self.vae.decode(latents[lo:hi].to(self.device, self.vae.dtype) / self.scaling).sample
            return ((x.float() + 1) / 2).clamp(0, 1).cpu()

        return self.encode_batches.run(len(latents), batch_size, run)

    # --- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        init: torch.Tensor | None,
        labels: Sequence[int],
        seeds: Sequence[int],
        *,
        strength: float = 0.7,
        guidance: float = 4.0,
        steps: int = 50,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """SDEdit from ``init`` latents (``None`` or strength 1 = from pure noise); [N, 3, R, R] in [0, 1]."""
        labels = [int(y) for y in labels]
        check_request(init, labels, seeds, strength, steps, self.num_classes)

        def run(lo: int, hi: int) -> torch.Tensor:
            x0 = None if init is None else init[lo:hi]
            y = torch.as_tensor([self.imagenet_ids[v] for v in labels[lo:hi]], device=self.device)
            return self.decode(self._sdedit(x0, y, seeds[lo:hi], strength, guidance, steps))

        return self.batches.run(len(labels), batch_size, run, progress)

    def _sdedit(
        self,
        x0: torch.Tensor | None,
        y: torch.Tensor,
        seeds: Sequence[int],
        strength: float,
        guidance: float,
        steps: int,
    ) -> torch.Tensor:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)  # fresh state per batch
        total = sdedit_steps(steps, strength)
        scheduler.set_timesteps(total, device=self.device)
        gens = seeded_generators(seeds)
        size = self.resolution // self.vae_scale
        shape = (len(seeds), self.latent_channels, size, size)
        noise = randn_tensor(shape, generator=gens, device=self.device, dtype=torch.float32)
        if x0 is None or strength >= 1:
            timesteps = scheduler.timesteps
            x = noise * scheduler.init_noise_sigma
        else:
            start = total - min(int(total * strength), total)
            timesteps = scheduler.timesteps[start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start * scheduler.order)
            x = scheduler.add_noise(x0.to(self.device, torch.float32), noise, timesteps[:1].repeat(len(seeds)))
        step_kwargs = {}
        params = inspect.signature(scheduler.step).parameters
        if "generator" in params:
            step_kwargs["generator"] = gens
        if "eta" in params:
            step_kwargs["eta"] = 0.0
        null = torch.full_like(y, self.null_class)
        c = self.latent_channels
        for t in timesteps:
            xin = scheduler.scale_model_input(x, t)
            if guidance > 1:
                xin, yin = torch.cat([xin, xin]), torch.cat([y, null])
            else:
                yin = y
            tt = t.reshape(1).expand(len(xin)).to(self.device)
            out = self.transformer(xin.to(self.dtype), timestep=tt, class_labels=yin).sample.float()
            eps = out[:, :c] if self.learned_sigma else out
            if guidance > 1:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        return x
