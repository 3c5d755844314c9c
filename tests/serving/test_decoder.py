"""The written-out decode step computes what transformers' forward computes, row by row, adapters included.

Each row's reference is the model run by transformers on that row's whole sequence alone: no cache, no batch,
no mask, so nothing the decoder does (fused projections, the slot cache, grouped-query attention over a
batch of different lengths, stacked adapters) is shared with what it is checked against.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
import torch

from openft.serving import packed
from openft.serving.adapters import BASE, AdapterSet
from openft.serving.decoder import FastDecoder
from openft.serving.kv_cache import SlotCache

PROMPTS = [[5, 17, 33, 2, 9, 41, 7], [12, 3], [8, 8, 21, 30, 4]]


def _model(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _config(kind: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    shape = dict(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,  # grouped-query attention, as in SmolLM2 and Llama 3
        max_position_embeddings=128,
    )
    if kind == "llama":
        return LlamaConfig(**shape)
    if kind == "qwen2":  # biases on q, k and v
        return Qwen2Config(**shape, use_sliding_window=False)
    return MistralConfig(**shape, sliding_window=None)


def _reference(model, sequence: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([sequence])).logits[0, -1]


def _decode(
    model, decoder: FastDecoder, prompts: list[list[int]], nexts: list[int], adapters=None, names=None
):
    """Prefill each prompt alone (through its row's adapter) into its row of a SlotCache, then one decode step
    for all rows together."""
    cache = SlotCache(max_rows=8, max_positions=64)
    with torch.inference_mode():
        for row, prompt in enumerate(prompts):
            with adapters.rows([names[row]]) if adapters is not None else contextlib.nullcontext():
                out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            cache.store(range(row, row + 1), [(layer.keys, layer.values) for layer in out.cache.layers])
        positions = torch.tensor([len(p) for p in prompts])
        span = int(positions.max()) + 1
        cache.prepare(positions, span)
        attend = torch.arange(span)[None, :] <= positions[:, None]
        ids = torch.tensor(nexts)
        if adapters is None:
            return decoder.step(ids, positions, cache, attend)
        with adapters.rows(names):
            return decoder.step(ids, positions, cache, attend, adapters)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_a_decode_step_gives_each_row_the_logits_of_its_sequence_alone(kind):
    model = _model(_config(kind))
    decoder = FastDecoder.build(model)
    assert decoder is not None
    nexts = [11, 50, 2]
    logits = _decode(model, decoder, PROMPTS, nexts)
    for row, (prompt, token) in enumerate(zip(PROMPTS, nexts, strict=True)):
        torch.testing.assert_close(logits[row], _reference(model, [*prompt, token]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_fusing_the_projections_leaves_transformers_forward_unchanged(tied):
    config = _config("llama")
    config.tie_word_embeddings = tied
    model = _model(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    before = _reference(model, PROMPTS[0])
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    FastDecoder.build(model)
    # The same numbers; on a CPU stored transposed, so a matmul may sum in another order.
    torch.testing.assert_close(_reference(model, PROMPTS[0]), before, rtol=0, atol=1e-5)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q, q_before)
    # Re-seated, not copied: q is a view into the fused q/k/v tensor.
    assert (
        q.untyped_storage().data_ptr()
        == model.model.layers[0].self_attn.k_proj.weight.untyped_storage().data_ptr()
    )
    # Tied embeddings stay one tensor with the LM head (stored transposed on a CPU).
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied


def _with_two_adapters(tiny_model_dir: Path, adapter_dirs, dtype=torch.float32):
    """The tiny model, its FastDecoder, and an AdapterSet holding adapters 0 and 1; the names of rows
    through adapter 0, the base and adapter 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).eval()
    decoder = FastDecoder.build(model)
    adapters = AdapterSet(model, max_adapters=4, max_bytes=None)
    names = [adapters.acquire(str(adapter_dirs[0])), BASE, adapters.acquire(str(adapter_dirs[1]))]
    return model, decoder, adapters, names


def _through_peft(tiny_model_dir: Path, adapter_dirs, sequences: list[list[int]]):
    """PEFT's own last logits for ``sequences[0]`` through adapter 0, ``[1]`` through none, ``[2]`` through
    adapter 1; and ``sequences[0]``'s through none (to show the adapters matter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        str(adapter_dirs[0]),
        adapter_name="a",
    ).eval()
    reference.load_adapter(str(adapter_dirs[1]), adapter_name="b")
    reference.set_adapter("a")
    first = _reference(reference, sequences[0])
    with reference.disable_adapter():
        base = _reference(reference, sequences[1])
        first_without = _reference(reference, sequences[0])
    reference.set_adapter("b")
    third = _reference(reference, sequences[2])
    return [first, base, third], first_without


def test_rows_through_different_adapters_each_get_their_own_adapter(tiny_model_dir: Path, adapter_dirs):
    model, decoder, adapters, names = _with_two_adapters(tiny_model_dir, adapter_dirs)
    nexts = [40, 41, 42]
    logits = _decode(model, decoder, PROMPTS, nexts, adapters, names)

    sequences = [[*prompt, token] for prompt, token in zip(PROMPTS, nexts, strict=True)]
    expected, first_without = _through_peft(tiny_model_dir, adapter_dirs, sequences)
    for row in range(len(PROMPTS)):
        torch.testing.assert_close(logits[row], expected[row], rtol=0, atol=1e-5)
    assert not torch.allclose(expected[0], first_without, atol=1e-3)  # adapters matter


def _prefill(decoder: FastDecoder, prompts: list[list[int]], adapters=None, names=None):
    lengths = [len(prompt) for prompt in prompts]
    ids = torch.tensor([t for prompt in prompts for t in prompt])
    positions = torch.cat([torch.arange(length) for length in lengths])
    segment = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(lengths))
    with torch.inference_mode():
        if adapters is None:
            return decoder.prefill(ids, positions, lengths)
        with adapters.rows(names, tokens=segment):
            return decoder.prefill(ids, positions, lengths, adapters)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_a_prefill_of_packed_prompts_gives_each_the_logits_and_cache_of_its_prompt_alone(kind):
    model = _model(_config(kind))
    decoder = FastDecoder.build(model)
    logits, layers = _prefill(decoder, PROMPTS)
    assert logits.shape == (len(PROMPTS), model.config.vocab_size)
    start = 0
    for row, prompt in enumerate(PROMPTS):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        torch.testing.assert_close(logits[row], out.logits[0, -1], rtol=0, atol=1e-5)
        for (keys, values), expected in zip(layers, out.cache.layers, strict=True):
            torch.testing.assert_close(
                keys[:, :, start : start + len(prompt)], expected.keys, rtol=0, atol=1e-5
            )
            torch.testing.assert_close(
                values[:, :, start : start + len(prompt)], expected.values, rtol=0, atol=1e-5
            )
        start += len(prompt)


def test_a_packed_prefill_runs_each_prompt_through_its_own_adapter(tiny_model_dir: Path, adapter_dirs):
    _, decoder, adapters, names = _with_two_adapters(tiny_model_dir, adapter_dirs)
    logits, _ = _prefill(decoder, PROMPTS, adapters, names)

    expected, first_without = _through_peft(tiny_model_dir, adapter_dirs, PROMPTS)
    for row in range(len(PROMPTS)):
        torch.testing.assert_close(logits[row], expected[row], rtol=0, atol=1e-5)
    assert not torch.allclose(expected[0], first_without, atol=1e-3)  # the adapters matter


needs_packing = pytest.mark.skipif(
    not packed._onednn_packs_bfloat16(), reason="this CPU or torch has no packed bfloat16 matmul (oneDNN)"
)


def _unpack(decoder: FastDecoder, adapters: AdapterSet | None = None) -> None:
    for layer in decoder.layers:
        layer.packed = (None, None, None, None)
    decoder.head_packed = None
    if adapters is not None:
        for key, stack in adapters._stacks.items():
            adapters._folded[key] = None  # no [W; A] packed together either
            if stack is not None:
                stack.packed = (None, None)


@needs_packing
def test_bfloat16_weights_in_onednn_layout_give_the_same_bits(tiny_model_dir: Path, adapter_dirs):
    model, decoder, adapters, names = _with_two_adapters(tiny_model_dir, adapter_dirs, torch.bfloat16)
    assert decoder.head_packed is not None
    assert all(w is not None for layer in decoder.layers for w in layer.packed)
    nexts = [40, 41, 42]
    through_packed = _decode(model, decoder, PROMPTS, nexts, adapters, names)
    prefilled, cache = _prefill(decoder, PROMPTS, adapters, names)
    stacks = [stack for stack in adapters._stacks.values() if stack is not None]
    assert stacks and all(w is not None for stack in stacks for w in stack.packed)
    # The adapters are on q and v: each layer's q/k/v group ran their A in the frozen weight's matmul.
    folded = [
        adapters._folded[key] for key, stack in adapters._stacks.items() if stack and key in adapters._folded
    ]
    assert len(folded) == len(decoder.layers) and all(f is not None for f in folded)

    _unpack(decoder, adapters)
    assert torch.equal(through_packed, _decode(model, decoder, PROMPTS, nexts, adapters, names))
    prefilled_unpacked, cache_unpacked = _prefill(decoder, PROMPTS, adapters, names)
    assert torch.equal(prefilled, prefilled_unpacked)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(cache, cache_unpacked, strict=True)
    )
    # and still the model: each row's logits near its own sequence's through transformers (bfloat16 sums)
    base_row = _reference(model, [*PROMPTS[1], nexts[1]])
    torch.testing.assert_close(through_packed[1].float(), base_row.float(), rtol=0, atol=0.1)


@needs_packing
def test_weights_are_packed_only_within_the_memory_budget(monkeypatch):
    model = _model(_config("llama")).to(torch.bfloat16)
    qkv_bytes = model.model.layers[0].self_attn.q_proj.weight.numel() * 2 * 10 // 6  # q, k and v
    monkeypatch.setattr(packed, "available_memory_bytes", lambda: 4 * qkv_bytes)  # the budget: a quarter
    decoder = FastDecoder.build(model)
    assert decoder.layers[0].packed[0] is not None  # the first layer's q/k/v fit
    assert decoder.layers[-1].packed == (None, None, None, None) and decoder.head_packed is None
    # the weights that are not packed run through F.linear: the same logits as with none packed
    logits = _decode(model, decoder, PROMPTS, [3, 4, 5])
    _unpack(decoder)
    assert torch.equal(logits, _decode(model, decoder, PROMPTS, [3, 4, 5]))


@needs_packing
def test_adapters_pack_nothing_beyond_their_budget_and_still_add_their_part(
    tiny_model_dir: Path, adapter_dirs, monkeypatch
):
    # The decoder's own weights are packed; the adapters pack at their first step, and find no memory to spare.
    model, decoder, adapters, names = _with_two_adapters(tiny_model_dir, adapter_dirs, torch.bfloat16)
    monkeypatch.setattr(packed, "available_memory_bytes", lambda: 0)
    logits = _decode(model, decoder, PROMPTS, [40, 41, 42], adapters, names)
    assert adapters._folded and all(folded is None for folded in adapters._folded.values())
    assert all(stack.packed == (None, None) for stack in adapters._stacks.values() if stack is not None)
    _unpack(decoder, adapters)
    assert torch.equal(logits, _decode(model, decoder, PROMPTS, [40, 41, 42], adapters, names))


def test_architectures_it_does_not_reproduce_decode_through_transformers():
    from transformers import GPT2Config

    assert FastDecoder.build(_model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))) is None
    gelu = _config("llama")
    gelu.hidden_act = "gelu"
    assert FastDecoder.build(_model(gelu)) is None


def test_the_engine_loads_and_decodes_on_its_one_compute_thread(models, monkeypatch):
    from openft.serving import engine as engine_module
    from openft.serving.engine import InferenceEngine
    from openft.serving.request import parse_chat_request
    from openft.serving.response import completion

    threads = set()
    check = engine_module._check_full_attention

    def loading(model, path):
        threads.add(("load", threading.current_thread().name))
        return check(model, path)

    monkeypatch.setattr(engine_module, "_check_full_attention", loading)
    engine = InferenceEngine(dtype="float32")
    request = parse_chat_request(
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    )
    model = models["tiny"]
    engine.generate(model, request)  # loads the model
    loaded = engine._bases[str(model.base_path)]
    assert loaded.loop.model.decoder is not None  # the tiny Llama decodes through FastDecoder
    loaded.model.lm_head.register_forward_pre_hook(
        lambda module, args: threads.add(("run", threading.current_thread().name))
    )
    completion("tiny", engine.generate(model, request))
    assert threads == {("load", "openft-compute"), ("run", "openft-compute")}


def test_the_setting_turns_the_written_out_step_off(tmp_path):
    from openft.api.app import chat_engine
    from openft.settings import Settings, SettingsError

    assert chat_engine(Settings.from_env({"OPENFT_HOME": str(tmp_path)})).fast_decode is True
    off = Settings.from_env({"OPENFT_HOME": str(tmp_path), "OPENFT_SERVING_FAST_DECODE": "0"})
    assert chat_engine(off).fast_decode is False
    with pytest.raises(SettingsError, match="OPENFT_SERVING_FAST_DECODE must be 'true' or 'false'"):
        Settings.from_env({"OPENFT_HOME": str(tmp_path), "OPENFT_SERVING_FAST_DECODE": "auto"})


def test_without_the_written_out_step_the_engine_decodes_through_transformers(models):
    from openft.serving.engine import InferenceEngine
    from openft.serving.request import parse_chat_request
    from openft.serving.response import completion

    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    answers = []
    for fast in (True, False):
        engine = InferenceEngine(dtype="float32", fast_decode=fast)
        answers.append(completion("tiny", engine.generate(models["tiny"], parse_chat_request(request))))
        assert (engine._bases[str(models["tiny"].base_path)].loop.model.decoder is not None) is fast
    assert answers[0]["choices"][0]["message"] == answers[1]["choices"][0]["message"]
