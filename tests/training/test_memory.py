"""The memory estimate against what training really holds, and the plan it turns into.

Measured on the CPU: the parameters, gradients and AdamW state after a real optimizer step (counted
tensor by tensor), plus every tensor autograd saves for backward during a real forward of the loss (the
activations, counted once per storage through ``saved_tensors_hooks``). The estimate must cover the
measurement without wasting much: 1.0x to 1.5x. A ``gpu``-marked twin compares with CUDA's peak.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from openft.training.base_models import parameter_count
from openft.training.memory import (
    GIB,
    DeviceMemory,
    DoesNotFit,
    ModelShape,
    Setup,
    estimate,
    plan,
    plan_devices,
)

SMOLLM2_CONFIG = {  # SmolLM2-135M-Instruct's config.json, the sizes that matter
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
LLAMA_8B_CONFIG = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def smollm2_shaped_dir(tmp_path_factory):
    """A randomly initialised model with SmolLM2-135M's exact architecture (no download, no GGUF)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("smollm2-shaped")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).save_pretrained(path)
    return path


def test_shape_counts_the_parameters_the_files_hold(tiny_model_dir, smollm2_shaped_dir):
    for path in (tiny_model_dir, smollm2_shaped_dir):
        assert ModelShape.from_dir(path).parameters == parameter_count(path)
    assert (
        ModelShape.from_config(SMOLLM2_CONFIG, "SmolLM2").parameters == 134_515_008
    )  # its model card's 135M


def test_shape_of_llama_8b_matches_its_published_size():
    shape = ModelShape.from_config(LLAMA_8B_CONFIG, "Llama-3.1-8B")
    assert shape.parameters == 8_030_261_248


def _measure(model_dir, setup: Setup, tokens: int) -> tuple[int, int]:
    """(static bytes after one step, activation bytes saved while computing one row's loss)."""
    from openft.training.devices import Device
    from openft.training.labels import TokenizedSequence
    from openft.training.models import causal_lm, trainable_model
    from openft.training.objectives import SupervisedObjective
    from openft.training.packing import pack_row
    from openft.training.spec import TrainingSpec

    spec = TrainingSpec(
        job_id="m",
        method="supervised",
        base_model_path=str(model_dir),
        training_file="unused",
        output_dir="unused",
        seed=0,
        n_epochs=1,
        batch_size=1,
        learning_rate=1e-3,
        fine_tuning_type=setup.fine_tuning_type,
    )
    device = Device(
        torch.device("cpu"), "bf16" if setup.bf16 else "fp32", DeviceMemory("cpu", "CPU", GIB), ""
    )
    torch.manual_seed(0)
    model = trainable_model(spec, None, device)
    ids = torch.randint(0, ModelShape.from_dir(model_dir).vocab_size, (tokens,)).tolist()
    # every token trained: the worst case the estimate plans for (untrained tokens need no logits)
    row = pack_row([TokenizedSequence(ids, list(ids))])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), device.precision():
        loss, _ = SupervisedObjective().row_loss(causal_lm(model), row, row.n_trainable)
    del loss  # what backward needs was saved during the forward; that is what is measured
    trained = [p for p in model.parameters() if p.requires_grad]
    # A gradient has its parameter's shape and dtype, so it is made directly rather than by a
    # backward pass: bf16 backward takes minutes on CPUs without native bf16 (AVX2).
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    optimizer.step()
    static = {}
    for p in model.parameters():
        static[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        if p.grad is not None:
            static[p.grad.untyped_storage().data_ptr()] = p.grad.untyped_storage().nbytes()
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.numel() > 1:
                static[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(static.values()), sum(saved.values())


# (model, bf16 compute, fine-tuning type, tokens, most waste allowed). The measurement leaves out
# backward's transients (the logits' gradients, the layer whose gradients are in flight), which the
# estimate includes: they weigh little in SmolLM2 and most in a 2-layer toy with hidden size 32.
CASES = [
    ("tiny", True, "lora", 384, 2.3),
    ("tiny", True, "full", 384, 2.2),
    ("tiny", False, "lora", 384, 2.3),
    ("tiny", False, "full", 384, 2.2),
    ("smollm2", True, "lora", 512, 1.5),
    ("smollm2", False, "full", 512, 1.5),
]


@pytest.mark.parametrize(("which", "bf16", "fine_tuning_type", "tokens", "most"), CASES)
def test_estimate_covers_measured_memory_without_waste(
    which, bf16, fine_tuning_type, tokens, most, tiny_model_dir, smollm2_shaped_dir
):
    model_dir = tiny_model_dir if which == "tiny" else smollm2_shaped_dir
    setup = Setup(device="cpu", fine_tuning_type=fine_tuning_type, bf16=bf16)
    static, activations = _measure(model_dir, setup, tokens)
    predicted = estimate(ModelShape.from_dir(model_dir), setup, tokens, gradient_checkpointing=False)
    # weights + adapters + optimizer: what is held across steps, counted exactly. Autocast's bf16
    # copies of linear weights are measured among the saved tensors; LoRA's adapted weights (all
    # linears here) are bf16 themselves under bf16 compute, so autocast copies none of them.
    copies = 2 * _linear_parameters(model_dir) if bf16 and fine_tuning_type == "full" else 0
    assert predicted.weights - copies == pytest.approx(
        static - predicted.adapters - predicted.optimizer, rel=0.01
    )
    measured = static + activations  # autocast's bf16 weight copies are among the saved tensors
    assert measured <= predicted.total <= most * measured, (measured, predicted)


def _linear_parameters(model_dir) -> int:
    shape = ModelShape.from_dir(model_dir)
    return shape.num_layers * shape.layer_linear_parameters


def test_plan_keeps_checkpointing_off_and_the_cpu_default_micro_batch_when_memory_is_ample(tiny_model_dir):
    shape = ModelShape.from_dir(tiny_model_dir)
    planned = plan(shape, Setup(device="cpu"), DeviceMemory("cpu", "CPU RAM", 16 * GIB), 512)
    assert (planned.gradient_checkpointing, planned.micro_batch_tokens) == (False, 4096)


def test_plan_turns_checkpointing_on_only_when_the_longest_example_needs_it():
    shape = ModelShape.from_config(LLAMA_8B_CONFIG, "Llama-3.1-8B")
    lora = Setup(device="cuda", fine_tuning_type="lora")
    h200 = DeviceMemory("cuda", "NVIDIA H200", 140 * GIB)
    roomy = plan(shape, lora, h200, 8192)
    assert not roomy.gradient_checkpointing and roomy.micro_batch_tokens >= 8192
    assert roomy.estimate.total <= h200.usable_bytes
    long_context = plan(shape, lora, h200, 65536)
    assert long_context.gradient_checkpointing and long_context.micro_batch_tokens == 65536
    forced = plan(shape, lora, h200, 8192, gradient_checkpointing=True)
    assert forced.gradient_checkpointing and forced.micro_batch_tokens == roomy.micro_batch_tokens
    assert forced.estimate.activations < roomy.estimate.activations / 5


def test_plan_refuses_what_cannot_fit_and_says_what_would():
    shape = ModelShape.from_config(LLAMA_8B_CONFIG, "Llama-3.1-8B")
    a100 = DeviceMemory("cuda", "NVIDIA A100", 80 * GIB)
    with pytest.raises(DoesNotFit) as refused:
        plan(shape, Setup(device="cuda", fine_tuning_type="full"), a100, 4096)
    message = refused.value.message
    assert message.startswith(
        "Llama-3.1-8B does not fit in memory: fine_tuning_type=full with max_seq_length=4096"
    )
    needed = refused.value.needed.total / GIB
    assert f"needs {needed:.1f} GiB" in message and needed > 80 and "80.0 GiB (NVIDIA A100)" in message
    assert "fine_tuning_type 'qlora' (about" in message
    assert "n_devices 2, sharding the weights and optimizer state" in message  # FSDP2 over 2 A100s
    # LoRA on a small card: a shorter max_seq_length is what fits, and the figure given does fit
    small = DeviceMemory("cuda", "NVIDIA L4", 24 * GIB)
    with pytest.raises(DoesNotFit) as refused:
        plan(shape, Setup(device="cuda", fine_tuning_type="lora"), small, 131072)
    shorter = int(refused.value.message.split("max_seq_length <= ")[1].split(";")[0].split(".")[0])
    assert 16 <= shorter < 131072
    plan(shape, Setup(device="cuda", fine_tuning_type="lora"), small, shorter)


def test_qlora_needs_far_less_than_lora_for_an_8b_model():
    shape = ModelShape.from_config(LLAMA_8B_CONFIG, "Llama-3.1-8B")
    lora = estimate(shape, Setup(device="cuda", fine_tuning_type="lora"), 4096, True)
    qlora = estimate(shape, Setup(device="cuda", fine_tuning_type="qlora"), 4096, True)
    assert 14 * GIB < lora.weights < 16 * GIB  # 8.0B parameters in bf16
    assert qlora.weights < 0.4 * lora.weights


def test_unknown_architecture_is_reported_not_guessed(tmp_path):
    from openft.training.memory import UnknownArchitecture

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "d_model": 768}))
    with pytest.raises(UnknownArchitecture, match="dense decoder"):
        ModelShape.from_dir(tmp_path)


def test_full_fine_tuning_sharded_over_more_devices_needs_less_on_each_and_auto_takes_the_fewest():
    shape = ModelShape.from_config(LLAMA_8B_CONFIG, "Llama-3.1-8B")
    a100 = DeviceMemory("cuda", "NVIDIA A100", 80 * GIB)
    full = Setup(device="cuda", fine_tuning_type="full")
    per_device = [estimate(shape, replace(full, n_devices=n), 4096, False) for n in (1, 2, 4, 8)]
    assert all(a.total > b.total for a, b in zip(per_device, per_device[1:], strict=False))
    # what FSDP2 shards shrinks as 1/N; autocast's bf16 copies of the linear weights (16 GB), saved
    # for backward, do not, unless gradient checkpointing recomputes them layer by layer
    assert per_device[3].optimizer == pytest.approx(per_device[0].optimizer / 8, rel=1e-6)
    linear_bf16 = 2 * shape.num_layers * shape.layer_linear_parameters
    assert per_device[3].weights > linear_bf16 > per_device[0].weights / 8
    checkpointed = estimate(shape, replace(full, n_devices=8), 4096, True)
    assert (
        per_device[3].weights - checkpointed.weights
        == linear_bf16 * (shape.num_layers - 1) // shape.num_layers
    )
    chosen = plan_devices(shape, full, a100, 4096, max_devices=8)
    assert chosen.n_devices == 2 and chosen.gradient_checkpointing
    assert chosen.estimate.total <= a100.usable_bytes
    with pytest.raises(DoesNotFit, match="n_devices 2"):  # one GPU is too few: refused, saying so
        plan_devices(shape, full, a100, 4096, max_devices=1)
    # LoRA is replicated (DDP), never sharded: more devices add DDP's gradient buckets, never fewer bytes
    lora = Setup(device="cuda", fine_tuning_type="lora")
    assert plan_devices(shape, lora, a100, 4096, max_devices=8).n_devices == 1
    one, two = (estimate(shape, replace(lora, n_devices=n), 4096, True) for n in (1, 2))
    assert two.total - one.total == 4 * shape.lora_parameters(16, "all-linear")


def test_cpu_ranks_share_the_machine_ram():
    shape = ModelShape.from_config(SMOLLM2_CONFIG, "SmolLM2-135M")
    ram = DeviceMemory("cpu", "CPU RAM", 8 * GIB)
    full = Setup(device="cpu", fine_tuning_type="full")
    assert plan_devices(shape, full, ram, 512, max_devices=8).n_devices == 1  # no gain from CPU ranks
    one = plan(shape, full, ram, 512)
    two = plan(shape, replace(full, n_devices=2), ram, 512)  # half the RAM each
    assert two.n_devices == 2 and two.micro_batch_tokens <= one.micro_batch_tokens
    assert two.estimate.total <= ram.shared_by(2).usable_bytes
