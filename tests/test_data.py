import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from curator.data import DataError, load_dataset, load_image_folder


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
