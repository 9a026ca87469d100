"""The GPU check script (experiments/benchmarks/gpu_check.py) at a tiny size on the CPU: the same code path as on a
GPU (the Diff-MVAE* config, bf16-mixed training with channels_last, DPM-Solver++ 15 and DDIM-50 sampling), so the script cannot rot between GPU runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("compile_args", [[], ["--compile_backend", "aot_eager"]], ids=["eager", "compiled"])
def test_gpu_check_runs_on_the_cpu_and_reports_its_numbers(compile_args):
    """Also with the encoders and UNets compiled (aot_eager traces forward and backward under bf16-mixed as inductor
    would, without generating code)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "experiments/benchmarks/gpu_check.py"), "--accelerator", "cpu", "--steps", "3",
                          "--batch_size", "4", "--n", "2", *compile_args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"compile {compile_args[-1] if compile_args else 'off'}" in out.stdout
    steps = re.search(r"training: ([0-9.]+) steps/s", out.stdout)
    assert steps and float(steps.group(1)) > 0, out.stdout
    for sampler in ("dpmpp_2m-15", "ddim-50"):
        images = re.search(rf"sampling \({sampler}, m1\.\.m4 given m0\): ([0-9.]+) images/s, peak memory n/a \(CPU\), finite: True", out.stdout)
        assert images and float(images.group(1)) > 0, out.stdout
