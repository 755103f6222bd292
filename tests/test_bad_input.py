"""Bad input, as a user meets it: one ``error: ...`` line on stderr, exit status 2, nothing written.

Covers a CUDA device on a machine without one, truncated or corrupt model files, and the files a
training command skips as unreadable. The subprocesses run with ``CUDA_VISIBLE_DEVICES=""``, so
they see no GPU on any machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_image_folder

from curator.config import DEFAULT_DETECTOR, DEFAULT_GENERATOR, ConfigError
from curator.errors import USER_ERRORS, DataError, ModelFileError, StoreError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
RUN = ("run", "--data", "mnist5k", "--classes", "0", "--ipc", "1", "--k", "1", "--steps", "1")


def curator(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curator", *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout
    )


def one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2 and a single ``error:`` line on stderr that contains every needle."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path]:
    """Copies of the shipped generator and detector, to damage."""
    gen, det = tmp_path / "G", tmp_path / "D"
    shutil.copytree(DEFAULT_GENERATOR, gen)
    shutil.copytree(DEFAULT_DETECTOR, det)
    return gen, det


# --- the error classes -------------------------------------------------------------------------


def test_errors_module_imports_no_torch_and_the_classes_are_shared():
    code = (
        "import sys, curator.cli, curator.errors; "
        "print(sorted(m for m in ('torch', 'numpy', 'diffusers', 'timm', 'pandas') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"

    import curator.data
    import curator.models.generator
    import curator.store

    assert curator.data.DataError is DataError and curator.models.generator.ModelFileError is ModelFileError
    assert curator.store.StoreError is StoreError
    assert issubclass(ModelFileError, FileNotFoundError) and issubclass(DataError, ValueError)
    assert {ConfigError, DataError, ModelFileError, StoreError} <= set(USER_ERRORS)


# --- a CUDA device on a machine without one ----------------------------------------------------


def test_pick_device_without_cuda_is_a_config_error(monkeypatch):
    import torch

    from curator.training import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"CUDA was asked for \\(--device {device}\\) but no CUDA GPU"):
            pick_device(device)
    with pytest.raises(ConfigError, match="'tpu'"):
        pick_device("tpu")
    assert pick_device("auto") == torch.device("cpu") == pick_device(torch.device("cpu"))


def test_run_with_cuda_and_no_gpu_writes_no_run(tmp_path):
    res = curator(*RUN, "--device", "cuda", "--out", str(tmp_path / "runs"))
    one_error_line(res, "CUDA was asked for (--device cuda)", "--device cpu or auto")
    assert nothing_in(tmp_path / "runs")


@pytest.mark.parametrize("command", ["train-detector", "train-generator", "check-generator", "evaluate"])
def test_other_commands_with_cuda_and_no_gpu(tmp_path, command):
    out = tmp_path / "out"
    if command.startswith("train-"):
        args = (command, "--out", str(out), "--device", "cuda:0")
    elif command == "check-generator":
        args = (command, "--grid", str(out / "grid.png"), "--device", "cuda:0")
    else:
        folder = write_image_folder(tmp_path / "set", {"a": 6, "b": 6})
        args = (command, str(folder), "--test-data", str(folder), "--seeds", "1", "--epochs", "1", "--device", "cuda:0")
    one_error_line(curator(*args), "CUDA was asked for (--device cuda:0)")
    assert not out.exists()


# --- truncated or corrupt model files ----------------------------------------------------------


@pytest.mark.parametrize("damaged", ["detector", "generator"])
def test_run_with_truncated_weights_names_the_file(tmp_path, models, damaged):
    gen, det = models
    weights = det / "model.safetensors" if damaged == "detector" else gen / "unet/diffusion_pytorch_model.safetensors"
    truncate_half(weights)
    res = curator(
        *RUN, "--device", "cpu", "--generator", str(gen), "--detector", str(det), "--out", str(tmp_path / "r")
    )
    one_error_line(res, str(weights))
    assert nothing_in(tmp_path / "r")


def test_detector_load_names_the_damaged_file(models):
    from curator.models.detector import Detector

    _, det = models
    truncate_half(det / "model.safetensors")
    with pytest.raises(ModelFileError, match="model.safetensors") as info:
        Detector.load(det)
    assert info.value.__cause__ is not None  # the library's error is chained, not lost
    shutil.copy(Path(DEFAULT_DETECTOR) / "model.safetensors", det / "model.safetensors")
    Detector.load(det)  # the copy is loadable again
    (det / "config.json").write_text('{"arch": "resnet10t",')
    with pytest.raises(ModelFileError, match="config.json"):
        Detector.load(det)
    (det / "config.json").write_text('{"arch": "resnet10t"}')  # valid JSON, not a detector config
    with pytest.raises(ModelFileError, match="config.json.*class_names"):
        Detector.load(det)


def test_pixel_generator_load_names_the_damaged_file(models):
    from curator.models.generator import PixelDiffusion

    gen, _ = models
    weights = gen / "unet/diffusion_pytorch_model.safetensors"
    truncate_half(weights)
    with pytest.raises(ModelFileError, match="diffusion_pytorch_model.safetensors") as info:
        PixelDiffusion.from_pretrained(gen)
    assert info.value.__cause__ is not None
    shutil.copy(Path(DEFAULT_GENERATOR) / "unet/diffusion_pytorch_model.safetensors", weights)
    for name in ("classes.json", "unet/config.json", "scheduler/scheduler_config.json"):
        good = (gen / name).read_text()
        (gen / name).write_text("{not json")
        with pytest.raises(ModelFileError, match=name):
            PixelDiffusion.from_pretrained(gen)
        (gen / name).write_text(good)
    (gen / "classes.json").write_text(json.dumps(["a", "b"]))  # the UNet has 10 classes
    with pytest.raises(ModelFileError, match="lists 2 classes but the UNet"):
        PixelDiffusion.from_pretrained(gen)


def test_backends_loader_names_the_damaged_file(models):
    from curator.models.backends import load_generator

    gen, _ = models
    (gen / "classes.json").write_text("[")
    with pytest.raises(ModelFileError, match="classes.json"):
        load_generator(str(gen))
    (gen / "model_index.json").write_text("{")
    with pytest.raises(ModelFileError, match="model_index.json"):
        load_generator(str(gen))
    (gen / "model_index.json").write_bytes(b"\xff\xfe\x00")  # not even text
    with pytest.raises(ModelFileError, match="model_index.json"):
        load_generator(str(gen))


# --- unreadable images are listed by the training commands -------------------------------------


@pytest.mark.parametrize("command", ["train-detector", "train-generator"])
def test_training_lists_the_files_it_skips(tmp_path, command):
    data = write_image_folder(tmp_path / "data", {"a": 8, "b": 8}, size=16)
    bad = data / "a" / "corrupt.png"
    bad.write_bytes(os.urandom(200))
    out = tmp_path / "model"
    args = ("--epochs", "1") if command == "train-detector" else ("--steps", "1", "--batch-size", "4")
    res = curator(command, "--data", str(data), "--out", str(out), "--size", "16", "--device", "cpu", *args)
    assert res.returncode == 0, res.stderr
    assert "skipped 1 unreadable file(s):" in res.stderr
    assert f"  {bad}: " in res.stderr
    assert out.is_dir()


def test_training_options_out_of_range_are_one_line(tmp_path, capsys):
    from curator.cli import main

    out = tmp_path / "model"
    for args, needle in (
        (["train-detector", "--epochs", "0"], "parameter epochs must be at least 1"),
        (["train-generator", "--batch-size", "0"], "parameter batch_size must be at least 1"),
        (["train-generator", "--lr", "-1"], "parameter lr must be > 0"),
        (["train-detector", "--device", "tpu"], "parameter device must be auto, cpu, cuda or cuda:N"),
        (["train-detector", "--arch", "no-such-net", "--epochs", "1"], "timm has no model named 'no-such-net'"),
    ):
        assert main([*args, "--out", str(out)]) == 2, needle
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --- parameters are checked before the heavy imports ------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--tau", "1.5"), "tau"),
        (("--generator", DEFAULT_GENERATOR, "--tau", "-1"), "tau"),
        (("--k", "0"), "k"),
        (("--uniqueness-centre", "global", "--strength", "0"), "strength"),
        (("--data", "/no/such/dataset"), "/no/such/dataset"),
        (("--run-id", "../escape"), "--run-id"),
    ],
)
def test_bad_run_parameters_fail_in_seconds(tmp_path, args, needle):
    """Checked before torch and the models load: a generous 5 s bound (the heavy path takes 30 s+)."""
    t0 = time.monotonic()
    res = curator("run", "--out", str(tmp_path / "runs"), *args, timeout=60)
    seconds = time.monotonic() - t0
    one_error_line(res, needle)
    assert seconds < 5, f"{seconds:.1f} s"
    assert nothing_in(tmp_path / "runs")


def test_resume_of_a_missing_run_fails_in_seconds(tmp_path):
    t0 = time.monotonic()
    one_error_line(curator("run", "--resume", str(tmp_path / "nope"), timeout=60), "no run at")
    assert time.monotonic() - t0 < 5
