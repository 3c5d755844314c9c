"""GRPO's pieces on the tiny model: group advantages, the clipped surrogate's gradient, the KL term,
sampling (reproducible, stopping at the end-of-turn token) and prompt truncation."""

from __future__ import annotations

import math

import pytest
import torch

from openft.training.data import Tokenizing
from openft.training.models import causal_lm, load_base, load_tokenizer, reference_policy
from openft.training.rollouts import (
    CLIP_EPSILON,
    LossTally,
    build_prompt,
    completion_sequence,
    group_advantages,
    policy_loss,
    policy_rows,
    sample,
    stop_token_ids,
    token_logps,
)
from openft.training.spec import TrainingSpec


def test_group_advantages_normalise_within_each_group():
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.4]), group_size=2)
    scale = math.sqrt(0.5)  # unbiased std of a pair that differs by 1
    assert advantages[:2].tolist() == pytest.approx([0.5 / (scale + 1e-4), -0.5 / (scale + 1e-4)])
    assert advantages[2:4].tolist() == [0.0, 0.0]  # a group that agrees teaches nothing
    assert advantages[4:].tolist() == pytest.approx([-0.7066, 0.7066], abs=1e-3)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return tokenizer, load_base(str(tiny_model_dir))


def _rollout(tiny, group_size=2, temperature=1.0, seed=0):
    tokenizer, model = tiny
    prompts = [
        build_prompt(Tokenizing(tokenizer), {"messages": [{"role": "user", "content": f"question {i}"}]}, 64)
        for i in range(2)
    ]
    torch.manual_seed(seed)
    completions = sample(
        model,
        tokenizer,
        prompts,
        group_size=group_size,
        max_new_tokens=8,
        temperature=temperature,
        stop_ids=stop_token_ids(tokenizer, model),
        precision=torch.autocast("cpu", enabled=False),
    )
    return prompts, completions


def test_sampling_is_reproducible_grouped_and_stops_at_the_turn_end(tiny):
    tokenizer, model = tiny
    prompts, first = _rollout(tiny, group_size=3, seed=1)
    _, again = _rollout(tiny, group_size=3, seed=1)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.prompt_index for c in first] == [0, 0, 0, 1, 1, 1]
    stops = set(stop_token_ids(tokenizer, model))
    for completion in first:
        assert 1 <= len(completion.token_ids) <= 8
        # a stop token can only be the last one
        assert not stops & set(completion.token_ids[:-1])
    _, greedy_a = _rollout(tiny, temperature=None, seed=1)
    _, greedy_b = _rollout(tiny, temperature=None, seed=2)
    assert len(greedy_a) == 2 and [c.token_ids for c in greedy_a] == [c.token_ids for c in greedy_b]


def test_a_model_with_the_packed_gpu_attention_samples_like_sdpa(tiny, tiny_model_dir):
    """On CUDA the trained model carries openft's packed attention (one row, sequence boundaries);
    sampling switches it to SDPA for generate's padded batches, then back."""
    from transformers import AutoModelForCausalLM

    from openft.training.attention import PACKED_ATTENTION, register

    register()
    tokenizer, _ = tiny
    packed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=PACKED_ATTENTION)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    _, expected = _rollout((tokenizer, plain), temperature=None)
    _, got = _rollout((tokenizer, packed), temperature=None)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert packed.config._attn_implementation == PACKED_ATTENTION


def test_prompts_longer_than_the_budget_keep_their_end(tiny):
    tokenizer, _ = tiny
    example = {
        "messages": [
            {"role": "developer", "content": "long " * 200},
            {"role": "user", "content": "the question"},
        ]
    }
    full = build_prompt(Tokenizing(tokenizer), example, 10_000)
    cut = build_prompt(Tokenizing(tokenizer), example, 20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[-20:]


def _loss_and_grads(model, prow, advantages, old_logps, beta=0.0, reference=None):
    model.zero_grad(set_to_none=True)
    tally = LossTally()
    loss = policy_loss(
        model, reference, prow, advantages, old_logps, beta=beta, normaliser=prow.row.n_trainable, tally=tally
    )
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss, grads, tally


def test_the_surrogate_is_clipped_where_the_ratio_leaves_the_trust_region(tiny):
    _, model = tiny
    prompts, completions = _rollout(tiny, group_size=1)
    (prow,) = policy_rows([completion_sequence(prompts[c.prompt_index], c) for c in completions], 4096)
    with torch.no_grad():
        current, _ = token_logps(model, prow.row)
    doubled = current - math.log(2.0)  # the sampling policy gave every token half the probability: ratio 2

    # positive advantage, ratio above 1 + eps: the clipped term is the minimum, and it is constant
    loss, grads, tally = _loss_and_grads(model, prow, torch.tensor([1.0, 1.0]), doubled)
    assert loss.item() == pytest.approx(-(1 + CLIP_EPSILON), rel=1e-4)
    assert grads.abs().max() == 0 and tally.clipped == tally.tokens > 0
    # negative advantage: ratio·A is the minimum, unclipped, so the gradient pushes these tokens down
    loss, grads, _ = _loss_and_grads(model, prow, torch.tensor([-1.0, -1.0]), doubled)
    assert loss.item() == pytest.approx(2.0, rel=1e-4)
    assert grads.abs().max() > 0
    # on-policy (no old log-probabilities): ratio 1, and the gradient is the policy gradient
    loss, grads, tally = _loss_and_grads(model, prow, torch.tensor([1.0, -1.0]), None)
    assert grads.abs().max() > 0 and tally.clipped == 0


def test_the_kl_term_is_zero_against_itself_and_positive_once_the_policy_moves(
    tiny_model_dir, tmp_path, tiny
):
    from openft.training.models import trainable_model

    spec = TrainingSpec(
        job_id="k", method="reinforcement", base_model_path=str(tiny_model_dir), training_file="", output_dir=str(tmp_path),
        seed=0, n_epochs=1, batch_size=1, learning_rate=1e-3, beta=0.1,
    )  # fmt: skip
    model = trainable_model(spec, None)
    reference = reference_policy(spec, model)
    prompts, completions = _rollout(tiny, group_size=1)
    (prow,) = policy_rows([completion_sequence(prompts[c.prompt_index], c) for c in completions], 4096)
    zero = torch.zeros(2)
    _, _, tally = _loss_and_grads(causal_lm(model), prow, zero, None, beta=0.1, reference=reference)
    assert tally.kl_sum == 0.0  # a fresh LoRA adapter is the reference exactly
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    _, grads, tally = _loss_and_grads(causal_lm(model), prow, zero, None, beta=0.1, reference=reference)
    assert tally.kl_sum > 0 and grads.abs().max() > 0  # the KL term alone pulls back toward the reference
