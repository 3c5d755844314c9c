"""What the training benchmarks run and how its work is counted: synthetic chat data, the FLOPs a
fine-tune of it needs, and the matmul peak of the machine measured in the same run.

FLOPs are counted honestly, for the work a step *needs*, whoever does more:

- every token: ``2 x N`` forward through the layers' linear weights (embedding lookups are free), and
  ``2 x N`` backward for the activations' gradients; full fine-tuning adds ``2 x N`` for the weights'
  gradients (so 4N per token for LoRA, 6N for full); LoRA's own adapters add ``6 x N_lora``;
- the LM head only on trained tokens (the loss needs no other logits), with the same 4 or 6 factor;
- attention: causal, per sequence of length L, ``2 x L^2 x q_dim`` per layer forward (QK^T and AV
  over half the square), three times that for forward and backward.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

TOPICS = ["the ocean", "a bicycle", "tax forms", "volcanoes", "jazz", "gardening", "compilers", "tea"]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "an",
    "be",
    "this",
    "which",
    "or",
    "from",
    "but",
    "not",
    "are",
    "have",
    "one",
    "all",
    "were",
    "when",
    "there",
    "can",
    "more",
    "if",
    "out",
    "so",
    "what",
    "up",
    "about",
    "into",
    "than",
    "them",
    "some",
    "could",
    "time",
]


def synthetic_rows(n: int, seed: int, answer_words: tuple[int, int] = (20, 280)) -> list[dict]:
    """Chat examples with a short question and an answer of ``answer_words`` words (uniform)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = f"Tell me something about {topic}. " + " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(*answer_words))) + "."
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


@dataclass(frozen=True)
class DataStats:
    examples: int
    tokens: int
    trained_tokens: int
    sum_squared_lengths: int

    @classmethod
    def of(cls, rows: list[dict], tokenizer: Any, max_seq_length: int) -> DataStats:
        """Token counts as openft's trainer sees the rows (chat template, assistant-only labels)."""
        from openft.training.data import Tokenizing, tokenize_example

        tok = Tokenizing(tokenizer)
        tokens = trained = squares = 0
        for row in rows:
            for seq in tokenize_example(tok, row, "supervised"):
                seq = seq.truncated(max_seq_length) if len(seq) > max_seq_length else seq
                tokens += len(seq)
                trained += sum(1 for label in seq.labels[1:] if label != -100)
                squares += len(seq) ** 2
        return cls(len(rows), tokens, trained, squares)


@dataclass(frozen=True)
class ModelFlops:
    layer_linear: int  # parameters of every layer's linear weights
    head: int  # LM head parameters (tied or not, it multiplies)
    q_dim: int
    layers: int

    @classmethod
    def of(cls, config: Any) -> ModelFlops:
        c = getattr(config, "text_config", None) or config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        q_dim = c.num_attention_heads * head_dim
        kv_dim = c.num_key_value_heads * head_dim
        attn = c.hidden_size * (2 * q_dim + 2 * kv_dim)
        mlp = 3 * c.hidden_size * c.intermediate_size
        return cls(
            c.num_hidden_layers * (attn + mlp), c.hidden_size * c.vocab_size, q_dim, c.num_hidden_layers
        )

    def per_token(self, stats: DataStats, fine_tuning_type: str, lora_parameters: int = 0) -> float:
        """Average training FLOPs per token of this data."""
        k = 6 if fine_tuning_type == "full" else 4
        body = k * self.layer_linear + 6 * lora_parameters
        head = k * self.head * stats.trained_tokens / stats.tokens
        attention = 6 * self.layers * self.q_dim * stats.sum_squared_lengths / stats.tokens
        return body + head + attention


def lora_parameters(config: Any, rank: int) -> int:
    """LoRA on every linear of every layer ("all-linear"): rank x (in + out) each."""
    c = getattr(config, "text_config", None) or config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv, h, i = (
        c.num_attention_heads * head_dim,
        c.num_key_value_heads * head_dim,
        c.hidden_size,
        c.intermediate_size,
    )
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return c.num_hidden_layers * rank * per_layer


def matmul_peak_flops(dtype_name: str, size: int = 2048, seconds: float = 3.0, device: str = "cpu") -> float:
    """FLOP/s of a square matmul loop on ``device`` (at least one timed iteration)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(10 if cuda else 1):  # queue a few kernels between host syncs
            a @ b
        count += 10 if cuda else 1
        sync()
        if time.perf_counter() - start >= seconds:
            break
    return 2 * size**3 * count / (time.perf_counter() - start)


def throughput(steps: list[dict]) -> float:
    """Tokens/s over every step but the first (warm-up)."""
    measured = steps[1:]
    return sum(s["tokens"] for s in measured) / (measured[-1]["time"] - steps[0]["time"])
