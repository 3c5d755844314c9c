"""Validation's token counts are the trainer's, example by example, however they are computed."""

from __future__ import annotations

from pathlib import Path

import pytest
from token_count_rows import METHOD, rows
from training_toys import write_jsonl

from openft.datasets import iter_examples, validate_file
from openft.datasets.validate import BATCH_LINES
from openft.training.data import count_tokens
from openft.training.token_counts import VERIFY_EVERY, TemplateTokenCounter

# SmolLM2's own template: ChatML without tools, so examples with tools take the ChatML+tools fallback.
TEMPLATE_WITHOUT_TOOLS = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Like Gemma's and Mistral's: some conversations are refused by the template itself.
TEMPLATE_WITHOUT_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The last assistant message is written differently, so a prefix of a conversation is not a prefix of its
# rendering and the trainer cannot locate earlier assistant turns (Qwen3-style templates do this).
TEMPLATE_LAST_TURN_DIFFERS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if loop.last and message['role'] == 'assistant' %}{{ ' (end)' }}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

N = BATCH_LINES + VERIFY_EVERY + 7  # two batches, most examples not verified


def tokenizer_of(model_dir: Path, chat_template: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def trainer_counts(tokenizer, path: Path, method: str) -> list[int]:
    return [count_tokens(tokenizer, example, method) for _, example in iter_examples(path, method=method)]


def counted(tokenizer, path: Path, method: str, **counter_attrs):
    counter = TemplateTokenCounter(tokenizer, method)
    for name, value in counter_attrs.items():
        setattr(counter, name, value)
    return validate_file(path, method=method, count_tokens=counter, min_examples=1)


@pytest.mark.parametrize("kind", ["chat", "preference", "completion"])
def test_counts_equal_the_trainers_one_by_one(tiny_model_dir, tmp_path, kind):
    tokenizer = tokenizer_of(tiny_model_dir)
    path = write_jsonl(tmp_path / f"{kind}.jsonl", rows(kind, N))

    report = counted(tokenizer, path, METHOD[kind])

    assert report.n_errors == 0 and report.n_examples == N
    assert list(report.token_counts) == trainer_counts(tokenizer, path, METHOD[kind])


def test_reinforcement_prompts_count_the_rendered_prompt_with_its_generation_prompt(tiny_model_dir, tmp_path):
    tokenizer = tokenizer_of(tiny_model_dir)
    prompts = [
        {
            "messages": [{"role": "user", "content": f"What is {i} + {i}? " * (1 + i % 3)}],
            "answer": str(2 * i),
        }
        for i in range(12)
    ]
    path = write_jsonl(tmp_path / "prompts.jsonl", prompts)

    report = counted(tokenizer, path, "reinforcement")

    assert report.n_errors == 0 and report.n_examples == 12
    assert list(report.token_counts) == trainer_counts(tokenizer, path, "reinforcement")


@pytest.mark.parametrize(
    "path_taken",
    [{"_backend": None}, {"_direct": None}],
    ids=["through-the-tokenizer-call", "through-apply-chat-template"],
)
def test_counts_equal_the_trainers_on_the_slower_paths(tiny_model_dir, tmp_path, path_taken):
    tokenizer = tokenizer_of(tiny_model_dir)
    path = write_jsonl(tmp_path / "chat.jsonl", rows("chat", N, seed=3))

    report = counted(tokenizer, path, "supervised", **path_taken)

    assert list(report.token_counts) == trainer_counts(tokenizer, path, "supervised")


@pytest.mark.parametrize("kind", ["chat", "preference"])
def test_counts_equal_the_trainers_when_tools_need_the_fallback_template(tiny_model_dir, tmp_path, kind):
    tokenizer = tokenizer_of(tiny_model_dir, TEMPLATE_WITHOUT_TOOLS)
    path = write_jsonl(tmp_path / f"{kind}.jsonl", rows(kind, N, seed=1))

    report = counted(tokenizer, path, METHOD[kind])

    assert report.n_errors == 0
    assert list(report.token_counts) == trainer_counts(tokenizer, path, METHOD[kind])


def test_counts_are_untruncated_when_the_tokenizer_is_configured_to_truncate(tiny_model_dir, tmp_path):
    tokenizer = tokenizer_of(tiny_model_dir)
    tokenizer.backend_tokenizer.enable_truncation(16)
    path = write_jsonl(tmp_path / "chat.jsonl", rows("chat", 40))

    report = counted(tokenizer, path, "supervised")

    assert min(report.token_counts) > 16
    assert list(report.token_counts) == trainer_counts(tokenizer, path, "supervised")


def test_an_example_the_template_refuses_is_an_error_on_its_line(tiny_model_dir, tmp_path):
    tokenizer = tokenizer_of(tiny_model_dir, TEMPLATE_WITHOUT_SYSTEM)
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    with_system = {"messages": [{"role": "system", "content": "be brief"}, *plain["messages"]]}
    path = write_jsonl(tmp_path / "chat.jsonl", [plain] * 300 + [with_system] + [plain] * 5 + [with_system])

    report = counted(tokenizer, path, "supervised")

    assert [(e.line, e.kind) for e in report.errors] == [(301, "template"), (307, "template")]
    assert report.errors[0].describe() == (
        "Example 301: the base model's chat template cannot be used for this example: System role not supported."
    )
    assert report.n_examples == 305 and len(report.token_counts) == 305


def test_a_template_the_trainer_cannot_mask_is_refused_at_validation(tiny_model_dir, tmp_path):
    tokenizer = tokenizer_of(tiny_model_dir, TEMPLATE_LAST_TURN_DIFFERS)
    one_turn = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    two_turns = {"messages": [*one_turn["messages"], *one_turn["messages"]]}
    path = write_jsonl(tmp_path / "chat.jsonl", [one_turn] * 20 + [two_turns] + [one_turn] * 3)

    report = counted(tokenizer, path, "supervised")

    [error] = report.errors
    assert (error.line, error.kind) == (21, "template")
    assert "does not render message 1 (assistant) as an extension" in error.message
    assert list(report.token_counts) == [count_tokens(tokenizer, one_turn, "supervised")] * 23


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["chat", "preference", "completion"])
def test_counts_equal_the_trainers_with_smollm2(smollm2_dir, tmp_path, kind):
    tokenizer = tokenizer_of(smollm2_dir)
    path = write_jsonl(tmp_path / f"{kind}.jsonl", rows(kind, N, seed=2))

    report = counted(tokenizer, path, METHOD[kind])

    assert report.n_errors == 0 and report.n_examples == N
    assert list(report.token_counts) == trainer_counts(tokenizer, path, METHOD[kind])


class _Skewed:
    """Wraps a fast path of the counter and gets every third call wrong, as a transformers or
    tokenizers release that behaved differently would."""

    def __init__(self, inner, skew) -> None:
        self.inner, self.skew, self.calls = inner, skew, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        result = self.inner(*args, **kwargs)
        return self.skew(result) if self.calls % 3 == 1 else result

    def encode_batch_fast(self, texts, **kwargs):
        self.calls += 1
        result = self.inner.encode_batch_fast(texts, **kwargs)
        return [e.ids[:-1] if self.calls % 3 == 1 else e.ids for e in result]


@pytest.mark.parametrize("fast_path", ["_direct", "_backend"])
def test_a_fast_path_that_disagrees_with_the_trainer_is_dropped_and_counts_stay_exact(
    tiny_model_dir, tmp_path, fast_path
):
    tokenizer = tokenizer_of(tiny_model_dir)
    path = write_jsonl(tmp_path / "chat.jsonl", rows("chat", 40))
    counter = TemplateTokenCounter(tokenizer, "supervised")
    setattr(counter, fast_path, _Skewed(getattr(counter, fast_path), lambda text: text + " skewed"))

    report = validate_file(path, method="supervised", count_tokens=counter, min_examples=1)

    assert getattr(counter, fast_path) is None
    assert list(report.token_counts) == trainer_counts(tokenizer, path, "supervised")
