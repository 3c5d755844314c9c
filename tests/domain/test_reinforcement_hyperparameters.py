"""Reinforcement hyperparameters: OpenAI's ranges, the documented auto rules, resolved and echoed."""

from __future__ import annotations

import pytest

from openft.domain import hyperparameters as hp_rules

PREFIX = "method.reinforcement.hyperparameters"
FACTS = hp_rules.ModelFacts(context_length=8192)


def resolved(given: dict, n_examples: int = 100, n_validation: int | None = None) -> dict:
    return hp_rules.resolve(
        "reinforcement", hp_rules.check("reinforcement", given, PREFIX), n_examples, FACTS, n_validation
    )


def test_auto_rules():
    hp = resolved({}, n_examples=100, n_validation=40)
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (3, 1, 1.0)
    assert hp["reasoning_effort"] == "default" and hp["compute_multiplier"] == 1.0
    assert hp["group_size"] == 4 and hp["max_completion_tokens"] == 256
    assert hp["temperature"] == 1.0 and hp["beta"] == 0.04
    assert hp["eval_interval"] == 30 and hp["eval_samples"] == 16  # ceil(300 steps / 10); at most 16
    assert hp["fine_tuning_type"] == "lora" and hp["max_seq_length"] == 2048


@pytest.mark.parametrize(
    ("effort", "budget"), [("low", 128), ("medium", 256), ("default", 256), ("high", 512)]
)
def test_reasoning_effort_sets_the_generation_budget(effort, budget):
    assert resolved({"reasoning_effort": effort})["max_completion_tokens"] == budget
    assert resolved({"reasoning_effort": effort, "max_completion_tokens": 7})["max_completion_tokens"] == 7


@pytest.mark.parametrize(("multiplier", "group"), [(0.1, 2), (1, 4), (2.5, 10), (10, 40)])
def test_compute_multiplier_scales_the_group(multiplier, group):
    assert resolved({"compute_multiplier": multiplier})["group_size"] == group


def test_eval_samples_is_the_validation_file_when_smaller():
    assert resolved({}, n_validation=5)["eval_samples"] == 5
    assert resolved({"eval_samples": 3, "eval_interval": 2})["eval_samples"] == 3


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reasoning_effort", "extreme"),
        ("compute_multiplier", 0),
        ("compute_multiplier", 10.5),
        ("eval_interval", 0),
        ("eval_samples", 1.5),
        ("group_size", 1),
        ("max_completion_tokens", 0),
        ("temperature", 0),
        ("beta", -0.1),
        ("n_epochs", 51),
    ],
)
def test_out_of_range_values_name_the_field(key, value):
    with pytest.raises(hp_rules.HyperparameterError) as excinfo:
        hp_rules.check("reinforcement", {key: value}, PREFIX)
    assert excinfo.value.param == f"{PREFIX}.{key}"


def test_the_learning_rate_base_is_gentler_than_supervised():
    assert hp_rules.base_learning_rate("reinforcement", "lora") == 2e-5
    assert hp_rules.base_learning_rate("reinforcement", "full") == 1e-6
