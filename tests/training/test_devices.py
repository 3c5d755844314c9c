"""Device and precision choice, the hardware probe, packed attention's CPU twin and the chunked loss."""

from __future__ import annotations

import pytest
import torch
from training_toys import RecordingReporter, code_word_rows, make_spec

from openft.training import devices, hardware
from openft.training.attention import PACKED_ATTENTION
from openft.training.labels import IGNORE_INDEX, TokenizedSequence
from openft.training.packing import forward_hidden, pack_row


def test_select_without_cuda_trains_on_the_cpu_and_says_how(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(4), extra={"num_threads": 1})
    device = devices.select(spec)
    expected = "bf16" if hardware.cpu_has_native_bf16() else "fp32"
    assert (device.kind, device.compute, device.attention) == ("cpu", expected, PACKED_ATTENTION)
    assert (
        device.description
        == f"Training on CPU: {hardware.cpu_name()}, 1 threads, {expected} (master weights fp32)"
    )
    assert torch.get_num_threads() == 1
    assert device.base_dtype("lora") == device.base_dtype("full") == torch.float32
    with device.precision():
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


@pytest.mark.parametrize("compute", ["bf16", "fp32"])
def test_cpu_lora_keeps_adapted_weights_in_bf16_only_under_bf16_compute_with_the_same_bits(
    compute, tiny_model_dir, tmp_path
):
    from openft.training.memory import GIB, DeviceMemory
    from openft.training.models import causal_lm, trainable_model
    from openft.training.objectives import SupervisedObjective

    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(4))
    device = devices.Device(torch.device("cpu"), compute, DeviceMemory("cpu", "CPU", GIB), "")
    torch.manual_seed(0)
    model = trainable_model(spec, None, device)
    layer = causal_lm(model).model.layers[0]
    stored = torch.bfloat16 if compute == "bf16" else torch.float32
    assert layer.self_attn.q_proj.base_layer.weight.dtype == stored
    assert layer.self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    assert causal_lm(model).model.embed_tokens.weight.dtype == torch.float32
    # The same adapter over the base as loaded, fp32, run under the same autocast: autocast casts
    # each fp32 weight to bf16 at use, so storing it in bf16 must change no bit of loss or gradient.
    torch.manual_seed(0)
    reference = trainable_model(spec, None, devices.Device(torch.device("cpu"), "fp32", device.memory, ""))
    assert causal_lm(reference).model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.float32
    row = pack_row([TokenizedSequence([5, 9, 13, 17, 21], [IGNORE_INDEX, 9, 13, 17, 21])])
    results = []
    for candidate in (model, reference):
        with device.precision():
            loss, _ = SupervisedObjective().row_loss(causal_lm(candidate), row, row.n_trainable)
        loss.backward()
        grads = {n: p.grad for n, p in candidate.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        assert torch.equal(grad, results[1][1][name]), name


def test_select_fp32_when_asked_and_refuses_cuda_that_is_not_there(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(4), extra={"autocast": "fp32", "device": "cpu"})
    assert devices.select(spec).compute == "fp32"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            devices.select(make_spec(tmp_path, tiny_model_dir, code_word_rows(4), extra={"device": "cuda"}))


def test_recipe_reports_where_it_trains_first(tiny_model_dir, tmp_path):
    from openft.training.recipe import train

    reporter = RecordingReporter()
    train(make_spec(tmp_path, tiny_model_dir, code_word_rows(4), n_epochs=1), reporter)
    first = reporter.of_type("message")[0]
    assert first["level"] == "info" and first["message"].startswith("Training on CPU: ")


def test_rng_state_round_trips_every_generator(tiny_model_dir, tmp_path):
    import random

    import numpy as np

    device = devices.select(make_spec(tmp_path, tiny_model_dir, code_word_rows(4)))
    state = device.rng_state()
    drawn = (torch.rand(3), random.random(), np.random.rand())
    device.restore_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(drawn[0], again[0]) and drawn[1:] == again[1:]
    # a checkpoint saved on a GPU carries a CUDA state too; a CPU resume restores the rest
    device.restore_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(torch.rand(3), drawn[0])


def test_parse_nvidia_smi_and_honour_cuda_visible_devices(monkeypatch):
    listing = (
        "0, GPU-aaaa1111, NVIDIA H200, 143771\n"
        "1, GPU-bbbb2222, NVIDIA H200, 143771\n"
        "2, GPU-cccc3333, NVIDIA L4, 23034\n"
        "garbage line\n"
    )
    found = hardware.parse_nvidia_smi(listing)
    assert [(d.index, d.name, d.memory_bytes) for d in found] == [
        (0, "NVIDIA H200", 143771 * 2**20),
        (1, "NVIDIA H200", 143771 * 2**20),
        (2, "NVIDIA L4", 23034 * 2**20),
    ]
    monkeypatch.setattr(hardware, "_query_nvidia_smi", lambda: found)
    assert [d.index for d in hardware.cuda_devices({})] == [0, 1, 2]
    assert [d.index for d in hardware.cuda_devices({"CUDA_VISIBLE_DEVICES": "2,0"})] == [2, 0]
    assert [d.index for d in hardware.cuda_devices({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"})] == [1]
    assert hardware.cuda_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert [d.index for d in hardware.cuda_devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"})] == [1]


# ---- packed attention without a dense mask (the CPU path; the CUDA path's kernel-independent logic) ---


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from openft.training.attention import register

    register()
    load = lambda attention: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        tiny_model_dir, dtype=torch.float32, attn_implementation=attention
    ).eval()
    return load("sdpa"), load(PACKED_ATTENTION)


def seq(ids: list[int]) -> TokenizedSequence:
    return TokenizedSequence(ids, [IGNORE_INDEX] + ids[1:])


def logits(model, row) -> torch.Tensor:
    return model.get_output_embeddings()(forward_hidden(model, row))


def test_packed_attention_logits_equal_each_sequence_alone_and_the_dense_mask(models):
    dense, packed = models
    sequences = [seq([5, 9, 13, 17, 21, 25, 29]), seq([40, 41, 42]), seq([7, 70, 77, 7, 70])]
    row = pack_row(sequences)
    with torch.no_grad():
        together = logits(packed, row)
        assert "attention_mask" not in row.__dict__  # the packed path never builds the L x L mask
        torch.testing.assert_close(together, logits(dense, pack_row(sequences)), atol=1e-5, rtol=0)
        offset = 0
        for s in sequences:
            alone = dense(input_ids=torch.tensor([s.input_ids])).logits[0]
            torch.testing.assert_close(together[offset : offset + len(s)], alone, atol=1e-5, rtol=0)
            offset += len(s)


def test_packed_attention_masks_neighbours_out(models):
    dense, packed = models
    with torch.no_grad():
        before = logits(packed, pack_row([seq([5, 9, 13, 17]), seq([30, 31, 32])]))[4:]
        after = logits(packed, pack_row([seq([90, 91, 92, 93]), seq([30, 31, 32])]))[4:]
        # and a neighbour that would leak changes the result: the check can fail
        leaked = dense(input_ids=torch.tensor([[90, 91, 92, 93, 30, 31, 32]])).logits[0, 4:]
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)
    assert not torch.allclose(after, leaked, atol=1e-3)


def test_packed_attention_gradients_equal_the_dense_mask(models):
    dense, packed = models
    row = pack_row([seq([5, 9, 13, 17, 21]), seq([40, 41, 42, 43])])
    grads = []
    for model in (dense, packed):
        model.zero_grad(set_to_none=True)
        logits(model, row).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


# ---- the loss without whole-row logits --------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_loss_and_logps_equal_the_unchunked_ones_with_gradients(chunk):
    from openft.training.objectives import cross_entropy_sum, token_logps

    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(10, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (10,), generator=generator)

    def run(chunk_tokens):
        hidden.grad = head.weight.grad = None
        loss, correct = cross_entropy_sum(head, hidden, targets, chunk_tokens)
        logps = token_logps(head, hidden, targets, chunk_tokens)
        (loss + logps.square().sum()).backward()
        return loss.detach(), int(correct), logps.detach(), hidden.grad.clone(), head.weight.grad.clone()

    whole, chunked = run(10), run(chunk)
    assert whole[1] == chunked[1]
    for a, b in zip(whole[:1] + whole[2:], chunked[:1] + chunked[2:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunk_size_keeps_logits_under_the_budget():
    from openft.training.memory import LOGITS_CHUNK_ELEMENTS
    from openft.training.objectives import chunk_tokens

    head = torch.nn.Linear(8, 128256, bias=False, device="meta")
    assert chunk_tokens(head) * 128256 <= LOGITS_CHUNK_ELEMENTS < (chunk_tokens(head) + 1) * 128256
    assert chunk_tokens(torch.nn.Linear(8, 512, bias=False, device="meta")) == LOGITS_CHUNK_ELEMENTS // 512


def test_cpu_allocator_refusal_is_an_out_of_memory_error():
    from openft.training.child import error_code

    with pytest.raises(RuntimeError) as refused:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: no machine grants it
    assert error_code(refused.value) == "out_of_memory"


def test_out_of_memory_message_names_model_estimate_device_and_what_would_fit(tiny_model_dir, tmp_path):
    spec = make_spec(tmp_path, tiny_model_dir, code_word_rows(4), max_seq_length=512)
    device = devices.select(spec)
    message = devices.out_of_memory_message(spec, device, 3)
    assert message.startswith(f"{tiny_model_dir.name} ran out of memory at step 3: fine_tuning_type=lora")
    assert "was estimated at" in message and "(CPU RAM)" in message and "What would fit:" in message


@pytest.mark.parametrize("fine_tuning_type", ["lora", "full"])
def test_gradient_checkpointing_recomputes_to_the_same_losses(fine_tuning_type, tiny_model_dir, tmp_path):
    from openft.training.models import causal_lm, trainable_model
    from openft.training.recipe import train

    losses = {}
    for on in (False, True):
        spec = make_spec(
            tmp_path / str(on),
            tiny_model_dir,
            code_word_rows(8),
            n_epochs=1,
            fine_tuning_type=fine_tuning_type,
            gradient_checkpointing=on,
            lora_dropout=0.1 if fine_tuning_type == "lora" else 0.0,  # replayed with the same mask
        )
        assert causal_lm(trainable_model(spec, None)).is_gradient_checkpointing is on
        reporter = RecordingReporter()
        train(spec, reporter)
        losses[on] = [m["data"]["train_loss"] for m in reporter.of_type("metrics")]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
