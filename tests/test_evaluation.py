"""curator.evaluation and ``python -m curator evaluate``: tiny sets, few epochs (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_detector, make_tiny_generator, write_image_folder

from curator.cli import main
from curator.config import RunConfig
from curator.data import DataError, load_dataset
from curator.engine import LocalEngine
from curator.evaluation import (
    ConvNet,
    augment,
    default_epochs,
    evaluate_set,
    load_eval_set,
    top1_accuracy,
    train_student,
)
from curator.export import export_run
from curator.review import final_set

CLASSES = {"a": 10, "b": 10, "c": 10}


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """An ImageFolder with train/ and test/ splits: three classes, a bright square each."""
    root = tmp_path_factory.mktemp("split")
    write_image_folder(root / "train", CLASSES, seed=0)
    write_image_folder(root / "test", {k: 6 for k in CLASSES}, seed=1)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, split_folder):
    """A finished run of the pipeline with tiny random models on ``split_folder``."""
    names = sorted(CLASSES)
    cfg = RunConfig(data=str(split_folder), ipc=2, k=3, steps=2, device="cpu")
    gen, det = make_tiny_generator(names, 20), make_tiny_detector(names, 20)
    engine = LocalEngine.create(cfg, str(tmp_path_factory.mktemp("runs")), "r1", generator=gen, detector=det)
    engine.run()
    return engine.store


def test_convnet_is_three_blocks_of_128_and_a_linear_head():
    net = ConvNet(1, 10, 28)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128]
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 128 for m in net.modules()) == 3
    assert net.classifier.in_features == 128 * 4 * 4  # 28 padded to 32 -> 16 -> 8 -> 4, as in DC
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert ConvNet(3, 5, 32)(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_augment_is_seeded_and_never_mirrors_without_flip():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 4:12, 1:4] = 1.0  # a bar at the left edge
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    left, right = a[..., :8].sum((1, 2, 3)), a[..., 8:].sum((1, 2, 3))
    assert (left > right).all()  # shifts of at most 1/8 and 15 degrees keep the bar on the left
    flipped = augment(x, torch.Generator().manual_seed(0), flip=True)
    assert (flipped[..., 8:].sum((1, 2, 3)) > flipped[..., :8].sum((1, 2, 3))).any()


def test_default_epochs_keep_about_300_sgd_steps():
    assert default_epochs(10) == default_epochs(256) == 300
    assert default_epochs(500) == 150  # 2 minibatches of 256 per epoch


def test_student_learns_a_separable_set(split_folder):
    data = load_dataset(str(split_folder), size=20)
    model = train_student(data.train.images, data.train.labels, 3, seed=0, epochs=30)
    assert top1_accuracy(model, data.test) >= 0.9


def test_plain_folder_needs_test_data(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "set", {"a": 2, "b": 2})
    assert main(["evaluate", str(folder), "--seeds", "1", "--epochs", "1"]) == 2
    assert "--test-data" in capsys.readouterr().err


def test_a_split_dataset_is_not_mistaken_for_classes_train_and_test(split_folder):
    with pytest.raises(DataError, match="train/ and test/ splits"):
        load_eval_set(split_folder, test_data="mnist5k")
    assert load_eval_set(split_folder / "train", test_data=str(split_folder)).class_names == ["a", "b", "c"]


def test_classes_unknown_to_the_test_data_are_named(tmp_path, split_folder):
    folder = write_image_folder(tmp_path / "set", {"a": 2, "zebra": 2})
    with pytest.raises(DataError, match="zebra"):
        load_eval_set(folder, test_data=str(split_folder))


def test_cli_evaluates_an_image_folder_against_a_test_split(tmp_path, split_folder, capsys):
    folder = write_image_folder(tmp_path / "set", {"b": 3, "c": 3}, seed=5)  # a subset of the classes
    es = load_eval_set(folder, test_data=str(split_folder))
    assert es.source == "folder" and es.class_names == ["a", "b", "c"]
    assert sorted(es.labels.tolist()) == [1, 1, 1, 2, 2, 2]  # matched by name, not by folder order
    assert len(es.test) == 18
    assert main(["evaluate", str(folder), "--test-data", str(split_folder), "--seeds", "2", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "seed 0" in out and "seed 1" in out and "over 2 seed(s)" in out


def test_run_and_its_export_evaluate_the_same_curated_set(tmp_path, tiny_run):
    run_set = load_eval_set(tiny_run.path)
    curated = [item for c in range(3) for item in final_set(tiny_run, c)]
    assert run_set.source == "run" and len(run_set.images) == len(curated)
    assert run_set.labels.tolist() == [item.image.label for item in curated]
    assert len(run_set.test) == 18  # the run's dataset's test/ folder
    exp_set = load_eval_set(export_run(tiny_run, tmp_path / "export"))
    assert exp_set.source == "export"
    assert sorted(exp_set.labels.tolist()) == sorted(run_set.labels.tolist())
    assert np.allclose(np.sort(exp_set.images.sum((1, 2, 3)).numpy()), np.sort(run_set.images.sum((1, 2, 3)).numpy()))


def test_evaluate_reports_one_accuracy_per_seed(tiny_run):
    result = evaluate_set(load_eval_set(tiny_run.path), seeds=[3, 4], epochs=1, device="cpu")
    assert result.seeds == [3, 4] and len(result.accuracies) == 2
    assert all(0 <= a <= 1 for a in result.accuracies)
    assert result.std == pytest.approx(np.std(result.accuracies))
