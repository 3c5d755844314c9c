"""The CUDA path on a real GPU: packed attention, LoRA/full/QLoRA training, checkpoints, memory, OOM.

Marked ``gpu``; skipped where no CUDA device is visible (CI). Run on a GPU machine with
``pytest -m gpu tests/training/test_gpu.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_toys import RecordingReporter, code_word_rows, make_spec

from openft.training import checkpoints
from openft.training.hardware import cuda_devices

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_devices(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def cuda_model(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from openft.training import devices
    from openft.training.models import load_base

    spec = make_spec(tmp_path_factory.mktemp("spec"), tiny_model_dir, [], fine_tuning_type="lora")
    device = devices.select(spec)
    assert device.kind == "cuda"
    packed = load_base(str(tiny_model_dir), device, torch.bfloat16).eval()
    plain = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    return device, packed, plain.to(device.torch_device).eval()


def test_varlen_attention_passes_its_probe_on_this_gpu(cuda_model):
    device, _, _ = cuda_model
    assert device.varlen is not None, device.description
    assert "varlen flash attention" in device.description


def test_packed_logits_equal_per_example_logits_on_the_gpu(cuda_model):
    from openft.training.labels import IGNORE_INDEX, TokenizedSequence
    from openft.training.packing import forward_hidden, pack_row

    device, model, plain = cuda_model
    seqs = [[5, 9, 13, 17, 21, 25, 29], [40, 41, 42], [7, 70, 77, 7, 70, 8, 80, 88, 8]]
    sequences = [TokenizedSequence(s, [IGNORE_INDEX] + s[1:]) for s in seqs]
    head = model.get_output_embeddings()
    with torch.no_grad(), device.precision():
        packed = head(forward_hidden(model, pack_row(sequences).to(device.torch_device))).float()
        offset = 0
        for s in seqs:
            # the plain transformers forward (SDPA, causal) of the sequence alone
            alone = plain(input_ids=torch.tensor([s], device=device.torch_device)).logits[0].float()
            torch.testing.assert_close(packed[offset : offset + len(s)], alone, atol=3e-2, rtol=3e-2)
            offset += len(s)
        # a neighbour never leaks in: the same last sequence after a different first one
        other = [TokenizedSequence([90, 91, 92, 93, 94, 95, 96], [IGNORE_INDEX] * 7), sequences[2]]
        moved = head(forward_hidden(model, pack_row(other).to(device.torch_device))).float()[7:]
    torch.testing.assert_close(moved, packed[10:], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("fine_tuning_type", ["lora", "full"])
def test_fine_tune_on_the_gpu_loss_falls_and_says_where(fine_tuning_type, tiny_model_dir, tmp_path):
    from openft.training.recipe import train

    lr = 1e-1 if fine_tuning_type == "lora" else 1e-2
    spec = make_spec(
        tmp_path,
        tiny_model_dir,
        code_word_rows(12),
        n_epochs=4,
        fine_tuning_type=fine_tuning_type,
        learning_rate=lr,
    )
    reporter = RecordingReporter()
    train(spec, reporter)
    losses = [m["data"]["train_loss"] for m in reporter.of_type("metrics")]
    assert losses[-1] < losses[0] - 0.1
    where = reporter.of_type("message")[0]["message"]
    assert where.startswith("Training on 1 x ") and "GiB), bf16" in where


def test_checkpoint_saved_on_the_gpu_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    from peft import get_peft_model_state_dict

    from openft.training.devices import select
    from openft.training.models import trainable_model
    from openft.training.recipe import train

    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(10), n_epochs=2, batch_size=3)
    first = train(spec, RecordingReporter(stop="pause", stop_after=2))
    saved = load_file(Path(first.output_path) / "adapter" / "adapter_model.safetensors")
    model = trainable_model(spec, Path(first.output_path) / "adapter", select(spec))
    loaded = get_peft_model_state_dict(model)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(loaded[k].detach().cpu(), saved[k]) for k in saved)
    state = checkpoints.latest(Path(spec.output_dir) / "checkpoints").load_state()
    assert state["rng"]["cuda"] is not None
    resumed = RecordingReporter()
    assert train(spec, resumed).steps == 8
    assert resumed.of_type("started")[0]["resumed_from_step"] == 2


def test_checkpoint_saved_on_the_gpu_resumes_on_a_cpu_worker(tiny_model_dir, tmp_path):
    from openft.training.recipe import train

    rows = code_word_rows(10)
    on_gpu = make_spec(tmp_path, tiny_model_dir, rows, n_epochs=2, batch_size=3)
    train(on_gpu, RecordingReporter(stop="pause", stop_after=2))
    on_cpu = make_spec(tmp_path, tiny_model_dir, rows, n_epochs=2, batch_size=3, extra={"device": "cpu"})
    resumed = RecordingReporter()
    assert train(on_cpu, resumed).steps == 8
    assert resumed.of_type("message")[0]["message"].startswith("Training on CPU")


def test_qlora_trains_on_the_gpu(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from openft.training.recipe import train

    spec = make_spec(
        tmp_path, tiny_model_dir, code_word_rows(12), n_epochs=4, fine_tuning_type="qlora", learning_rate=1e-1
    )
    reporter = RecordingReporter()
    result = train(spec, reporter)
    losses = [m["data"]["train_loss"] for m in reporter.of_type("metrics")]
    assert losses[-1] < losses[0]
    assert "4-bit NF4" in reporter.of_type("message")[0]["message"]
    adapter = load_file(Path(result.output_path) / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())


def test_estimate_covers_the_measured_gpu_peak(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from openft.training.devices import select
    from openft.training.labels import TokenizedSequence
    from openft.training.memory import ModelShape, estimate
    from openft.training.models import causal_lm, trainable_model
    from openft.training.objectives import SupervisedObjective
    from openft.training.packing import pack_row

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    for fine_tuning_type in ("lora", "full"):
        spec = make_spec(tmp_path / fine_tuning_type, tmp_path / "m", [], fine_tuning_type=fine_tuning_type)
        device = select(spec)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = trainable_model(spec, None, device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, 49152, (4096,)).tolist()
        row = pack_row([TokenizedSequence(ids, ids)]).to(device.torch_device)
        with device.precision():
            loss, _ = SupervisedObjective().row_loss(causal_lm(model), row, row.n_trainable)
        loss.backward()
        optimizer.step()
        measured = torch.cuda.max_memory_allocated()
        predicted = estimate(
            ModelShape.from_dir(tmp_path / "m"), device.memory_setup(spec), 4096, False
        ).total
        assert measured <= predicted <= 1.5 * measured, (fine_tuning_type, measured, predicted)
        del model, optimizer, loss


def test_real_cuda_out_of_memory_mid_run_ends_the_child_with_out_of_memory(tiny_model_dir, tmp_path):
    long_rows = [{"prompt": "x " * 20000, "completion": " y" * 20000} for _ in range(2)]
    fraction = 256 * 2**20 / torch.cuda.get_device_properties(0).total_memory  # 256 MiB of the GPU
    spec = make_spec(
        tmp_path,
        tiny_model_dir,
        long_rows,
        n_epochs=1,
        batch_size=1,
        max_seq_length=65536,
        micro_batch_tokens=65536,
        extra={"cuda_memory_fraction": fraction},
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json())
    done = subprocess.run(
        [sys.executable, "-m", "openft.training.child", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and lines[-1]["type"] == "error", done.stderr[-2000:]
    assert lines[-1]["code"] == "out_of_memory"
    assert "ran out of memory at step 1" in lines[-1]["message"] and "What would fit" in lines[-1]["message"]
