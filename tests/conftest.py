"""Shared fixtures: tiny random models for plumbing tests, the shipped models for behaviour tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from contextlib import contextmanager
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR  # noqa: E402
from curator.data import load_mnist5k  # noqa: E402
from curator.models.detector import Detector  # noqa: E402
from curator.models.generator import PixelDiffusion, build_scheduler, build_unet  # noqa: E402

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="session")
def mnist():
    return load_mnist5k()


def make_tiny_generator(class_names: list[str], resolution: int = 28, channels: int = 1) -> PixelDiffusion:
    torch.manual_seed(0)
    unet = build_unet(len(class_names), resolution, channels, block_out_channels=(8, 16, 16))
    return PixelDiffusion(unet, dict(build_scheduler().config), class_names)


def make_tiny_detector(class_names: list[str], input_size: int = 28, channels: int = 1) -> Detector:
    torch.manual_seed(0)
    return Detector.create(
        "resnet10t", class_names, input_size, channels, model_kwargs={"channels": [8, 16, 16, 16], "output_stride": 8}
    )


@pytest.fixture(scope="session")
def tiny_generator() -> PixelDiffusion:
    return make_tiny_generator(DIGITS)


@pytest.fixture(scope="session")
def tiny_detector() -> Detector:
    return make_tiny_detector(DIGITS)


@pytest.fixture(scope="session")
def shipped_generator() -> PixelDiffusion:
    return PixelDiffusion.from_pretrained(DEFAULT_GENERATOR)


@pytest.fixture(scope="session")
def shipped_detector() -> Detector:
    return Detector.load(DEFAULT_DETECTOR)


def write_image_folder(root: Path, classes: dict[str, int], size: int = 20, rgb: bool = False, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: each class a bright square at its own position on black, with noise."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 40, (size, size), dtype=np.uint8)
            o = (c * 5) % (size - 6)
            arr[o : o + 6, o : o + 6] = 230
            img = Image.fromarray(arr)
            if rgb:
                img = Image.merge("RGB", (img, img.point(lambda v: v // 2), img.point(lambda v: 255 - v)))
            img.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app launched on 127.0.0.1 (free port) over tiny models and a 2-class ImageFolder."""
    from curator.ui import AppSettings

    root = tmp_path_factory.mktemp("app")
    data = write_image_folder(root / "data", {"a": 12, "b": 12}, size=20)
    make_tiny_generator(["a", "b"], resolution=20).save_pretrained(root / "gen")
    make_tiny_detector(["a", "b"], input_size=20).save(root / "det")
    settings = AppSettings(runs_dir=root / "runs")
    with serving(settings) as url:
        yield {
            "url": url,
            "data": str(data),
            "gen": str(root / "gen"),
            "det": str(root / "det"),
            "runs": settings.runs_dir,
        }


@contextmanager
def serving(settings):
    """The app for ``settings`` served on 127.0.0.1 (a free port) while the block runs: its URL."""
    from curator.ui import build_demo, launch_kwargs

    demo = build_demo(settings)
    demo.queue().launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **launch_kwargs(settings)
    )
    try:
        yield demo.local_url
    finally:
        demo.close()
