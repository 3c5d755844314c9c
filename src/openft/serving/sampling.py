"""Choosing the next token: OpenAI's penalties and logit bias as logits processors, then temperature, top-p and a seeded draw."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


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
        return (
            scores - counts * self.frequency_penalty - (counts > 0).to(scores.dtype) * self.presence_penalty
        )


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
