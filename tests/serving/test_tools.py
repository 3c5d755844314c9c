"""Tool calls: the template's `<tool_call>` blocks become OpenAI tool_calls with finish_reason "tool_calls"."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import openft.serving.sampling
from openft.serving.tools import parse_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def test_parse_tool_calls_reads_every_block():
    text = '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>{"name": "b"}</tool_call>'

    calls = parse_tool_calls(text)

    assert [c["function"] for c in calls] == [
        {"name": "a", "arguments": '{"x": 1}'},
        {"name": "b", "arguments": "{}"},
    ]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)


@pytest.mark.parametrize(
    "text", ["<tool_call>{not json}</tool_call>", '<tool_call>{"arguments": {}}</tool_call>', "plain"]
)
def test_parse_tool_calls_with_malformed_block_is_none(text):
    assert parse_tool_calls(text) is None


@pytest.fixture
def scripted(monkeypatch, tiny_model_dir):
    """Make the model 'say' a given text: the sampler returns its tokens in order, then end-of-turn."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def script(text: str) -> None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [
            tokenizer.convert_tokens_to_ids("<|im_end|>")
        ]
        steps = iter(ids)
        real = openft.serving.sampling.sample

        def sample(scores, **kwargs):
            chosen = real(scores, **kwargs)
            return chosen.fill_(next(steps))

        monkeypatch.setattr(openft.serving.sampling, "sample", sample)

    return script


@pytest.mark.parametrize("stream", [False, True])
def test_create_with_tools_returns_tool_calls(client, scripted, stream):
    scripted('Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    kwargs = {"model": "tiny", "messages": ASK, "tools": [WEATHER], "max_tokens": 60, "stream": stream}

    if stream:
        chunks = list(client.chat.completions.create(**kwargs))
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        [call] = next(c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls)
        finish_reason = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        content, [call], finish_reason = (
            choice.message.content,
            choice.message.tool_calls,
            choice.finish_reason,
        )

    assert content == "Checking."
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert finish_reason == "tool_calls"


def test_create_with_tools_and_malformed_call_returns_text(client, scripted):
    scripted("<tool_call>\nnot json\n</tool_call>")

    choice = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], max_tokens=60
    ).choices[0]

    assert choice.message.content == "<tool_call>\nnot json\n</tool_call>"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"


def test_create_without_tools_leaves_tool_call_text_as_content(client, scripted):
    scripted('<tool_call>{"name": "x"}</tool_call>')

    choice = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=60).choices[0]

    assert choice.message.content == '<tool_call>{"name": "x"}</tool_call>'
    assert choice.finish_reason == "stop"
