"""Pick the generator backend from a model folder's contents and load it.

* ``model_index.json`` naming a ``StableDiffusion(Img2Img)Pipeline`` -> Stable Diffusion img2img;
* ``model_index.json`` naming ``DiTPipeline`` -> class-conditional DiT;
* ``unet/`` (+ ``scheduler/`` and ``classes.json``) -> the built-in ``PixelDiffusion``.

A path that is not a local folder is looked up as a Hugging Face repo id in the local cache only.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from curator.errors import ModelFileError
from curator.models.backends.common import resolve_model_dir
from curator.models.generator import Generator, PixelDiffusion

PIXEL, STABLE_DIFFUSION, DIT = "pixel", "stable-diffusion", "dit"


def detect_backend(folder: str | Path) -> str:
    """``pixel``, ``stable-diffusion`` or ``dit`` from the files in ``folder``; ModelFileError otherwise."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if index.is_file():
        try:
            name = str(json.loads(index.read_text()).get("_class_name", ""))
        except (OSError, ValueError, AttributeError) as exc:  # JSONDecodeError, UnicodeDecodeError, not an object
            raise ModelFileError(f"{index} is not a valid diffusers model index: {exc}") from exc
        from curator.models.backends.stable_diffusion import PIPELINE_CLASSES

        if name in PIPELINE_CLASSES:
            return STABLE_DIFFUSION
        if name == "DiTPipeline":
            return DIT
        raise ModelFileError(
            f"{index} describes a {name or 'pipeline of unknown class'}; the curator runs "
            f"{', '.join(PIPELINE_CLASSES)} (Stable Diffusion 1.x/2.x) and DiTPipeline"
        )
    if (folder / "unet").is_dir() or (folder / "classes.json").is_file():
        return PIXEL
    raise ModelFileError(
        f"{folder} is not a generator folder: expected model_index.json (a diffusers Stable Diffusion or DiT "
        "pipeline) or unet/ + scheduler/ + classes.json (the built-in pixel model)"
    )


def load_generator(
    path: str,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] | None = None,
    *,
    dtype: str = "auto",
    prompt_template: str = "{name}",
    negative_prompt: str = "",
    class_map: Mapping[str, int] | str | None = None,
) -> Generator:
    """Load the generator in ``path`` (folder or cached repo id) with the backend its files name.

    ``class_names`` (the dataset's) are needed by the open-vocabulary backends (prompts, ImageNet
    ids); they can also be bound later with ``configure_generator``. ``dtype`` (auto | float32 |
    float16 | bfloat16) applies to the large backends; the pixel model always runs in float32.
    """
    folder = resolve_model_dir(str(path))
    backend = detect_backend(folder)
    if backend == PIXEL:
        return PixelDiffusion.from_pretrained(folder, device)
    if backend == STABLE_DIFFUSION:
        from curator.models.backends.stable_diffusion import StableDiffusionGenerator

        return StableDiffusionGenerator.from_pretrained(
            folder,
            device,
            dtype=dtype,
            class_names=class_names,
            prompt_template=prompt_template,
            negative_prompt=negative_prompt,
        )
    from curator.models.backends.dit import DiTGenerator

    gen = DiTGenerator.from_pretrained(folder, device, dtype=dtype, class_map=class_map)
    if class_names:
        gen.configure(class_names, class_map=class_map)
    return gen


def configure_generator(generator: Generator, class_names: Sequence[str], **options) -> Generator:
    """A copy of an open-vocabulary generator bound to a dataset's class names (and prompt/class-map
    options); ``generator`` itself is left as it was.

    The copy is shallow: it shares the pipeline's weights (read-only) and gets its own class names,
    prompts and prompt-embedding cache, so runs with different classes or prompts can use one
    loaded model at once. Generators trained on their own classes (``PixelDiffusion``, no
    ``configure``) are returned as they are; ``check_compatible`` compares their class count with
    the dataset instead.
    """
    if getattr(generator, "configure", None) is None:
        return generator
    configured = copy.copy(generator)
    configured.configure(list(class_names), **options)
    return configured


def backend_defaults(path: str) -> dict:
    """The backend's preferred ``strength``/``guidance``/``steps`` (empty for the pixel model or a bad path)."""
    try:
        backend = detect_backend(resolve_model_dir(str(path)))
    except ModelFileError:
        return {}
    if backend == STABLE_DIFFUSION:
        from curator.models.backends.stable_diffusion import DEFAULTS
    elif backend == DIT:
        from curator.models.backends.dit import DEFAULTS
    else:
        return {}
    return dict(DEFAULTS)
