"""One dataclass for a run's parameters; the defaults live here and nowhere else.

How the defaults of ``guidance``, ``tau`` and ``lam`` were chosen, measured on mnist5k with the
shipped models, is in benchmarks/DEFAULTS.md (``python -m benchmarks.choose_defaults``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


def _assets() -> Path:
    """The shipped models: ``curator/assets/`` in an installed package (pyproject.toml ships them
    as package data), else ``assets/`` beside the package in a source checkout."""
    here = Path(__file__).resolve().parent
    return here / "assets" if (here / "assets").is_dir() else here.parent / "assets"


ASSETS = _assets()
DEFAULT_GENERATOR = str(ASSETS / "generator")
DEFAULT_DETECTOR = str(ASSETS / "detector")


class ConfigError(ValueError):
    """A parameter outside its valid range; the message names the parameter."""


def _formats(template: str) -> bool:
    try:
        template.format(name="x")
    except (KeyError, IndexError, ValueError, AttributeError):
        return False
    return True


# The valid range of each checked run parameter: (test, the rule in words). ``RunConfig.validate``
# applies them; the app's form shows the words (``rule``), so a range is written once.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ipc": (lambda v: v >= 1, "at least 1"),
    "k": (lambda v: v >= 1, "at least 1"),
    "tau": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "lam": (lambda v: v >= 0, "0 or more"),
    "steps": (lambda v: v >= 1, "at least 1"),
    "strength": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "guidance": (lambda v: v >= 0, "0 or more"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "rounds": (lambda v: v >= 1, "at least 1"),
    "test_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "real_sample": (lambda v: v >= 1, "at least 1"),
    "uniqueness_centre": (lambda v: v in ("class", "global"), "class or global"),
    "device": (lambda v: v in ("auto", "cpu") or v.startswith("cuda"), "auto, cpu or cuda"),
    "dtype": (lambda v: v in ("auto", "float32", "float16", "bfloat16"), "auto, float32, float16 or bfloat16"),
    "prompt_template": (lambda v: _formats(v), "a text whose only field is {name}"),
}


def rule(name: str) -> str:
    """The valid range of run parameter ``name`` in words (e.g. "in [0, 1]"), as errors say it."""
    return RULES[name][1]


@dataclass
class RunConfig:
    data: str = "mnist5k"  # "mnist5k" or an ImageFolder path
    generator: str = DEFAULT_GENERATOR
    detector: str = DEFAULT_DETECTOR
    ipc: int = 10  # images per class
    k: int = 20  # candidates per anomaly and round
    tau: float = 0.99  # confidence threshold in [0, 1]: below it an image is an anomaly
    lam: float = 0.5  # weight of uniqueness in the selection score
    steps: int = 25  # DDIM steps for the full noise range
    strength: float = 0.7  # SDEdit noise level in (0, 1]; 1 = pure noise
    guidance: float = 1.0  # classifier-free guidance scale (1 = none; see benchmarks/DEFAULTS.md)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    classes: list[str] | None = None  # None = all classes
    batch_size: int = 32  # images per generator batch (CPU throughput peaks at 16-32: benchmarks/SPEED.md)
    rounds: int = 1  # automatic refinement rounds per anomaly
    test_fraction: float = 0.2  # ImageFolder without train/test folders
    real_sample: int = 50  # real images per class kept for the feature centres and UMAP
    # Uniqueness compares detector features centred on the mean real feature of the image's own
    # class ("class") or of all classes ("global"; kept as the default by measurement: the class
    # centre wins on the early-generator testbed but loses 1.8 points of student top-1 with the
    # shipped generator; benchmarks/UNIQUENESS.md and DEFAULTS.md).
    uniqueness_centre: str = "global"
    # Large-model backends (curator/models/backends): ignored by the built-in pixel model.
    prompt_template: str = "{name}"  # Stable Diffusion prompt per class; {name} = readable class name
    negative_prompt: str = ""  # Stable Diffusion negative prompt ("" = none)
    class_map: dict | str | None = None  # DiT: {class name: ImageNet id}, a JSON file, or "imagenette"
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16
    extra: dict = field(default_factory=dict)

    def validate(self) -> RunConfig:
        for name, (ok, rule) in RULES.items():
            if not ok(getattr(self, name)):
                raise ConfigError(f"parameter {name} must be {rule}, got {getattr(self, name)!r}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown run parameter(s): {unknown}")
        # Runs stored before the parameter existed were scored with the global centre.
        return cls(**{"uniqueness_centre": "global", **d})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


# --- training commands: one dataclass each; ``python -m curator train-*`` is generated from it ------
# Fields with a "help" in their metadata are command-line options (``--batch-size`` for
# ``batch_size``; "flags" names them otherwise); the rest are for library callers only.
def _opt(default, help: str, **more) -> Any:
    return field(default=default, metadata={"help": help, **more})


def channel_list(text: str, option: str) -> tuple[int, ...]:
    """``"16,32,32"`` as ``(16, 32, 32)``; ConfigError naming ``option`` when malformed."""
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        channels = ()
    if len(channels) < 2 or any(c < 1 for c in channels):
        raise ConfigError(f"{option} must be 2 or more positive integers like 32,64,64, got {text!r}")
    return channels


@dataclass
class _Training:
    """What both training commands share, and their range check."""

    def validate(self) -> _Training:
        counts = [f.name for f in fields(self) if f.metadata.get("count")]
        for name in counts:
            if getattr(self, name) < 1:
                raise ConfigError(f"parameter {name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"parameter lr must be > 0, got {self.lr}")
        return self


@dataclass
class GeneratorTraining(_Training):
    """``train-generator`` and ``training.train_generator``: DDPM training of the pixel generator."""

    steps: int = _opt(20000, "optimiser steps in total", count=True)
    batch_size: int = _opt(64, "images per optimiser step", count=True)
    lr: float = _opt(1e-3, "AdamW learning rate")
    seed: int = _opt(0, "random seed")
    device: str = _opt("auto", "auto | cpu | cuda")
    label_dropout: float = 0.1  # share of steps with the "no label" class (classifier-free guidance)
    ema_decay: float = 0.9995
    min_snr_gamma: float = 5.0
    block_out_channels: tuple[int, ...] = _opt(
        (32, 64, 64), "UNet channels per resolution level, e.g. 16,32,32 (tiny models: assets/testbed-generator)",
        flags=("--block-channels",), parse=lambda text: channel_list(text, "--block-channels"),
    )  # fmt: skip
    layers_per_block: int = 1
    checkpoint_every: int = 250  # steps
    checkpoint_minutes: float = 5.0


@dataclass
class DetectorTraining(_Training):
    """``train-detector`` and ``training.train_detector``: a timm classifier (the shipped detector:
    these defaults, assets/detector/README.md)."""

    arch: str = _opt("resnet10t", "timm model name, e.g. resnet18", flags=("--model", "--arch"))
    epochs: int = _opt(30, "training epochs", count=True)
    batch_size: int = _opt(64, "images per optimiser step", count=True)
    lr: float = _opt(2e-3, "peak AdamW learning rate (one-cycle schedule)")
    seed: int = _opt(0, "random seed")
    device: str = _opt("auto", "auto | cpu | cuda")
    pretrained: bool = _opt(
        False,
        "fine-tune from pretrained timm weights (--pretrained-file, else the Hugging Face cache); "
        "without --size, images are read at the model's pretrained input size",
    )
    pretrained_file: str | None = _opt(None, "local weights file (.safetensors/.pth) for --pretrained")
    input_size: int | None = None  # pixels; None = the data's size
    model_kwargs: dict | None = None  # extra timm.create_model arguments
