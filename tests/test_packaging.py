"""The package: pyproject.toml is the one list of dependencies, and an installed wheel runs.

``requirements.txt`` (runtime: what a Hugging Face Space installs) and ``requirements-dev.txt``
(``-r requirements.txt`` plus the ``test`` and ``dev`` extras) are generated from pyproject.toml::

    .venv/bin/python -m tests.test_packaging --write
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "# Generated from pyproject.toml by `python -m tests.test_packaging --write`; edit that, not this.\n"
PINS_NOTE = "# torch and torchvision are pinned exactly: unpinned, pip pulls a multi-GB build (README, Install).\n"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def expected_requirements() -> dict[str, str]:
    """{file name: text} of the requirement files, from pyproject.toml."""
    p = project()
    extras = p["optional-dependencies"]
    dev = [r for name in ("test", "dev") for r in extras[name] if not r.startswith(p["name"] + "[")]
    runtime = "# Runtime: what the app and the CLI need (a Hugging Face Space installs this file).\n"
    tools = "# Tests and development: `make test` installs this file.\n"
    return {
        "requirements.txt": HEADER + runtime + PINS_NOTE + "".join(r + "\n" for r in p["dependencies"]),
        "requirements-dev.txt": HEADER + tools + "-r requirements.txt\n" + "".join(r + "\n" for r in dev),
    }


def test_requirement_files_agree_with_pyproject():
    for name, text in expected_requirements().items():
        got = (ROOT / name).read_text()
        assert got == text, f"{name} differs from pyproject.toml: run python -m tests.test_packaging --write"


def test_the_runtime_needs_no_test_tools():
    runtime = {r.split("=")[0].split(">")[0].split("<")[0].lower() for r in project()["dependencies"]}
    assert not runtime & {"pytest", "pytest-timeout", "playwright", "ruff"}
    assert {"torch", "gradio", "diffusers", "timm", "ray"} <= runtime


def build_wheel(work: Path) -> Path:
    """Build the wheel from a copy of the sources (a build writes build/ and *.egg-info beside them)."""
    src = work / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "train_state.pt")
    for d in ("curator", "assets"):
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         str(work / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (work / "dist").glob("curator-*.whl")
    return wheel


def test_an_installed_wheel_runs_the_shipped_models_from_anywhere(tmp_path):
    """``pip install .`` then ``curator run`` from another folder: the console script is there and
    the shipped models travel inside the package (no path back to the source checkout)."""
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"curator/{p.relative_to(ROOT)}" for p in (ROOT / "assets").rglob("*") if p.is_file()}
    shipped = {n for n in shipped if not n.endswith("train_state.pt")}
    assert shipped <= names, f"not in the wheel: {sorted(shipped - names)}"
    assert "curator/models/backends/imagenette.json" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "curator = curator.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    script = [sys.executable, str(target / "bin" / "curator")]
    proc = subprocess.run(
        [*script, "run", "--data", "mnist5k", "--ipc", "1", "--k", "2", "--steps", "4", "--classes", "0,1",
         "--out", "runs", "--run-id", "r"],
        cwd=away, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from curator.store import RunStore

    store = RunStore.open(away / "runs" / "r")
    try:
        generator = Path(store.config.generator)
    finally:
        store.close()
    assert generator.resolve() == (target / "curator" / "assets" / "generator").resolve(), generator


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write requirements*.txt from pyproject.toml.")
    ap.add_argument("--write", action="store_true")
    if not ap.parse_args().write:
        ap.error("nothing to do: pass --write")
    for name, text in expected_requirements().items():
        (ROOT / name).write_text(text)
        print(f"wrote {name}")
