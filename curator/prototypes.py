"""Class prototypes: k-means centres of a class's images in the generator's init space."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from curator.data import DataError, ImageSet

if TYPE_CHECKING:
    from curator.models.generator import Generator

ENCODE_BATCH = 256  # images decoded and encoded at a time by encode_class


@torch.no_grad()
def encode_class(generator: Generator, images: ImageSet, label: int, batch_size: int = ENCODE_BATCH) -> torch.Tensor:
    """``generator.encode`` of every image of class ``label`` in ``images`` (row order), streamed.

    The class is read and encoded ``batch_size`` images at a time into one preallocated tensor,
    so only the class's latents and one float batch are held, never the class (or the split) as
    float images. Equal to ``generator.encode(images.of_class(label))`` for an encoder that treats
    rows independently (PixelDiffusion does).
    """
    n = len(images.class_indices(label))
    out = None
    lo = 0
    for batch in images.iter_class(label, batch_size):
        z = generator.encode(batch)
        if out is None:
            out = torch.empty((n, *z.shape[1:]), dtype=z.dtype, device=z.device)
        out[lo : lo + len(z)] = z
        lo += len(z)
    if out is None:  # no image of the class: an empty batch keeps the latent shape
        return generator.encode(images.load([]))
    return out


def class_prototypes(
    latents: torch.Tensor, n: int, seed: int = 0, class_name: str = ""
) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` k-means centres of ``latents`` [N, ...] (seeded, so repeatable) and each row's cluster.

    Centres are ordered by cluster size (largest first, ties by position) so that prototype 0
    is the class's most typical mode.
    """
    if n < 1:
        raise DataError(f"IPC must be at least 1, got {n}")
    if len(latents) < n:
        raise DataError(f"class {class_name!r} has {len(latents)} training images, fewer than IPC = {n}")
    flat = latents.reshape(len(latents), -1).double().numpy()
    # One BLAS thread: k-means here multiplies small matrices, where OpenBLAS threads cost more than
    # they save (8x slower for mnist5k's 10 classes on 2 cores, benchmarks/SPEED.md); same centres.
    with threadpool_limits(1, user_api="blas"):
        km = KMeans(n_clusters=n, n_init=4, random_state=seed).fit(flat)
    sizes = np.bincount(km.labels_, minlength=n)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty(n, dtype=int)
    remap[order] = np.arange(n)
    centres = torch.from_numpy(km.cluster_centers_[order]).float().reshape(n, *latents.shape[1:])
    return centres, remap[km.labels_]


def nearest_to_prototypes(latents: torch.Tensor, centres: torch.Tensor) -> np.ndarray:
    """Index of the real row nearest each centre (distinct rows), the herding-like baseline."""
    d = torch.cdist(centres.reshape(len(centres), -1).double(), latents.reshape(len(latents), -1).double())
    taken: set[int] = set()
    out = []
    for row in d:
        for idx in row.argsort().tolist():
            if idx not in taken:
                taken.add(idx)
                out.append(idx)
                break
    return np.asarray(out)
