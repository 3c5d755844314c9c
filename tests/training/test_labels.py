"""The assistant-only mask, the completion format, token counting and the tools fallback."""

from __future__ import annotations

import pytest
from training_toys import write_jsonl

from openft.training.data import Tokenizing, count_tokens, load_dataset, tokenize_example
from openft.training.labels import (
    IGNORE_INDEX,
    NothingToTrainError,
    assistant_only_labels,
    completion_labels,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tokenizer, sequence) -> str:
    return tokenizer.decode([t for t in sequence.labels if t != IGNORE_INDEX])


def masked_text(tokenizer, sequence) -> str:
    return tokenizer.decode(
        [i for i, t in zip(sequence.input_ids, sequence.labels, strict=True) if t == IGNORE_INDEX]
    )


def test_assistant_only_labels_multi_turn_trains_assistant_turns_with_end_token(tokenizer):
    messages = [
        {"role": "system", "content": "SYSTEMTEXT"},
        {"role": "user", "content": "USERONE"},
        {"role": "assistant", "content": "REPLYONE"},
        {"role": "user", "content": "USERTWO"},
        {"role": "assistant", "content": "REPLYTWO"},
    ]
    seq = assistant_only_labels(tokenizer, messages)
    assert trained_text(tokenizer, seq) == "REPLYONE<|im_end|>\nREPLYTWO<|im_end|>\n"
    masked = masked_text(tokenizer, seq)
    for text in ("SYSTEMTEXT", "USERONE", "USERTWO", "<|im_start|>assistant\n"):
        assert text in masked
    # labels are the token ids themselves where trained (shifting happens when packing)
    assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(seq.input_ids, seq.labels, strict=True))
    assert len(seq.labels) == len(seq.input_ids)


def test_assistant_only_labels_weight_zero_turn_is_masked(tokenizer):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "SKIPPED", "weight": 0},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "KEPT", "weight": 1},
    ]
    seq = assistant_only_labels(tokenizer, messages)
    assert trained_text(tokenizer, seq) == "KEPT<|im_end|>\n"
    assert "SKIPPED" in masked_text(tokenizer, seq)


def test_assistant_only_labels_tool_call_conversation_masks_tool_output(tokenizer):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "TOOLRESULT"},
        {"role": "assistant", "content": "Sunny."},
    ]
    tok = Tokenizing(tokenizer)
    seq = tok.chat(messages, tools)
    trained = trained_text(tokenizer, seq)
    assert '"get_weather"' in trained and '"Paris"' in trained and trained.endswith("Sunny.<|im_end|>\n")
    masked = masked_text(tokenizer, seq)
    assert "TOOLRESULT" in masked and "Weather in Paris?" in masked
    assert "get_weather" in masked  # the tool definition in the system prompt is context
    assert tok.tool_fallbacks == 0


def test_assistant_only_labels_no_trainable_turn_raises(tokenizer):
    with pytest.raises(NothingToTrainError, match="no assistant message"):
        assistant_only_labels(
            tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]
        )


def test_completion_labels_mask_prompt_and_train_completion_plus_eos(tokenizer):
    seq = completion_labels(tokenizer, "PROMPT ->", " done")
    assert trained_text(tokenizer, seq) == " done" + tokenizer.eos_token
    assert masked_text(tokenizer, seq) == "PROMPT ->"
    assert seq.labels[-1] == tokenizer.eos_token_id


def test_content_parts_are_joined_to_text(tokenizer):
    example = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi there"}]},
        ]
    }
    (seq,) = tokenize_example(Tokenizing(tokenizer), example, "supervised")
    assert "Hello" in masked_text(tokenizer, seq)
    assert trained_text(tokenizer, seq) == "Hi there<|im_end|>\n"


def test_dpo_accepts_both_spellings_and_trains_only_the_answer(tokenizer):
    prompt = {"messages": [{"role": "user", "content": "Pick"}]}
    a = {
        "input": prompt,
        "preferred_output": [{"role": "assistant", "content": "GOOD"}],
        "non_preferred_output": [{"role": "assistant", "content": "BAD"}],
    }
    b = {
        "input": prompt,
        "preferred_completion": [{"role": "assistant", "content": "GOOD"}],
        "non_preferred_completion": [{"role": "assistant", "content": "BAD"}],
    }
    for example in (a, b):
        chosen, rejected = tokenize_example(Tokenizing(tokenizer), example, "dpo")
        assert trained_text(tokenizer, chosen) == "GOOD<|im_end|>\n"
        assert trained_text(tokenizer, rejected) == "BAD<|im_end|>\n"
    assert count_tokens(tokenizer, a, "dpo") == len(chosen) + len(rejected)


def test_count_tokens_matches_what_the_trainer_sees_before_truncation(tokenizer, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "short"}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "long " * 40}, {"role": "assistant", "content": "ok"}]},
        {"prompt": "a prompt", "completion": " a completion"},
    ]
    counts = [count_tokens(tokenizer, r, "supervised") for r in rows]
    dataset = load_dataset(
        write_jsonl(tmp_path / "t.jsonl", rows), tokenizer, "supervised", max_seq_length=64
    )
    assert dataset.billable_tokens == sum(counts)
    assert [len(e[0]) for e in dataset.examples] == [min(c, 64) for c in counts]
    assert counts[1] > 64 and dataset.truncated == 1


def test_template_without_tools_falls_back_to_chatml_and_says_so(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tools = [{"type": "function", "function": {"name": "lookup_zebra", "parameters": {}}}]
    rows = [
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "tools": tools,
        }
    ]
    dataset = load_dataset(write_jsonl(tmp_path / "t.jsonl", rows), tokenizer, "supervised", 512)
    assert "lookup_zebra" in tokenizer.decode(dataset.examples[0][0].input_ids)
    assert dataset.messages and "cannot render tools" in dataset.messages[0]
