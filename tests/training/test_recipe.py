"""train(): weights really move, the loss is real and falls, runs are reproducible and resumable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_toys import RecordingReporter, code_word_rows, make_spec, write_jsonl

from openft.training import checkpoints
from openft.training.recipe import train


def adapter_tensors(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "final" / "adapter" / "adapter_model.safetensors")


def base_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_train_lora_moves_adapter_not_base(tiny_model_dir, tmp_path):
    before = base_tensors(tiny_model_dir)
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(12), n_epochs=4, learning_rate=1e-1)
    reporter = RecordingReporter()
    result = train(spec, reporter)

    losses = [line["data"]["train_loss"] for line in reporter.of_type("metrics")]
    assert len(losses) == result.steps == 12  # 4 epochs x ceil(12 / 4)
    # the tiny model's small tied embeddings cap what LoRA alone can fit; it still must improve
    assert losses[-1] < losses[0] - 0.1
    lora_b = {k: v for k, v in adapter_tensors(Path(spec.output_dir)).items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero
    for name, tensor in base_tensors(tiny_model_dir).items():
        assert torch.equal(tensor, before[name]), name
    assert (Path(spec.output_dir) / "spec.json").is_file()
    assert reporter.of_type("started") and reporter.lines[-1]["type"] == "result"
    assert result.trained_tokens == sum(line["tokens"] for line in reporter.of_type("metrics"))
    assert [c["epoch"] for c in reporter.of_type("checkpoint")] == [1, 2, 3, 4]
    assert len(checkpoints.list_complete(Path(spec.output_dir) / "checkpoints")) == 3  # keep_checkpoints


def test_train_loss_falls_on_a_learnable_toy_set(tiny_model_dir, tmp_path):
    spec = make_spec(
        tmp_path, tiny_model_dir, code_word_rows(12), n_epochs=4, fine_tuning_type="full", learning_rate=1e-2
    )
    reporter = RecordingReporter()
    train(spec, reporter)
    data = [line["data"] for line in reporter.of_type("metrics")]
    assert data[-1]["train_loss"] < 0.6 * data[0]["train_loss"]
    assert data[-1]["train_mean_token_accuracy"] > data[0]["train_mean_token_accuracy"]


def test_train_final_adapter_loads_with_peft(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(4), n_epochs=1)
    result = train(spec, RecordingReporter())
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), Path(result.output_path) / "adapter"
    )
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert (Path(result.output_path) / "adapter" / "tokenizer_config.json").is_file()


def test_train_full_fine_tuning_changes_base_weights(tiny_model_dir, tmp_path):
    spec = make_spec(
        tmp_path, tiny_model_dir, code_word_rows(4), n_epochs=1, fine_tuning_type="full", learning_rate=1e-3
    )
    train(spec, RecordingReporter())
    before = base_tensors(tiny_model_dir)
    after = load_file(Path(spec.output_dir) / "final" / "model" / "model.safetensors")
    changed = [name for name in before if name in after and not torch.equal(before[name], after[name])]
    assert "model.embed_tokens.weight" in changed and "model.layers.1.self_attn.q_proj.weight" in changed


def test_train_same_seed_identical_adapter_different_seed_differs(tiny_model_dir, tmp_path):
    rows = code_word_rows(8)
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        spec = make_spec(tmp_path / name, tiny_model_dir, rows, seed=seed, n_epochs=1, lora_dropout=0.1)
        train(spec, RecordingReporter())
        runs[name] = adapter_tensors(Path(spec.output_dir))
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_train_paused_then_resumed_equals_uninterrupted(tiny_model_dir, tmp_path):
    rows = code_word_rows(10)
    common = {"n_epochs": 2, "batch_size": 3, "lora_dropout": 0.1, "warmup_ratio": 0.2}
    whole = make_spec(tmp_path / "whole", tiny_model_dir, rows, **common)
    whole_reporter = RecordingReporter()
    train(whole, whole_reporter)

    split = make_spec(tmp_path / "split", tiny_model_dir, rows, **common)
    paused = RecordingReporter(stop="pause", stop_after=2)  # mid-epoch: 4 steps per epoch
    first = train(split, paused)
    assert first.stopped == "pause" and paused.lines[-1] == {
        "type": "paused",
        "step": 2,
        "path": first.output_path,
    }
    # a torn checkpoint (no completion marker) newer than the pause must be ignored
    torn = Path(split.output_dir) / "checkpoints" / "step-3"
    shutil.copytree(first.output_path, torn)
    (torn / checkpoints.COMPLETE_MARKER).unlink()

    resumed = RecordingReporter()
    second = train(split, resumed)
    assert resumed.of_type("started") == [{"type": "started", "total_steps": 8, "resumed_from_step": 2}]
    assert second.steps == 8
    a, b = adapter_tensors(Path(whole.output_dir)), adapter_tensors(Path(split.output_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    whole_losses = [m["data"]["train_loss"] for m in whole_reporter.of_type("metrics")]
    split_losses = [m["data"]["train_loss"] for m in paused.of_type("metrics") + resumed.of_type("metrics")]
    assert whole_losses == split_losses


def test_a_pause_right_after_an_epoch_end_keeps_that_checkpoint_unwritten(tiny_model_dir, tmp_path):
    # A worker may still be publishing the epoch's checkpoint: the pause must not rewrite it.
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(8), n_epochs=2)  # 2 steps per epoch
    reporter = RecordingReporter(stop="pause", stop_after=2)
    seen: dict[str, int] = {}
    emit = reporter.emit

    def note_inode(line: dict) -> None:
        if line["type"] == "checkpoint":
            seen["inode"] = (Path(line["path"]) / checkpoints.STATE_FILE).stat().st_ino
        emit(line)

    reporter.emit = note_inode
    result = train(spec, reporter)
    assert result.stopped == "pause" and reporter.lines[-1]["step"] == 2
    assert [c["step"] for c in reporter.of_type("checkpoint")] == [2]
    assert result.output_path == reporter.of_type("checkpoint")[0]["path"]
    assert (Path(result.output_path) / checkpoints.STATE_FILE).stat().st_ino == seen["inode"]

    resumed = RecordingReporter()
    assert train(spec, resumed).steps == 4
    assert resumed.of_type("started")[0]["resumed_from_step"] == 2


def test_train_cancel_stops_at_step_boundary_without_result(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(8), n_epochs=3)
    reporter = RecordingReporter(stop="cancel", stop_after=1)
    result = train(spec, reporter)
    assert result.stopped == "cancel" and reporter.lines[-1] == {"type": "cancelled", "step": 1}
    assert not (Path(spec.output_dir) / "final").exists()


def test_train_validation_metrics_and_truncation_warning(tiny_model_dir, tmp_path):
    rows = code_word_rows(8) + [
        {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "long"}]}
    ]
    valid = write_jsonl(tmp_path / "valid.jsonl", code_word_rows(3))
    spec = make_spec(
        tmp_path,
        tiny_model_dir,
        rows,
        n_epochs=1,
        batch_size=3,
        validation_file=str(valid),
        eval_interval_steps=2,
        max_seq_length=128,
    )
    reporter = RecordingReporter()
    train(spec, reporter)
    warns = [m for m in reporter.of_type("message") if m["level"] == "warn"]
    assert len(warns) == 1 and warns[0]["message"].startswith("1 training example")
    data = [m["data"] for m in reporter.of_type("metrics")]
    assert "valid_loss" in data[1] and "valid_loss" not in data[0]
    assert "full_valid_loss" in data[-1] and 0.0 <= data[-1]["full_valid_mean_token_accuracy"] <= 1.0
    assert max(m["tokens"] for m in reporter.of_type("metrics")) <= 3 * 128


def test_train_dpo_loss_falls_and_margin_grows(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.training.data import Tokenizing, tokenize_example
    from openft.training.objectives import sequence_logps
    from openft.training.packing import pack_row

    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Do you like fruit? ({i})"}]},
            "preferred_output": [{"role": "assistant", "content": "Yes, bananas."}],
            "non_preferred_output": [{"role": "assistant", "content": "No."}],
        }
        for i in range(8)
    ]
    spec = make_spec(tmp_path, tiny_model_dir, rows, method="dpo", beta=0.5, n_epochs=3, learning_rate=2e-2)
    reporter = RecordingReporter()
    result = train(spec, reporter)
    losses = [m["data"]["train_loss"] for m in reporter.of_type("metrics")]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert losses[-1] < 0.5 * losses[0]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = pack_row(tokenize_example(Tokenizing(tokenizer), rows[0], "dpo"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logps(base, row).tolist()
        tuned = PeftModel.from_pretrained(base, Path(result.output_path) / "adapter").get_base_model()
        chosen, rejected = sequence_logps(tuned, row).tolist()
    assert chosen - rejected > ref_chosen - ref_rejected + 1.0


def test_train_non_finite_loss_stops_with_nan_error(tiny_model_dir, tmp_path):
    from openft.training.recipe import NonFiniteLossError

    spec = make_spec(
        tmp_path, tiny_model_dir, code_word_rows(8), fine_tuning_type="full", learning_rate=float("inf")
    )
    reporter = RecordingReporter()
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        train(spec, reporter)
    assert len(reporter.of_type("metrics")) == 1
