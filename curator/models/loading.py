"""Loading the models and the data of a run, and the one place where backend defaults apply.

``resolve_config`` is what the CLI and the app both call to turn what a person set into a
``RunConfig``: the backend's preferred parameters (guidance 8 for Stable Diffusion, ...) fill the
fields the person left unset.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from curator.config import RunConfig
from curator.data import DataError, Dataset, load_dataset
from curator.models.detector import Detector
from curator.models.generator import Generator
from curator.training import pick_device


def resolve_config(generator: str | None = None, **given) -> RunConfig:
    """A validated config: RunConfig's defaults, then the generator backend's defaults, then
    ``given`` (values that are None count as unset). ``generator`` None keeps the shipped model."""
    from curator.models.backends import backend_defaults

    values = {f.name: getattr(RunConfig(), f.name) for f in fields(RunConfig)}
    if generator:
        values["generator"] = generator
        values.update(backend_defaults(generator))
    values.update({k: v for k, v in given.items() if v is not None})
    return RunConfig(**values).validate()


def generator_options(config: RunConfig | None) -> dict:
    """The run parameters the large-model backends read (prompts, DiT class map); see curator.models.backends."""
    if config is None:
        return {}
    return {
        "prompt_template": config.prompt_template,
        "negative_prompt": config.negative_prompt,
        "class_map": config.class_map,
    }


def load_generator(
    path: str,
    device: torch.device | str = "cpu",
    class_names: list[str] | None = None,
    config: RunConfig | None = None,
) -> Generator:
    """The generator in ``path`` (a folder or a cached Hugging Face id), backend chosen by its files.

    Built-in pixel model, Stable Diffusion or DiT (see ``curator.models.backends.loader``). Open-vocabulary
    backends need the dataset's ``class_names`` (prompts, ImageNet ids); without them, bind them
    later with ``prepare_generator`` (which returns a configured copy). ``config`` supplies dtype,
    prompt template, negative prompt and class map.
    """
    from curator.models.backends import load_generator as load_backend

    dtype = config.dtype if config is not None else "auto"
    return load_backend(path, device, class_names, dtype=dtype, **generator_options(config))


def prepare_generator(generator: Generator, class_names: list[str], config: RunConfig | None = None) -> Generator:
    """The generator to use for a run: a copy bound to the dataset's class names and the run's
    prompt/class-map options, sharing the weights; ``generator`` is never changed (the app caches
    one per model and several runs use it). The pixel model is returned as it is."""
    from curator.models.backends import configure_generator

    return configure_generator(generator, class_names, **generator_options(config))


def load_components(
    config: RunConfig, data: Dataset | None = None, generator: Generator | None = None, detector: Detector | None = None
) -> tuple[Dataset, Generator, Detector]:
    """Load whatever of (data, generator, detector) is not given, and check that they fit together."""
    device = pick_device(config.device)
    # The data is read at the generator's resolution, so the generator loads first; open-vocabulary
    # backends get the dataset's class names once the data is known (prepare_generator).
    generator = generator or load_generator(config.generator, device, config=config)
    detector = detector or Detector.load(config.detector, device)
    data = data or load_dataset(
        config.data,
        size=generator.resolution,
        channels=generator.channels,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    generator = prepare_generator(generator, data.class_names, config)  # this run's copy
    check_compatible(data, generator, detector)
    return data, generator, detector


def check_compatible(data: Dataset, generator: Generator, detector: Detector) -> None:
    if generator.num_classes != data.num_classes:
        raise DataError(
            f"the generator has {generator.num_classes} classes but the dataset {data.name} has "
            f"{data.num_classes} ({data.class_names}); train a generator on this dataset first"
        )
    if detector.num_classes != data.num_classes:
        raise DataError(
            f"the detector has {detector.num_classes} classes but the dataset {data.name} has "
            f"{data.num_classes} ({data.class_names}); train a detector on this dataset first"
        )


def check_class_sizes(data: Dataset, labels: list[int], ipc: int) -> None:
    counts = np.bincount(data.train.labels, minlength=data.num_classes)
    small = [f"{data.class_names[c]!r} ({counts[c]} images)" for c in labels if counts[c] < ipc]
    if small:
        raise DataError(f"IPC = {ipc} is larger than these classes of {data.name}: {', '.join(small)}")
