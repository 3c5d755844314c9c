"""POST /v1/chat/completions through the official openai client, against the tiny model and its adapters."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest
from transformers import AutoTokenizer

HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]


def greedy(client: openai.OpenAI, model: str = "tiny", **kwargs) -> str:
    kwargs.setdefault("max_tokens", 24)
    completion = client.chat.completions.create(model=model, messages=HELLO, temperature=0, **kwargs)
    return completion.choices[0].message.content


def seeded(client: openai.OpenAI, model: str = "tiny", **kwargs) -> str:
    """Sampled with a fixed seed: deterministic, and varied text (the random model's greedy text repeats)."""
    kwargs.setdefault("max_tokens", 24)
    completion = client.chat.completions.create(model=model, messages=HELLO, seed=7, **kwargs)
    return completion.choices[0].message.content


def test_create_non_streaming_returns_openai_completion(client, assert_schema, tiny_model_dir):
    completion = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, seed=3)

    body = completion.model_dump(exclude_unset=True)
    assert_schema(body, "CreateChatCompletionResponse")
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "tiny"
    assert completion.system_fingerprint.startswith("fp_")
    [choice] = completion.choices
    assert choice.index == 0 and choice.logprobs is None
    assert choice.message.role == "assistant" and choice.message.refusal is None
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    assert completion.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # A random model never ends its turn in 12 tokens: the limit is what stopped it.
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_create_streaming_yields_chunks_matching_non_streaming(client, assert_schema):
    expected = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, seed=5)

    stream = client.chat.completions.create(
        model="tiny",
        messages=HELLO,
        max_tokens=16,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    for chunk in chunks:
        assert_schema(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2, "streamed in pieces"
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "length" and finish.choices[0].delta.content is None
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == expected.usage.model_dump()


def test_create_streaming_ends_with_done_marker(base_url):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 4, "seed": 7, "stream": True}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert all("usage" not in c or c["usage"] is None for c in chunks), "no usage unless asked"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_create_with_stop_cuts_before_stop_sequence(client, stream):
    full = seeded(client, max_tokens=40)
    stop = full[12:16]  # four characters: byte-level BPE tokens are shorter, so the stop spans tokens
    expected = full[: full.find(stop)]

    kwargs = {"model": "tiny", "messages": HELLO, "seed": 7, "max_tokens": 40, "stop": [stop, "\x00never"]}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish_reason = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        text, finish_reason = choice.message.content, choice.finish_reason

    assert text == expected
    assert finish_reason == "stop"


def test_create_with_n_returns_n_choices_and_sums_usage(client):
    completion = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10, n=3, seed=11)

    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.message.content for c in completion.choices}) > 1, "sampled choices differ"
    assert completion.usage.completion_tokens == 30


def test_create_streaming_with_n_interleaves_choices(client):
    chunks = list(
        # Seeded: unseeded, the random model ends a turn early in about 3% of runs.
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, n=2, stream=True, seed=4)
    )

    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finishes == {0: "length", 1: "length"}


def test_create_with_same_seed_is_reproducible(client):
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=20, seed=seed, top_p=0.9
        )
        return completion.choices[0].message.content

    assert sample(42) == sample(42)
    assert sample(42) != sample(43)


def test_create_with_penalties_changes_output(client):
    plain = greedy(client, max_tokens=40)
    penalised = greedy(client, max_tokens=40, frequency_penalty=2.0, presence_penalty=2.0)

    assert penalised != plain


def test_create_with_tools_renders_them_into_the_prompt(client):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    plain = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1)
    with_tools = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1, tools=[tool])

    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20


def test_create_with_adapter_answers_by_name_and_differs_from_base(client):
    base = seeded(client)
    adapter_a = seeded(client, model="ft:tiny:org:a:aaaaaaaa")
    adapter_b = seeded(client, model="ft:tiny:org:b:bbbbbbbb")

    assert len({base, adapter_a, adapter_b}) == 3
    # Base after adapters: the adapter layers are off again, not left active.
    assert seeded(client) == base
    assert seeded(client, model="ft:tiny:org:a:aaaaaaaa") == adapter_a


def test_create_with_full_model_dir_uses_its_own_weights(client, engine, full_model_dir):
    completion = client.chat.completions.create(
        model="ft:tiny:org:full:ffffffff", messages=HELLO, seed=7, max_tokens=24
    )

    assert completion.model == "ft:tiny:org:full:ffffffff"
    assert completion.choices[0].message.content != seeded(client)
    assert engine.loaded_full_models() == [str(full_model_dir)]


def test_create_with_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=HELLO)

    assert caught.value.code == "model_not_found"
    assert caught.value.param is None
    assert (
        caught.value.body["message"] == "The model `gpt-nope` does not exist or you do not have access to it."
    )


BROKEN_TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": {}}],
}


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [*HELLO, BROKEN_TOOL_CALL]}, "messages"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"max_completion_tokens": 100_000}, "max_completion_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 9}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            "response_format",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_create_with_bad_request_is_400_naming_param(client, overrides, param):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 4, **overrides}
    if "max_completion_tokens" in overrides:
        del body["max_tokens"]

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)

    assert caught.value.param == param
    assert caught.value.body["type"] == "invalid_request_error"


def test_create_with_unrecognized_argument_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, extra_body={"beam_width": 4})

    assert caught.value.param == "beam_width"


def test_create_with_logit_bias_forces_token(client, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [token] = tokenizer("Paris", add_special_tokens=False)["input_ids"][:1]

    text = greedy(client, max_tokens=3, logit_bias={str(token): 100})

    assert text == tokenizer.decode([token]) * 3


def test_importing_chat_router_does_not_import_torch():
    code = (
        "import sys, openft.api.chat; print(any(m in sys.modules for m in ('torch', 'transformers', 'peft')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"
