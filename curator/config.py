"""One dataclass for a run's parameters; the defaults live here and nowhere else.

How the defaults of ``guidance``, ``tau`` and ``lam`` were chosen, measured on mnist5k with the
shipped models, is in benchmarks/DEFAULTS.md (``python -m benchmarks.choose_defaults``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


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
        checks = [
            ("ipc", self.ipc >= 1, "at least 1"),
            ("k", self.k >= 1, "at least 1"),
            ("tau", 0.0 <= self.tau <= 1.0, "in [0, 1]"),
            ("lam", self.lam >= 0, "0 or more"),
            ("steps", self.steps >= 1, "at least 1"),
            ("strength", 0 < self.strength <= 1, "in (0, 1]"),
            ("guidance", self.guidance >= 0, "0 or more"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("rounds", self.rounds >= 1, "at least 1"),
            ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
            ("real_sample", self.real_sample >= 1, "at least 1"),
            ("uniqueness_centre", self.uniqueness_centre in ("class", "global"), "class or global"),
            ("device", self.device in ("auto", "cpu") or self.device.startswith("cuda"), "auto, cpu or cuda"),
            ("dtype", self.dtype in ("auto", "float32", "float16", "bfloat16"), "auto, float32, float16 or bfloat16"),
            ("prompt_template", _formats(self.prompt_template), "a text whose only field is {name}"),
        ]
        for name, ok, rule in checks:
            if not ok:
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
