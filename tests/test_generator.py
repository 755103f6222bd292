import pytest
import torch
from conftest import DIGITS, make_tiny_generator

from curator.models.generator import ModelFileError, PixelDiffusion


def test_same_seed_regenerates_the_same_image_whatever_the_batch(tiny_generator):
    init = torch.rand(3, 1, 28, 28) * 2 - 1
    kw = dict(strength=0.6, guidance=2.0, steps=4)
    batch = tiny_generator.generate(init, [1, 2, 3], [11, 12, 13], batch_size=3, **kw)
    alone = tiny_generator.generate(init[1:2], [2], [12], batch_size=1, **kw)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=0)
    other_seed = tiny_generator.generate(init[1:2], [2], [99], batch_size=1, **kw)
    assert (other_seed - alone).abs().max() > 1e-3
    assert batch.shape == (3, 1, 28, 28) and 0 <= float(batch.min()) and float(batch.max()) <= 1


def test_pure_noise_sampling_and_argument_checks(tiny_generator):
    out = tiny_generator.generate(None, [0, 9], [1, 2], strength=1.0, guidance=1.0, steps=2)
    assert out.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="strength"):
        tiny_generator.generate(None, [0], [1], strength=0.0, steps=2)
    with pytest.raises(ValueError, match="labels"):
        tiny_generator.generate(None, [10], [1], strength=1.0, steps=2)
    with pytest.raises(ValueError, match="one seed"):
        tiny_generator.generate(None, [0, 1], [1], strength=1.0, steps=2)


def test_save_and_load_round_trip(tmp_path):
    gen = make_tiny_generator(DIGITS)
    gen.save_pretrained(tmp_path / "g")
    again = PixelDiffusion.from_pretrained(tmp_path / "g")
    assert again.class_names == DIGITS and again.resolution == 28
    a = gen.generate(None, [4], [5], strength=1.0, steps=2)
    b = again.generate(None, [4], [5], strength=1.0, steps=2)
    torch.testing.assert_close(a, b)


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="missing unet/config.json"):
        PixelDiffusion.from_pretrained(tmp_path / "nothing")
