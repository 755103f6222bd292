"""The glyph testbed: a valid ImageFolder, deterministic for a seed, with distinct classes."""

from __future__ import annotations

import numpy as np
import pytest

from curator.cli import main
from curator.config import ConfigError
from curator.data import load_dataset
from curator.testbed import TestbedSpec, make_glyphs, make_testbed, render

TINY = dict(classes=5, per_class=4, test_per_class=1, size=16)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_testbed_is_an_image_folder_that_load_dataset_reads(tmp_path):
    root = make_testbed(tmp_path / "tb", **TINY)
    ds = load_dataset(str(root), size=16)
    assert ds.class_names == [f"glyph{i:03d}" for i in range(5)]
    assert np.bincount(ds.train.labels).tolist() == [3] * 5
    assert np.bincount(ds.test.labels).tolist() == [1] * 5
    assert ds.channels == 1 and tuple(ds.train.images.shape) == (15, 1, 16, 16)
    assert not ds.skipped
    assert float(ds.train.images.max()) > 0.5  # strokes are drawn, not a blank canvas


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _files(make_testbed(tmp_path / "a", **TINY))
    b = _files(make_testbed(tmp_path / "b", **TINY))
    c = _files(make_testbed(tmp_path / "c", **TINY, seed=1))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_classes_are_distinct_and_samples_vary():
    spec = TestbedSpec(classes=40, size=16)
    clean = np.stack([render(g, spec.size).astype(np.float32).ravel() for g in make_glyphs(spec)])
    clean /= np.linalg.norm(clean, axis=1, keepdims=True)
    sim = clean @ clean.T
    np.fill_diagonal(sim, 0.0)
    assert sim.max() < spec.max_similarity
    # class c is the same glyph in a smaller testbed of the same seed
    small = make_glyphs(TestbedSpec(classes=5, size=16))
    assert all(np.array_equal(x, y) for x, y in zip(small, make_glyphs(spec)[:5]))


def test_nearest_class_mean_beats_chance_so_labels_carry_the_glyph(tmp_path):
    ds = load_dataset(str(make_testbed(tmp_path / "tb", classes=10, per_class=6, test_per_class=2, size=16)), size=16)
    x, y = ds.train.images.flatten(1).numpy(), ds.train.labels
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    xt = ds.test.images.flatten(1).numpy()
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == ds.test.labels).mean() > 0.5  # chance is 0.1


def test_refuses_a_non_empty_folder_and_bad_parameters(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        make_testbed(tmp_path / "full", **TINY)
    with pytest.raises(ConfigError, match="test_per_class"):
        make_testbed(tmp_path / "new", classes=5, per_class=3, test_per_class=3)
    assert not (tmp_path / "new").exists()


def test_cli_make_testbed(tmp_path, capsys):
    assert main(["make-testbed", str(tmp_path / "tb"), "--classes", "3", "--per-class", "3", "--test-per-class", "1",
                 "--size", "12", "--jitter", "0.5"]) == 0  # fmt: skip
    assert "3 classes" in capsys.readouterr().out
    ds = load_dataset(str(tmp_path / "tb"), size=12)
    assert len(ds.class_names) == 3 and len(ds.train) == 6
    assert main(["make-testbed", str(tmp_path / "tb"), "--classes", "3"]) == 2  # not empty: a one-line error
    assert "not empty" in capsys.readouterr().err


def test_train_generator_block_channels_sizes_the_unet(tmp_path, capsys):
    from curator.models.generator import PixelDiffusion

    root = make_testbed(tmp_path / "tb", classes=3, per_class=3, test_per_class=1, size=8)
    out = tmp_path / "gen"
    argv = ["train-generator", "--data", str(root), "--size", "8", "--out", str(out), "--steps", "1"]
    argv += ["--batch-size", "2"]
    assert main([*argv, "--block-channels", "8,16,16", "--device", "cpu"]) == 0
    gen = PixelDiffusion.from_pretrained(out)
    assert list(gen.unet.config.block_out_channels) == [8, 16, 16] and gen.num_classes == 3
    with pytest.raises(SystemExit) as bad:  # argparse's one-line usage error, exit 2
        main([*argv, "--block-channels", "8,x"])
    assert bad.value.code == 2
    assert "--block-channels" in capsys.readouterr().err


def test_shipped_testbed_models_fit_the_testbed_and_recognise_its_glyphs():
    import torch

    from curator.config import ASSETS
    from curator.models.detector import Detector
    from curator.models.generator import PixelDiffusion
    from curator.testbed import class_name, sample

    gen = PixelDiffusion.from_pretrained(ASSETS / "testbed-generator")
    det = Detector.load(ASSETS / "testbed-detector")
    names = [class_name(i, 1000) for i in range(1000)]
    assert gen.class_names == det.class_names == names
    assert gen.resolution == det.input_size == TestbedSpec().size == 16
    spec = TestbedSpec(classes=40)  # the defaults are the shipped models' testbed; the first 40 classes of it
    glyphs = make_glyphs(spec)
    labels = np.arange(0, 40, 2)
    x = torch.stack([torch.from_numpy(sample(glyphs[c], spec, int(c), 0)).float()[None] / 255 for c in labels])
    assert (det.inspect(x).predicted == labels).mean() >= 0.9  # train images of 20 classes
