"""The training child process end to end: JSON lines on stdout, signals, error codes."""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from training_toys import code_word_rows, make_spec

from openft.training.launch import child_command


def start(spec, tmp_path: Path) -> subprocess.Popen:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json())
    argv, env = child_command(spec_path)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_child_command_runs_the_child_module_with_the_spec(tmp_path):
    argv, env = child_command(tmp_path / "spec.json")
    assert argv[1:] == ["-m", "openft.training.child", str(tmp_path / "spec.json")]
    assert "PATH" in env


def test_child_command_runs_n_ranks_under_torchrun_with_pause_forwarded(tmp_path):
    argv, env = child_command(tmp_path / "spec.json", 3, stop_grace_seconds=90)
    assert argv[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "--max-restarts", "0",
        "-m", "openft.training.child", str(tmp_path / "spec.json"),
    ]  # fmt: skip
    # torchrun's agent forwards SIGUSR1 (pause, drain) besides its default signals, and gives the
    # ranks as long as the worker does to reach a step boundary before killing them
    assert "SIGUSR1" in env["PET_SIGNALS_TO_HANDLE"].split(",") and "SIGTERM" in env["PET_SIGNALS_TO_HANDLE"]
    assert env["PET_SHUTDOWN_TIMEOUT"] == "90"
    assert "PET_SIGNALS_TO_HANDLE" not in child_command(tmp_path / "spec.json", 1)[1]


def test_child_trains_and_reports_json_lines(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(8), n_epochs=2, batch_size=4)
    proc = start(spec, tmp_path)
    out, _ = proc.communicate(timeout=120)
    lines = [json.loads(line) for line in out.splitlines()]
    lines = [line for line in lines if line["type"] != "message"]
    assert proc.returncode == 0
    assert [line["type"] for line in lines] == [
        "started", "metrics", "metrics", "checkpoint", "metrics", "metrics", "checkpoint", "result",
    ]  # fmt: skip
    assert lines[0] == {"type": "started", "total_steps": 4, "resumed_from_step": 0}
    assert lines[3]["epoch"] == 1 and Path(lines[3]["path"]).is_dir()
    assert lines[-1]["steps"] == 4 and (Path(lines[-1]["output_path"]) / "adapter").is_dir()


@pytest.mark.parametrize(("sig", "kind"), [(signal.SIGTERM, "cancelled"), (signal.SIGUSR1, "paused")])
def test_child_signal_stops_at_step_boundary(tiny_model_dir, tmp_path, sig, kind):
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(400), n_epochs=3, batch_size=1)
    proc = start(spec, tmp_path)
    lines = []
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if lines[-1]["type"] == "metrics":
            proc.send_signal(sig)
            break
    lines += [json.loads(raw) for raw in proc.stdout]
    assert proc.wait(timeout=60) == 0
    assert lines[-1]["type"] == kind and lines[-1]["step"] < 1200
    assert not any(line["type"] == "result" for line in lines)
    if kind == "paused":
        assert (Path(lines[-1]["path"]) / "state.pt").is_file()


def test_child_missing_model_reports_model_load_failed(tiny_model_dir, tmp_path):
    spec = replace(
        make_spec(tmp_path, tiny_model_dir, code_word_rows(4)), base_model_path=str(tmp_path / "nope")
    )
    proc = start(spec, tmp_path)
    out, _ = proc.communicate(timeout=60)
    last = json.loads(out.splitlines()[-1])
    assert proc.returncode != 0
    assert last["type"] == "error" and last["code"] == "model_load_failed" and "nope" in last["message"]


def test_error_code_maps_failures_to_protocol_codes():
    import torch

    from openft.training.child import error_code
    from openft.training.models import ModelLoadError
    from openft.training.recipe import NonFiniteLossError

    assert error_code(MemoryError()) == "out_of_memory"
    assert error_code(torch.OutOfMemoryError()) == "out_of_memory"
    assert error_code(NonFiniteLossError("nan")) == "nan_loss"
    assert error_code(ModelLoadError("x")) == "model_load_failed"
    assert error_code(ValueError("x")) == "training_failed"
