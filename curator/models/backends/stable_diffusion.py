"""Stable Diffusion backend (D4M-style): prototypes live in the VAE latent space, synthesis is img2img.

Init space = the VAE's scaled latents (``latent_dist.mean * scaling_factor``, 4 x H/8 x W/8 for
SD 1.x) of images at the model's resolution (512 px for SD 1.5). ``generate`` hands the prototype
latents to diffusers' stock ``StableDiffusionImg2ImgPipeline`` as ``image`` (a 4-channel tensor is
taken as latents there), with a per-class prompt from a template (default: the class name) and a
negative prompt, one CPU ``torch.Generator`` per image so that (prototype, seed, parameters)
regenerates an image exactly. No diffusers file is patched or copied.

    gen = StableDiffusionGenerator.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                  "cuda", class_names=["tench", "church"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from curator.config import ConfigError
from curator.data import resize_images
from curator.models.backends.common import (
    BatchSizer,
    check_request,
    readable_name,
    resolve_dtype,
    resolve_model_dir,
    sdedit_steps,
    seeded_generators,
)
from curator.models.generator import ModelFileError, ProgressFn

# Literature defaults (D4M): img2img strength 0.7, guidance 8; 50 steps is SD 1.x's usual schedule length.
DEFAULTS = {"strength": 0.7, "guidance": 8.0, "steps": 50}
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")


def check_template(template: str) -> str:
    """A prompt template must format with ``{name}`` alone."""
    try:
        template.format(name="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"parameter prompt_template must use only {{name}}, got {template!r} ({exc})") from exc
    return template


class StableDiffusionGenerator:
    """SD 1.x/2.x img2img from VAE-latent prototypes, one prompt per class."""

    backend = "stable-diffusion"
    defaults = DEFAULTS

    def __init__(
        self,
        pipe,
        device: torch.device | str = "cpu",
        class_names: Sequence[str] | None = None,
        *,
        prompt_template: str = "{name}",
        negative_prompt: str = "",
        source: str = "",
    ):
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        vae = pipe.vae
        if int(vae.config.latent_channels) != 4:
            raise ModelFileError(f"{source}: the img2img pipeline takes latents only with 4 channels")
        self.scaling = float(vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(pipe.unet.config.sample_size) * self.vae_scale
        self.channels = 3
        self.dtype = pipe.unet.dtype
        self.source = source
        self.batches = BatchSizer()
        self.encode_batches = BatchSizer()
        self.configure(class_names or [], prompt_template=prompt_template, negative_prompt=negative_prompt)
        self.to(device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        *,
        dtype: str = "auto",
        class_names: Sequence[str] | None = None,
        prompt_template: str = "{name}",
        negative_prompt: str = "",
    ) -> StableDiffusionGenerator:
        """Load a diffusers SD folder (or cached repo id) without its safety checker; nothing downloads."""
        from diffusers import StableDiffusionImg2ImgPipeline

        folder = resolve_model_dir(str(path))
        device = torch.device(device)
        try:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                folder,
                torch_dtype=resolve_dtype(dtype, device),
                safety_checker=None,  # no NSFW filter (it would black out images); not needed on class prompts
                feature_extractor=None,  # used only by the safety checker
                requires_safety_checker=False,
                local_files_only=True,
            )
        except Exception as exc:  # also a truncated weights file (safetensors' SafetensorError) or bad JSON
            raise ModelFileError(f"cannot load a Stable Diffusion pipeline from {folder}: {exc}") from exc
        return cls(
            pipe,
            device,
            class_names,
            prompt_template=prompt_template,
            negative_prompt=negative_prompt,
            source=str(path),
        )

    def configure(
        self,
        class_names: Sequence[str],
        *,
        prompt_template: str | None = None,
        negative_prompt: str | None = None,
        class_map: object = None,
    ) -> StableDiffusionGenerator:
        """Bind the dataset's classes and the prompts (cheap: no weights move). ``class_map`` is unused."""
        if prompt_template is not None:
            self.prompt_template = check_template(prompt_template)
        if negative_prompt is not None:
            self.negative_prompt = negative_prompt
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.prompts = [self.prompt_template.format(name=readable_name(n)) for n in self.class_names]
        self._embeds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        return self

    def to(self, device: torch.device | str) -> StableDiffusionGenerator:
        self.device = torch.device(device)
        self.pipe.to(self.device)
        self._embeds = {}
        return self

    # --- init space ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] -> scaled VAE latents [N, 4, R/8, R/8] (float32, CPU)."""
        vae = self.pipe.vae

        def run(lo: int, hi: int) -> torch.Tensor:
            x = resize_images(images[lo:hi].float(), self.resolution, 3) * 2 - 1
            latents = vae.encode(x.to(self.device, vae.dtype)).latent_dist.mean
            return (latents * self.scaling).float().cpu()

        return self.encode_batches.run(len(images), batch_size, run)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Scaled VAE latents -> images [N, 3, R, R] in [0, 1] (float32, CPU)."""
        vae = self.pipe.vae

        def run(lo: int, hi: int) -> torch.Tensor:
            x = vae.decode(latents[lo:hi].to(self.device, vae.dtype) / self.scaling).sample
            return ((x.float() + 1) / 2).clamp(0, 1).cpu()

        return self.encode_batches.run(len(latents), batch_size, run)

    # --- sampling ------------------------------------------------------------------------------
    def _prompt_embeds(self, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, negative prompt) text embeddings per image; each class's pair is encoded once."""
        for y in set(labels):
            if y not in self._embeds:
                cond, uncond = self.pipe.encode_prompt(
                    self.prompts[y], self.device, 1, True, negative_prompt=self.negative_prompt or None
                )
                self._embeds[y] = (cond, uncond)
        return (
            torch.cat([self._embeds[y][0] for y in labels]),
            torch.cat([self._embeds[y][1] for y in labels]),
        )

    @torch.no_grad()
    def generate(
        self,
        init: torch.Tensor | None,
        labels: Sequence[int],
        seeds: Sequence[int],
        *,
        strength: float = 0.7,
        guidance: float = 8.0,
        steps: int = 50,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """img2img from ``init`` latents (``None`` = zero latents at strength 1, i.e. text-to-image).

        ``steps`` is the schedule length for the full noise range; ``int(steps * strength)`` of them
        run. Returns images [N, 3, R, R] in [0, 1] (float32, CPU).
        """
        labels = [int(y) for y in labels]
        check_request(init, labels, seeds, strength, steps, self.num_classes)
        if init is None:
            size = self.resolution // self.vae_scale
            init, strength = torch.zeros(len(labels), 4, size, size), 1.0

        def run(lo: int, hi: int) -> torch.Tensor:
            cond, uncond = self._prompt_embeds(labels[lo:hi])
            out = self.pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                image=init[lo:hi].to(self.device, self.dtype),
                strength=strength,
                guidance_scale=guidance,
                num_inference_steps=sdedit_steps(steps, strength),
                generator=seeded_generators(seeds[lo:hi]),
                output_type="pt",
            ).images
            return out.float().clamp(0, 1).cpu()

        return self.batches.run(len(labels), batch_size, run, progress)
