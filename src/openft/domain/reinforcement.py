"""Reinforcement fine-tuning's hyperparameters: OpenAI's RFT keys and openft's rollout extensions.

OpenAI's keys (``method.reinforcement.hyperparameters``) keep their ranges: ``reasoning_effort``
(``default`` | ``low`` | ``medium`` | ``high``), ``compute_multiplier`` ((0.00001, 10]),
``eval_interval`` and ``eval_samples`` (integers >= 1). Extensions beside them, all ``"auto"`` by
default and echoed resolved:

- ``group_size``: completions sampled per prompt, ``round(4 x compute_multiplier)`` clamped to
  [2, 64]; ``compute_multiplier`` ``auto`` is 1.
- ``max_completion_tokens``: the generation budget per completion, from ``reasoning_effort``:
  ``low`` 128, ``medium`` and ``default`` 256, ``high`` 512 tokens (the prompt and completion
  together never exceed ``max_seq_length``).
- ``temperature``: sampling temperature of the rollouts, 1.0.
- ``beta``: weight of the KL penalty to the reference model, 0.04 (DeepSeekMath's GRPO value).
- ``eval_interval`` ``auto``: ``ceil(total_steps / 10)`` (about ten validation points per run);
  ``eval_samples`` ``auto``: the validation file's size, at most 16.
"""

from __future__ import annotations

import math
from typing import Any

AUTO = "auto"
REASONING_EFFORTS = ("default", "low", "medium", "high")
GENERATION_BUDGET = {"low": 128, "default": 256, "medium": 256, "high": 512}
BASE_GROUP_SIZE = 4
MAX_GROUP_SIZE = 64
DEFAULT_BETA = 0.04
DEFAULT_TEMPERATURE = 1.0
MAX_EVAL_SAMPLES = 16


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


def check_reinforcement(hp: dict[str, Any], p) -> None:
    """Raise ``HyperparameterError`` for the first RFT key out of range (``p(key)`` is its param)."""
    from openft.domain.hyperparameters import HyperparameterError

    def bad(key: str, expected: str) -> HyperparameterError:
        return HyperparameterError(f"Invalid value for {key}: {hp[key]!r}. Expected {expected}.", p(key))

    if hp["reasoning_effort"] == AUTO:
        hp["reasoning_effort"] = "default"
    if hp["reasoning_effort"] not in REASONING_EFFORTS:
        raise bad("reasoning_effort", "one of " + ", ".join(REASONING_EFFORTS))
    multiplier = hp["compute_multiplier"]
    if multiplier != AUTO and not (_number(multiplier) and 0.00001 < multiplier <= 10):
        raise bad("compute_multiplier", "'auto' or a number in (0.00001, 10]")
    for key in ("eval_interval", "eval_samples"):
        if hp[key] != AUTO and not (_integer(hp[key]) and hp[key] >= 1):
            raise bad(key, "'auto' or an integer >= 1")
    if hp["group_size"] != AUTO and not (
        _integer(hp["group_size"]) and 2 <= hp["group_size"] <= MAX_GROUP_SIZE
    ):
        raise bad("group_size", f"'auto' or an integer from 2 to {MAX_GROUP_SIZE}")
    budget = hp["max_completion_tokens"]
    if budget != AUTO and not (_integer(budget) and 1 <= budget <= 32768):
        raise bad("max_completion_tokens", "'auto' or an integer from 1 to 32768")
    temperature = hp["temperature"]
    if temperature != AUTO and not (_number(temperature) and 0 < temperature <= 2):
        raise bad("temperature", "'auto' or a number in (0, 2]")
    beta = hp["beta"]
    if beta != AUTO and not (_number(beta) and 0 <= beta <= 10):
        raise bad("beta", "'auto' or a number from 0 to 10 (the KL penalty's weight)")


def resolve_reinforcement(out: dict[str, Any], total_steps: int, n_validation: int | None) -> None:
    """Resolve the RFT keys of ``out`` in place (``total_steps`` already resolved)."""

    def pick(key: str, value: Any) -> None:
        if out.get(key, AUTO) == AUTO:
            out[key] = value

    pick("compute_multiplier", 1.0)
    pick("group_size", min(MAX_GROUP_SIZE, max(2, round(BASE_GROUP_SIZE * float(out["compute_multiplier"])))))
    pick("max_completion_tokens", GENERATION_BUDGET[out["reasoning_effort"]])
    pick("temperature", DEFAULT_TEMPERATURE)
    pick("beta", DEFAULT_BETA)
    pick("eval_interval", max(1, math.ceil(total_steps / 10)))
    pick("eval_samples", min(MAX_EVAL_SAMPLES, n_validation) if n_validation else MAX_EVAL_SAMPLES)
    for key in ("group_size", "max_completion_tokens", "eval_interval", "eval_samples"):
        out[key] = int(out[key])
