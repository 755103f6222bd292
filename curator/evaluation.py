"""Evaluation, the field's yardstick: train a fresh student on a distilled set, test it on real data.

``python -m curator evaluate PATH --student convnet --seeds 3`` where PATH is

* a **run folder** (``run.sqlite``): its curated set (``review.final_set``: passed originals and
  picked candidates, unresolved and dropped anomalies left out), tested on the real test split of
  the run's dataset (``RunConfig.data``, split with the run's ``test_fraction`` and ``seed``);
* an **export** (``run.json`` + ``OUT/<class>/*.png``): every image in the class folders, tested
  on the test split of ``run.json["parameters"]["data"]``, split the same way;
* any other **ImageFolder** (``root/<class>/*``): every image is training data, and
  ``--test-data`` (``mnist5k`` or a dataset path) names the dataset whose test split is used, split
  as ``curator.data.load_dataset`` splits it (its ``test/`` folder, or a seeded 20% per class).

``--test-data`` also overrides the dataset of a run or an export (e.g. when its path moved).
Classes are matched by **name**, so a distilled set may cover a subset of the test classes.

Protocol (DC, Zhao et al. 2021; DM, Zhao & Bilen 2023): the "ConvNet-3" student, 3 blocks of
conv 3x3 with 128 channels, instance norm (``GroupNorm(128, 128)``), ReLU, 2x2 average pooling,
then one linear layer. SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the learning rate divided
by 10 at half the epochs, minibatches of 256 (full batch for smaller sets), about 300 SGD steps
(300 epochs up to 256 images, 150 at 500: ``default_epochs``), cross-entropy, and
per-batch random shift (up to 1/8 of the side), rotation (up to 15 degrees) and scale (0.9..1.1);
no flips unless asked (digits are not mirror-symmetric). Each seed draws its own initialisation
and augmentation; top-1 is reported as mean and population std (``np.std``) over seeds, in percent.
Runs on CUDA when present, else the CPU. Measured on one core of the 2-core machine (the other
core busy): a student takes about 17 s at IPC 1 and 360 s at IPC 10 on mnist5k.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from curator.data import IMAGE_EXTENSIONS, DataError, ImageSet, load_dataset
from curator.training import pick_device

STUDENTS = ("convnet",)
BATCH_SIZE = 256
TRAIN_STEPS = 300  # SGD steps of the protocol's default length (see ``default_epochs``)


def default_epochs(n_images: int, batch_size: int = BATCH_SIZE) -> int:
    """Epochs for about ``TRAIN_STEPS`` SGD steps: 300 epochs (full batch) up to 256 images,
    fewer for larger sets (150 at 500 images). DC/DM train 1,000 epochs; measured on mnist5k at
    IPC 1, 1,000 epochs gave the same accuracy as 300 at 3.5x the time."""
    batches = max(1, math.ceil(n_images / batch_size))
    return max(1, math.ceil(TRAIN_STEPS / batches))


# --- the student -------------------------------------------------------------------------------
class ConvNet(nn.Module):
    """DC/DM ConvNet: ``depth`` x [conv 3x3 ``width``, instance norm, ReLU, avg-pool 2x2] + linear.

    As in the DC reference code, a 1-channel 28-pixel input gets padding 3 in the first conv
    (28 -> 32), so the three poolings leave a 4x4 map.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = image_size, channels
        for d in range(depth):
            pad = 3 if (d == 0 and channels == 1 and image_size == 28) else 1
            layers += [
                nn.Conv2d(c_in, width, 3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            size = (size + 2 * pad - 2) // 2
            c_in = width
        if size < 1:
            raise DataError(f"images of {image_size} pixels are too small for a depth-{depth} ConvNet")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def build_student(name: str, channels: int, num_classes: int, image_size: int) -> nn.Module:
    if name != "convnet":
        raise ValueError(f"unknown student {name!r}; available: {', '.join(STUDENTS)}")
    return ConvNet(channels, num_classes, image_size)


# --- training and testing ----------------------------------------------------------------------
def augment(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Random shift (up to 1/8 of the side), rotation (up to 15 deg) and scale (0.9..1.1) per image,
    one batched ``grid_sample``; mirror flips only when ``flip``. Empty borders are black (0)."""
    n = len(x)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(15)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.25  # grid units: [-1, 1] spans the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    row0 = torch.stack([cos * sx, -sin, shift[:, 0]], 1)
    row1 = torch.stack([sin * sx, cos, shift[:, 1]], 1)
    theta = torch.stack([row0, row1], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def train_student(
    images: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    *,
    student: str = "convnet",
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = 0.01,
    flip: bool = False,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train a fresh student on ``images`` [N, C, H, W] in [0, 1] with class indices ``labels``.

    ``epochs`` None means ``default_epochs(len(images))``."""
    if len(images) == 0:
        raise DataError("the training set is empty: nothing to train a student on")
    epochs = default_epochs(len(images), batch_size) if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_student(student, images.shape[1], num_classes, images.shape[-1]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 2], 0.1)
    x_all, y_all = images.float(), torch.as_tensor(labels, dtype=torch.long)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for lo in range(0, len(perm), batch_size):
            idx = perm[lo : lo + batch_size]
            x = _normalize(augment(x_all[idx], gen, flip)).to(device)
            loss = F.cross_entropy(model(x), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def top1_accuracy(model: nn.Module, test: ImageSet, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``test``."""
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    for lo in range(0, len(test), batch_size):
        x = _normalize(test.load(np.arange(lo, min(lo + batch_size, len(test))))).to(device)
        hits += int((model(x).argmax(1).cpu().numpy() == test.labels[lo : lo + batch_size]).sum())
    return hits / max(1, len(test))


# --- what to evaluate --------------------------------------------------------------------------
@dataclass
class EvalSet:
    """Training images [N, C, H, W] in [0, 1] with labels indexing ``class_names`` (the test data's
    classes), the real test split, and where both came from (for reports)."""

    images: torch.Tensor
    labels: np.ndarray
    class_names: list[str]
    test: ImageSet
    source: str  # run | export | folder | arrays
    test_source: str


@dataclass
class EvalResult:
    """Top-1 accuracy per seed (fractions in [0, 1]) and how it was obtained."""

    accuracies: list[float]
    student: str
    epochs: int
    n_train: int
    n_test: int
    seconds: float  # wall time of all seeds
    seeds: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def summary(self) -> str:
        per = ", ".join(f"{100 * a:.2f}" for a in self.accuracies)
        return (
            f"top-1 {100 * self.mean:.2f} +- {100 * self.std:.2f} % over {len(self.accuracies)} seed(s) [{per}]; "
            f"{self.student}, {self.epochs} epochs, {self.n_train} training / {self.n_test} test images, "
            f"{self.seconds:.1f} s"
        )


def _read_folder(root: Path, size: int | None) -> tuple[torch.Tensor, list[str], list[str]]:
    """Every image under ``root/<class>/`` (recursively): images, their class names, class list.

    Grayscale when every image is; resized to ``size`` (default: the first image's width)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [
        (c, f)
        for c in classes
        for f in sorted((root / c).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise DataError(f"{root} holds no images in class folders (expected {root}/<class>/<image>)")
    pics, names = [], []
    for c, f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pics.append(im.copy())
                names.append(c)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {f}: {exc}") from exc
    gray = all(p.mode in ("L", "1", "I", "I;16", "LA", "F") for p in pics)
    mode, side = ("L" if gray else "RGB"), size or pics[0].size[0]
    arrays = []
    for p in pics:
        a = np.asarray(p.convert(mode).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)), names, sorted(set(names))


def _run_images(path: Path) -> tuple[torch.Tensor, list[str], dict]:
    from curator.review import final_set
    from curator.store import RunStore

    store = RunStore.open(path)
    try:
        names = store.class_names
        rows = [(names[label], item.image) for label in range(len(names)) for item in final_set(store, label)]
        if not rows:
            raise DataError(f"the run at {path} has no curated images yet; run or resume it first")
        images = torch.stack([store.load_image(r) for _, r in rows])
        params = json.loads(store.config.to_json())
    finally:
        store.close()
    return images, [n for n, _ in rows], params


def load_eval_set(
    path: str | os.PathLike,
    test_data: str | None = None,
    size: int | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
) -> EvalSet:
    """A run folder, an export or an ImageFolder as a training set, with the matching real test split.

    ``test_fraction`` and ``split_seed`` override how a test split is cut from a dataset without
    ``train/`` and ``test/`` folders (default: the run's parameters, else 0.2 and 0).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"nothing to evaluate at {path}: expected a run folder, an export or an ImageFolder")
    params: dict = {}
    if (path / "run.sqlite").is_file():
        source = "run"
        images, names, params = _run_images(path)
        if size and images.shape[-1] != size:
            from curator.data import resize_images

            images = resize_images(images, size, images.shape[1])
    elif (path / "train").is_dir() and (path / "test").is_dir():
        raise DataError(f"{path} has train/ and test/ splits: evaluate {path / 'train'} with --test-data {path}")
    else:
        source = "folder"
        if (path / "run.json").is_file():
            try:
                params = json.loads((path / "run.json").read_text()).get("parameters", {})
                source = "export"
            except (json.JSONDecodeError, AttributeError) as exc:
                raise DataError(f"cannot read {path / 'run.json'}: {exc}") from exc
        images, names, _ = _read_folder(path, size)
    spec = test_data or params.get("data")
    if not spec:
        raise DataError(
            f"{path} is a plain ImageFolder, so its test data is unknown: pass --test-data mnist5k "
            "or --test-data PATH (a dataset whose test split to use)"
        )
    frac = test_fraction if test_fraction is not None else params.get("test_fraction", 0.2)
    seed = split_seed if split_seed is not None else params.get("seed", 0)
    data = load_dataset(spec, size=images.shape[-1], channels=images.shape[1], test_fraction=frac, seed=seed)
    missing = sorted(set(names) - set(data.class_names))
    if missing:
        raise DataError(f"classes {missing} of {path} are not classes of the test data {spec!r} ({data.class_names})")
    if len(data.test) == 0:
        raise DataError(f"the test data {spec!r} has an empty test split")
    labels = np.asarray([data.class_names.index(n) for n in names], dtype=np.int64)
    return EvalSet(images, labels, data.class_names, data.test, source, f"{data.name} test split ({len(data.test)})")


def evaluate_set(
    es: EvalSet,
    *,
    student: str = "convnet",
    seeds: int | list[int] = 3,
    epochs: int | None = None,
    device: str = "auto",
    flip: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Train one student per seed (``seeds``: a count, meaning 0..n-1, or a list) and test each."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("seeds must be at least 1")
    dev = pick_device(device)
    epochs = default_epochs(len(es.images)) if epochs is None else epochs
    t0, accs = time.time(), []
    for s in seed_list:
        model = train_student(
            es.images, es.labels, len(es.class_names), student=student, seed=s, epochs=epochs, flip=flip, device=dev
        )
        accs.append(top1_accuracy(model, es.test))
        if progress:
            progress(s, accs[-1])
    return EvalResult(accs, student, epochs, len(es.images), len(es.test), time.time() - t0, seed_list)
