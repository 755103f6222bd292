"""Training loops: they checkpoint and resume instead of starting over."""

import inspect
import json
from dataclasses import fields

import pytest
import torch
from conftest import write_image_folder

from curator.cli import _training_config, build_parser
from curator.config import DetectorTraining, GeneratorTraining
from curator.data import load_image_folder
from curator.models.detector import Detector
from curator.models.generator import PixelDiffusion
from curator.training import STATE_FILE, train_detector, train_generator


def test_generator_training_checkpoints_and_resumes(tmp_path):
    data = load_image_folder(write_image_folder(tmp_path / "d", {"a": 6, "b": 6}, size=12), size=12)
    out = tmp_path / "gen"
    kw = dict(batch_size=4, block_out_channels=(8, 8), device="cpu", progress=False, checkpoint_every=2)
    train_generator(data, out, steps=2, **kw)
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["step"] == 2 and len(state["losses"]) == 2
    gen = train_generator(data, out, steps=4, **kw)
    resumed = torch.load(out / STATE_FILE, weights_only=False)
    assert resumed["step"] == 4 and resumed["losses"][:2] == state["losses"]
    assert json.loads((out / "training.json").read_text())["steps"] == 4
    assert isinstance(gen, PixelDiffusion) and gen.class_names == ["a", "b"] and gen.resolution == 12
    assert PixelDiffusion.from_pretrained(out).generate(None, [1], [0], steps=2).shape == (1, 1, 12, 12)


def test_detector_training_checkpoints_each_epoch_and_resumes(tmp_path):
    data = load_image_folder(write_image_folder(tmp_path / "d", {"a": 8, "b": 8}, size=16), size=16)
    out = tmp_path / "det"
    kw = dict(batch_size=8, device="cpu", progress=False, model_kwargs={"channels": [8, 8, 8, 8], "output_stride": 8})
    train_detector(data, out, epochs=1, **kw)
    assert torch.load(out / STATE_FILE, weights_only=False)["epoch"] == 1
    det = train_detector(data, out, epochs=2, **kw)
    assert torch.load(out / STATE_FILE, weights_only=False)["epoch"] == 2
    again = Detector.load(out)
    assert again.class_names == ["a", "b"] and again.info["epochs"] == 2
    x = data.test.images
    torch.testing.assert_close(torch.from_numpy(again.inspect(x).probs), torch.from_numpy(det.inspect(x).probs))


@pytest.mark.parametrize(
    ("command", "config"), [("train-generator", GeneratorTraining), ("train-detector", DetectorTraining)]
)
def test_the_cli_and_the_library_train_with_the_same_defaults(command, config):
    """One config dataclass per training command: its defaults are the CLI's and the library's."""
    args = build_parser().parse_args([command, "--out", "model"])
    assert _training_config(args, config) == config()
    library = train_generator if config is GeneratorTraining else train_detector
    assert inspect.signature(library).parameters["config"].default is None  # None = config()
    assert [f.name for f in fields(config) if "help" in f.metadata] == [  # every option is the dataclass's
        name for name in vars(args) if name not in ("command", "func", "data", "out", "size", "channels")
    ]
    assert DetectorTraining().epochs == 30  # the shipped detector's (assets/detector/README.md)
