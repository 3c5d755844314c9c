"""/v1/fine_tuning/alpha/graders/run and /validate through the official SDK, responses spec-checked."""

from __future__ import annotations

import openai
import pytest

from openft.settings import Settings

BASE = "tiny-llama"
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home, database_url=f"sqlite:///{home / 'openft.db'}", base_models={BASE: str(tiny_model_dir)}
    )


def test_run_a_string_check_grader(client):
    result = client.fine_tuning.alpha.graders.run(
        grader=EXACT, model_sample="Paris", item={"answer": "Paris"}
    )
    assert result.reward == 1.0
    assert result.metadata.name == "exact" and result.metadata.type == "string_check"
    assert result.metadata.errors.invalid_variable_error is False
    assert result.metadata.execution_time >= 0 and result.metadata.sampled_model_name is None
    assert result.sub_rewards == {} and result.model_grader_token_usage_per_model == {}
    miss = client.fine_tuning.alpha.graders.run(grader=EXACT, model_sample="Rome", item={"answer": "Paris"})
    assert miss.reward == 0.0


def test_run_a_multi_grader_with_a_python_and_a_similarity_grader(client):
    grader = {
        "type": "multi",
        "name": "format and content",
        "graders": {
            "format": {
                "type": "python",
                "name": "format",
                "source": "import re\ndef grade(sample, item):\n    return 1.0 if re.search(r'#### \\d+$', sample['output_text']) else 0.0\n",
            },
            "overlap": {
                "type": "text_similarity",
                "name": "overlap",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reasoning}}",
                "evaluation_metric": "rouge_1",
            },
        },
        "calculate_output": "0.5 * format + 0.5 * overlap",
    }
    result = client.fine_tuning.alpha.graders.run(
        grader=grader, model_sample="two plus two is four #### 4", item={"reasoning": "two plus two is four"}
    )
    assert result.sub_rewards["format"] == 1.0
    # rouge-score drops "####": 5 of the 6 answer unigrams are the 5 reference ones, F = 10/11
    assert result.sub_rewards["overlap"] == pytest.approx(10 / 11)
    assert result.reward == pytest.approx(0.5 + 0.5 * result.sub_rewards["overlap"])
    assert result.metadata.type == "multi"


def test_a_crashing_python_grader_answers_200_with_the_error_flagged(client):
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return item['nope']\n"}
    result = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="x", item={})
    assert result.reward == 0.0
    assert result.metadata.errors.python_grader_runtime_error is True
    assert "KeyError" in result.metadata.errors.python_grader_runtime_error_details


def test_run_a_score_model_grader_on_a_model_openft_serves(client):
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": BASE,
        "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}} vs {{item.answer}}"}],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 4},
    }
    result = client.fine_tuning.alpha.graders.run(
        grader=grader, model_sample="Paris", item={"answer": "Paris"}
    )
    assert result.metadata.sampled_model_name == BASE
    usage = result.model_grader_token_usage_per_model[BASE]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 4
    assert result.metadata.token_usage == usage["total_tokens"]
    # a random tiny model rarely writes a number: either a score in range or a parse error
    assert result.metadata.errors.model_grader_parse_error or 0.0 <= result.reward <= 1.0


def test_validate_echoes_the_grader(client):
    assert client.fine_tuning.alpha.graders.validate(grader=EXACT).grader.name == "exact"
    multi = {"type": "multi", "graders": {"exact": EXACT}, "calculate_output": "exact"}
    echoed = client.fine_tuning.alpha.graders.validate(grader=multi).grader
    assert echoed.calculate_output == "exact"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"grader": {**EXACT, "operation": "contains"}, "model_sample": "x"}, "grader.operation"),
        ({"grader": {**EXACT, "reference": "{{item.answer"}, "model_sample": "x"}, "grader.reference"),
        (
            {
                "grader": {"type": "multi", "graders": {"a": EXACT}, "calculate_output": "a + b"},
                "model_sample": "x",
            },
            "grader.calculate_output",
        ),
        ({"grader": {"type": "python", "source": "def grade(:"}, "model_sample": "x"}, "grader.source"),
        (
            {
                "grader": {
                    "type": "score_model",
                    "name": "j",
                    "model": "gpt-4o",
                    "input": [{"role": "user", "content": "x"}],
                },
                "model_sample": "x",
            },
            "grader.model",
        ),
        ({"grader": EXACT, "model_sample": "x", "item": ["not", "an", "object"]}, "item"),
    ],
)
def test_bad_graders_and_requests_are_400s_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.fine_tuning.alpha.graders.run(**kwargs)
    assert excinfo.value.param == param
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.alpha.graders.validate(grader={"type": "string_check"})


def test_model_sample_is_required(http):
    response = http.post("/v1/fine_tuning/alpha/graders/run", json={"grader": EXACT})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model_sample"


def test_a_metric_whose_library_is_missing_is_a_400_saying_what_to_install(client, monkeypatch):
    import importlib.util

    from openft.graders import similarity

    real = importlib.util.find_spec
    monkeypatch.setattr(
        similarity.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sentence_transformers" else real(name, *a),
    )
    grader = {
        "type": "text_similarity",
        "name": "c",
        "input": "{{sample.output_text}}",
        "reference": "x",
        "evaluation_metric": "cosine",
    }
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.fine_tuning.alpha.graders.validate(grader=grader)
    assert excinfo.value.param == "grader.evaluation_metric"
    assert "graders-cosine" in excinfo.value.message
