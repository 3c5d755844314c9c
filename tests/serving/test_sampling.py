"""OpenAI's presence/frequency penalties, logit bias and top-p, on hand-made logits."""

from __future__ import annotations

import torch

from openft.serving.sampling import LogitBiasLogitsProcessor, OpenAIPenaltyLogitsProcessor, sample


def test_penalties_follow_openai_formula():
    scores = torch.zeros(1, 5)
    generated = torch.tensor([[1, 1, 1, 3]])

    penalised = OpenAIPenaltyLogitsProcessor(presence_penalty=0.5, frequency_penalty=0.25)(generated, scores)

    # logit[j] -= c[j] * frequency + (c[j] > 0) * presence
    assert penalised.tolist() == [[0.0, -(3 * 0.25 + 0.5), 0.0, -(0.25 + 0.5), 0.0]]


def test_penalties_ignore_the_prompt():
    scores = torch.zeros(1, 4)
    ids = torch.tensor([[2, 2, 1]])

    penalised = OpenAIPenaltyLogitsProcessor(0.0, 1.0, prompt_length=2)(ids, scores)

    assert penalised.tolist() == [[0.0, -1.0, 0.0, 0.0]]


def test_logit_bias_adds_to_named_tokens():
    biased = LogitBiasLogitsProcessor({0: -100.0, 2: 5.0})(torch.empty(2, 0), torch.zeros(2, 3))

    assert biased.tolist() == [[-100.0, 0.0, 5.0]] * 2


def test_sample_with_small_top_p_keeps_only_most_likely():
    scores = torch.tensor([[0.0, 3.0, 2.9]]).repeat(64, 1)
    generator = torch.Generator().manual_seed(0)

    assert set(sample(scores, temperature=1.0, top_p=0.1, generator=generator).tolist()) == {1}
    assert set(sample(scores, temperature=1.0, top_p=1.0, generator=generator).tolist()) > {1}


def test_sample_with_zero_temperature_is_greedy():
    scores = torch.tensor([[0.1, 0.2, 5.0], [9.0, 0.0, 0.0]])

    assert sample(scores, temperature=0.0, top_p=1.0, generator=torch.Generator()).tolist() == [2, 0]
