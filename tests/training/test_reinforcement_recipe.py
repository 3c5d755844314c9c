"""The reinforcement recipe with full fine-tuning: every weight may move, the frozen base is the
KL reference, and a cancel stops it at a step boundary without writing a result."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from training_toys import RecordingReporter, make_spec

from openft.training.reinforcement import train

GRADER = {
    "type": "python",
    "name": "variety",
    "source": "def grade(sample, item):\n    return min(len(set(sample['output_text'])), 20) / 20\n",
}
ROWS = [
    {"messages": [{"role": "user", "content": f"Say something about {i}."}], "topic": str(i)}
    for i in range(4)
]


def _spec(tmp_path, tiny_model_dir, **overrides):
    fields = {
        "method": "reinforcement",
        "fine_tuning_type": "full",
        "n_epochs": 1,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "beta": 0.1,
        "grader": GRADER,
        "group_size": 3,
        "max_completion_tokens": 6,
        "max_seq_length": 128,
        **overrides,
    }
    return make_spec(tmp_path, tiny_model_dir, ROWS, **fields)


def test_full_fine_tuning_moves_the_weights_and_measures_kl_to_the_frozen_base(tiny_model_dir, tmp_path):
    before = load_file(tiny_model_dir / "model.safetensors")
    reporter = RecordingReporter()
    result = train(_spec(tmp_path, tiny_model_dir), reporter)
    assert result.steps == 2 and result.trained_tokens > 0
    metrics = [line["data"] for line in reporter.of_type("metrics")]
    assert metrics[0]["kl"] == 0.0 < metrics[1]["kl"]  # step 1 samples from the base itself
    after = load_file(Path(result.output_path) / "model" / "model.safetensors")
    moved = [name for name in before if name in after and not torch.equal(before[name], after[name])]
    assert moved, "no weight changed"
    on_disk = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(on_disk[name], tensor) for name, tensor in before.items())  # the base is untouched


def test_cancel_stops_at_a_step_boundary_without_a_result(tiny_model_dir, tmp_path):
    reporter = RecordingReporter(stop="cancel", stop_after=1)
    result = train(_spec(tmp_path, tiny_model_dir, fine_tuning_type="lora"), reporter)
    assert result.stopped == "cancel" and result.steps == 1
    assert not reporter.of_type("result") and reporter.of_type("cancelled")
