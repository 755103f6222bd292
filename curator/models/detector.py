"""The detector: a timm classifier trained on the original data that inspects synthetic images.

``Detector.inspect`` returns, per image, the softmax probabilities over the classes and the
penultimate-layer feature (timm's pooled ``pre_logits``), which the scoring functions use for
confidence and uniqueness.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file

from curator.config import ConfigError
from curator.data import resize_images
from curator.errors import ModelFileError

DEFAULT_ARCH = "resnet10t"
# Narrow channels and output stride 8 adapt resnet10t to 28x28 grayscale digits: the stock stride
# of 32 would leave a 1x1 map, and 64..512 channels are 16x the compute this task needs.
SMALL_INPUT_KWARGS = {"channels": [32, 64, 128, 256], "output_stride": 8}


def _hub_id(arch: str) -> str:
    cfg = timm.models.get_pretrained_cfg(arch)
    return getattr(cfg, "hf_hub_id", None) or f"timm/{arch}"


def default_input_size(arch: str) -> int | None:
    """The image side timm's pretrained config gives ``arch`` (e.g. 224), or None if timm has none."""
    cfg = timm.models.get_pretrained_cfg(arch)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


@dataclass
class Inspection:
    """Detector outputs for N images: probabilities [N, K] (rows sum to 1) and features [N, D]."""

    probs: np.ndarray
    features: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)


class Detector:
    def __init__(
        self,
        model: torch.nn.Module,
        arch: str,
        model_kwargs: dict,
        class_names: list[str],
        input_size: int,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        info: dict | None = None,
    ):
        self.model = model.eval()
        self.arch, self.model_kwargs = arch, dict(model_kwargs)
        self.class_names = list(class_names)
        self.input_size, self.channels = int(input_size), int(channels)
        self.mean, self.std = tuple(mean), tuple(std)
        self.info = dict(info or {})
        self.to(device)

    @classmethod
    def create(
        cls,
        arch: str,
        class_names: list[str],
        input_size: int | None,
        channels: int,
        model_kwargs: dict | None = None,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        device: torch.device | str = "cpu",
    ) -> Detector:
        """A fresh timm model; ``pretrained`` loads weights from ``pretrained_file`` or the HF cache.

        ``input_size`` None takes timm's data config (the size the weights were trained at); the
        normalisation is timm's for pretrained weights, 0.5/0.5 for a model trained from scratch.
        """
        kwargs = dict(
            model_kwargs if model_kwargs is not None else (SMALL_INPUT_KWARGS if arch == DEFAULT_ARCH else {})
        )
        create_kwargs = dict(kwargs)
        if pretrained and pretrained_file:
            if not Path(pretrained_file).expanduser().is_file():
                raise ModelFileError(f"pretrained weights file {pretrained_file} does not exist")
            create_kwargs["pretrained_cfg_overlay"] = {"file": str(Path(pretrained_file).expanduser())}
        try:
            model = timm.create_model(
                arch, pretrained=pretrained, num_classes=len(class_names), in_chans=channels, **create_kwargs
            )
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"timm has no model named {arch!r}") from exc
            raise
        except OSError as exc:  # not in the Hugging Face cache (HF_HUB_OFFLINE=1), or an unreadable file
            where = pretrained_file or f"the Hugging Face cache ({_hub_id(arch)})"
            raise ModelFileError(
                f"cannot load pretrained weights for timm model {arch!r} from {where}: {exc}. Nothing is downloaded "
                "at run time: pass --pretrained-file with a local weights file, or fetch the weights once on a "
                "machine with internet"
            ) from exc
        cfg = timm.data.resolve_data_config({}, model=model)
        if input_size is None:  # the model's own input size (224 for ImageNet-pretrained resnet18)
            input_size = int(cfg["input_size"][-1])
        mean, std = cfg["mean"], cfg["std"]
        if channels == 1:
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        if not pretrained:  # a model trained from scratch on [0, 1] pixels needs no ImageNet statistics
            mean, std = (0.5,) * channels, (0.5,) * channels
        return cls(model, arch, kwargs, class_names, input_size, channels, mean, std, device)

    def to(self, device: torch.device | str) -> Detector:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] -> normalised model input at the detector's size."""
        x = resize_images(images.float(), self.input_size, self.channels)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, penultimate features) for preprocessed input."""
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.get_classifier()(feats), feats

    @torch.no_grad()
    def inspect(self, images: torch.Tensor, batch_size: int = 256) -> Inspection:
        """Softmax probabilities and penultimate features of images in [0, 1]."""
        self.model.eval()
        probs, feats = [], []
        for lo in range(0, len(images), batch_size):
            x = self.preprocess(images[lo : lo + batch_size]).to(self.device)
            logits, f = self.forward(x)
            probs.append(logits.float().softmax(1).cpu())
            feats.append(f.float().cpu())
        if not probs:
            return Inspection(np.zeros((0, self.num_classes), np.float32), np.zeros((0, 0), np.float32))
        return Inspection(torch.cat(probs).numpy(), torch.cat(feats).numpy())

    def accuracy(self, images: torch.Tensor, labels: np.ndarray) -> float:
        return float((self.inspect(images).predicted == labels).mean())

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, info: dict | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, path / "model.safetensors")
        self.info.update(info or {})
        (path / "config.json").write_text(
            json.dumps(
                {
                    "arch": self.arch,
                    "model_kwargs": self.model_kwargs,
                    "class_names": self.class_names,
                    "input_size": self.input_size,
                    "channels": self.channels,
                    "mean": self.mean,
                    "std": self.std,
                    "info": self.info,
                },
                indent=2,
            )
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Detector:
        path = Path(path)
        for needed in ("config.json", "model.safetensors"):
            if not (path / needed).is_file():
                raise ModelFileError(f"detector folder {path} is missing {needed}")
        config_file, weights_file = path / "config.json", path / "model.safetensors"
        try:
            cfg = json.loads(config_file.read_text())
            keys = ("arch", "model_kwargs", "class_names", "input_size", "channels", "mean", "std")
            missing = [k for k in keys if k not in cfg] if isinstance(cfg, dict) else list(keys)
            if missing:
                raise ValueError(f"missing key(s) {missing}")
            model = timm.create_model(
                cfg["arch"],
                pretrained=False,
                num_classes=len(cfg["class_names"]),
                in_chans=cfg["channels"],
                **cfg["model_kwargs"],
            )
        except Exception as exc:  # not JSON (JSONDecodeError), unreadable, wrong keys or values, unknown arch
            raise ModelFileError(
                f"detector config {config_file} is unreadable or not a detector config: {exc}"
            ) from exc
        try:
            model.load_state_dict(load_file(weights_file))
        except Exception as exc:  # truncated or corrupt (SafetensorError), or weights of another model
            raise ModelFileError(f"cannot load detector weights {weights_file}: {exc}") from exc
        return cls(
            model,
            cfg["arch"],
            cfg["model_kwargs"],
            cfg["class_names"],
            cfg["input_size"],
            cfg["channels"],
            cfg["mean"],
            cfg["std"],
            device,
            cfg.get("info"),
        )
