"""benchmarks/gpu_check.sh: its syntax, and its CPU fallback on a machine without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run on it, not fall back")
def test_the_cpu_fallback_runs_every_step_and_says_so(tmp_path):
    out = tmp_path / "GPU.md"
    env = dict(os.environ, PY=str(Path(sys.executable)), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert "CPU fallback" in text
    assert "| fp32 |" in text and "| ray-1-actor |" in text and "| fp16 |" not in text  # no fp16 on the CPU
    assert "image-steps/s" in text  # the throughput table of benchmarks/speed.py


def test_bad_arguments_are_refused():
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
