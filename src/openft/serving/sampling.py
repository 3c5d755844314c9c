"""Choosing the next token: OpenAI's penalties and logit bias, then temperature, top-p and a seeded draw.

``RequestSampler`` is what the batch loop uses, one per request (its ``n`` choices share one seeded generator);
the logits processors apply the same formulas for callers of transformers' ``generate``.
"""

from __future__ import annotations

import secrets

import torch
from transformers import LogitsProcessor

from openft.serving.request import ChatRequest


def penalize(scores: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's formula: logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty."""
    return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence


class OpenAIPenaltyLogitsProcessor(LogitsProcessor):
    """OpenAI's formula: logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty.

    c[j] counts token j among the tokens generated so far (the prompt does not count), per sequence.
    """

    def __init__(self, presence_penalty: float, frequency_penalty: float, prompt_length: int = 0) -> None:
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return penalize(scores, counts, self.presence_penalty, self.frequency_penalty)


class LogitBiasLogitsProcessor(LogitsProcessor):
    def __init__(self, bias: dict[int, float]) -> None:
        self.bias = bias
        self._ids: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._ids is None:
            self._ids = torch.tensor(list(self.bias), device=scores.device)
            self._values = torch.tensor(list(self.bias.values()), device=scores.device, dtype=scores.dtype)
        scores = scores.clone()
        scores[:, self._ids] += self._values
        return scores


def sample(
    scores: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """One token id per row. Temperature 0 is greedy, as at OpenAI."""
    if temperature == 0.0:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token once the mass before it already reaches top_p; the most likely token always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class RequestSampler:
    """One request's sampling state: its seeded generator, its choices' token counts (for penalties), its bias.

    Counts are kept per choice and updated as tokens are accepted, so a step costs the same at token 1000 as
    at token 1. Choices that have ended are no longer sampled, so the draws of a request depend only on the
    request itself, never on what else shares the batch.
    """

    def __init__(self, request: ChatRequest, *, vocab_size: int, device: torch.device) -> None:
        self.temperature = request.temperature
        self.top_p = request.top_p
        self.presence = request.presence_penalty
        self.frequency = request.frequency_penalty
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(63))
        self.counts = (
            torch.zeros((request.n, vocab_size), device=device) if self.presence or self.frequency else None
        )
        self.bias_ids = self.bias_values = None
        if request.logit_bias:
            self.bias_ids = torch.tensor(list(request.logit_bias), device=device)
            self.bias_values = torch.tensor(list(request.logit_bias.values()), device=device)

    @property
    def is_plain_greedy(self) -> bool:
        """The batch's argmax is this request's choice: nothing to adjust, nothing to draw."""
        return self.temperature == 0.0 and self.counts is None and self.bias_ids is None

    def sample(self, scores: torch.Tensor, choices: list[int]) -> torch.Tensor:
        """One token per row of ``scores`` (float32), row ``k`` being choice ``choices[k]``."""
        if self.counts is not None:
            scores = penalize(scores, self.counts[choices], self.presence, self.frequency)
        if self.bias_ids is not None:
            scores = scores.index_add(1, self.bias_ids, self.bias_values.expand(scores.shape[0], -1))
        return sample(scores, temperature=self.temperature, top_p=self.top_p, generator=self.generator)

    def accept(self, choices: list[int], tokens: torch.Tensor) -> None:
        if self.counts is not None:
            index = torch.tensor(choices, device=tokens.device)
            self.counts.index_put_(
                (index, tokens), torch.ones_like(tokens, dtype=self.counts.dtype), accumulate=True
            )
