"""The independent label-consistency judge: a plain VGG-style CNN, another architecture than the
shipped detector (a timm ResNet) and than the evaluation student (ConvNet-3 with instance norm).

It answers "does an image look like its label?" without sharing the detector's inductive biases:
if refinement only fooled the detector, this classifier would disagree. It is trained once on the
dataset's training split and cached (weights + test accuracy) under ``benchmarks/_work/``.
Measured on mnist5k (4,000 training images, 20 epochs, seed 0): 98.6% on the 1,000 test images,
about 5 minutes of one CPU core (12 minutes of wall time with the core shared).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curator.data import Dataset
from curator.evaluation import augment

ACCURACY_BAR = 0.985  # the judge must itself be at least this accurate on the real test split


class PlainCNN(nn.Module):
    """Conv-BN-ReLU pairs at 32/64/128 channels with max pooling, global average pool, dropout,
    linear head; no residual connections, no instance norm (about 290k parameters)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(channels, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128), *block(128, 128), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) / 0.5))


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Predicted class index per image [N, C, H, W] in [0, 1]."""
    model.eval()
    out = [model(images[lo : lo + batch_size].float()).argmax(1) for lo in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def train_classifier(
    data: Dataset, *, epochs: int = 20, batch_size: int = 64, lr: float = 3e-3, seed: int = 0, limit: int | None = None
) -> tuple[nn.Module, float]:
    """AdamW with a one-cycle schedule and shift/rotation augmentation; returns (model, test accuracy).
    ``limit`` trains on the first ``limit`` training images only (for quick checks)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = data.train.images[:limit], torch.as_tensor(data.train.labels[:limit])
    model = PlainCNN(data.channels, data.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * max(1, len(x_all) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(max(1, len(x_all) // batch_size)):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(augment(x_all[idx], gen)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    acc = float((predict(model, data.test.images) == data.test.labels).mean())
    return model.eval(), acc


def load_or_train(data: Dataset, cache: Path, **train_kwargs) -> tuple[nn.Module, dict]:
    """The cached judge at ``cache`` (``.pt`` + ``.json``), trained and written first if missing.
    The JSON holds the test accuracy, training time (s) and parameters."""
    cache = Path(cache)
    meta_path = cache.with_suffix(".json")
    model = PlainCNN(data.channels, data.num_classes)
    if cache.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.eval(), json.loads(meta_path.read_text())
    t0 = time.time()
    model, acc = train_classifier(data, **train_kwargs)
    meta = {
        "arch": "PlainCNN (VGG-style, BatchNorm, max pool)",
        "dataset": data.name,
        "test_accuracy": acc,
        "test_images": len(data.test),
        "train_seconds": round(time.time() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        **{k: v for k, v in train_kwargs.items()},
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)
    meta_path.write_text(json.dumps(meta, indent=2))
    return model, meta
