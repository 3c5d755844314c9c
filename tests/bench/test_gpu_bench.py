"""bench/gpu.py's logic without a GPU: its smoke mode builds the models, runs every side (the two-device
row on two CPU processes) and prints the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


@pytest.mark.slow
def test_gpu_bench_smoke_runs_openft_and_trl_and_reports_each_row(tmp_path):
    pytest.importorskip("trl")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--work", str(tmp_path), "--rows", "tiny LoRA"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "tiny LoRA: " in out and "GFLOP per token" in out
    openft = next(line for line in out.splitlines() if line.strip().startswith("openft "))
    assert "tokens/s" in openft and "Training on CPU" in openft and "openft's estimate" in openft
    assert any(line.strip().startswith("trl ") and "tokens/s" in line for line in out.splitlines())
    assert "ratio openft / TRL" in out
    # the two-device row runs on two CPU processes in smoke mode (two GPUs otherwise)
    wide = next(line for line in out.splitlines() if line.strip().startswith("openft x2 "))
    assert "tokens/s" in wide and "Training on 2 CPU processes" in wide
    assert "scaling efficiency on 2 devices: " in out
    # both sides train the same data from the same weights: their first losses agree
    steps = [
        line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 3
    ]
    assert steps and abs(float(steps[0][1]) - float(steps[0][2])) < 1e-3
