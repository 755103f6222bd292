"""Generator quality as the detector sees it: the share of samples assigned to their class.

Used for the model card and the quality bar of the shipped generator: plain class-conditional
samples (from pure noise) and prototype-guided samples (SDEdit at the run's strength).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import make_grid

from curator.data import Dataset
from curator.models.detector import Detector
from curator.models.generator import Generator
from curator.prototypes import class_prototypes


def label_consistency(generator: Generator, detector: Detector, data: Dataset | None = None, *, per_class: int = 20,
                      strength: float = 1.0, guidance: float = 2.0, steps: int = 25, seed: int = 1234,
                      batch_size: int = 128) -> tuple[float, np.ndarray, torch.Tensor]:
    """(share assigned to their label, per-class share, images [N, C, H, W]).

    ``strength`` 1 samples from pure noise; below 1 it starts from ``per_class`` k-means
    prototypes of each class of ``data`` (which is then required).
    """
    labels = [c for c in range(generator.num_classes) for _ in range(per_class)]
    seeds = [seed + i for i in range(len(labels))]
    init = None
    if strength < 1:
        if data is None:
            raise ValueError("prototype-guided samples need the dataset")
        init = torch.cat([class_prototypes(generator.encode(data.train.of_class(c)), per_class, seed)[0]
                          for c in range(generator.num_classes)])
    images = generator.generate(init, labels, seeds, strength=strength, guidance=guidance, steps=steps,
                                batch_size=batch_size)
    pred = detector.inspect(images).predicted
    hits = pred == np.asarray(labels)
    per = hits.reshape(generator.num_classes, per_class).mean(1)
    return float(hits.mean()), per, images


def sample_grid(images: torch.Tensor, per_row: int) -> torch.Tensor:
    """A grid [C, H, W] with ``per_row`` images per row (one class per row when sampled per class)."""
    return make_grid(images, nrow=per_row, padding=1, pad_value=0.5)
