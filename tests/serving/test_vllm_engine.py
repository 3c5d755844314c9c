"""The vLLM engine: how openft's names, tenancy and chat parameters map onto vLLM's LoRA requests.

vLLM needs a CUDA device, so on a CPU the tests stand a scripted backend at the seam the real one fills
(``VLLMBackend``: token ids in, token ids out) and check everything openft does around it through the SDK.
The ``gpu`` tests at the end run the real vLLM.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from openft.errors import RateLimitError
from openft.serving.engine import InferenceEngine
from openft.serving.request import parse_chat_request
from openft.serving.vllm_engine import Delta, LoraNames, LoraRef, VLLMEngine, sampling_options

HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]
SCRIPT_TEXT = " Paris is the capital of France, and it sits on the Seine river in the north."


class ScriptedVLLM:
    """Replays a fixed token script for every request, a few tokens per step; records what it was asked."""

    def __init__(self, script: list[int], *, endless: bool = False) -> None:
        self.script = script
        self.endless = endless
        self.calls: list[dict] = []
        self.closed: list[str] = []
        self.aborted: list[str] = []
        self.started = threading.Event()
        self.paused = False  # a stalled vLLM: nothing comes out until it is unpaused or aborted
        self.sent: dict[str, int] = {}  # tokens produced per request

    async def generate(self, token_ids, options, request_id, lora):
        self.calls.append(
            {"token_ids": token_ids, "options": options, "request_id": request_id, "lora": lora}
        )
        self.started.set()
        try:
            while self.paused:
                await asyncio.sleep(0.001)
            sent = 0
            while self.endless or sent < min(options["max_tokens"], len(self.script)):
                part = [self.script[(sent + k) % len(self.script)] for k in range(2)]
                part = part[: options["max_tokens"] - sent]
                sent += len(part)
                self.sent[request_id] = sent
                finish = "length" if sent >= options["max_tokens"] else None
                yield [Delta(i, part, finish) for i in range(options["n"])]
                # An endless answer comes at a model's pace, a few milliseconds a step.
                await asyncio.sleep(0.005 if self.endless else 0)
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def scripted(tokenizer) -> ScriptedVLLM:
    return ScriptedVLLM(tokenizer(SCRIPT_TEXT, add_special_tokens=False)["input_ids"])


@pytest.fixture
def vllm_app(serve, chat_app, models, scripted):
    bases: list[str] = []

    def factory(path: str) -> ScriptedVLLM:
        bases.append(path)
        return scripted

    engine = VLLMEngine(fallback=InferenceEngine(), backend_factory=factory, max_in_flight=2)
    url = serve(chat_app(engine, models))
    with httpx.Client(timeout=60) as http:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", http_client=http, max_retries=0)
        yield engine, client, bases


def test_lora_names_are_stable_distinct_and_name_nothing_of_the_tenant():
    names = LoraNames()

    a = names.ref("/models/org-1/ftjob-abc/adapter")
    b = names.ref("/models/org-2/ftjob-def/adapter")

    assert names.ref("/models/org-1/ftjob-abc/adapter") == a == LoraRef("openft-lora-1", 1, a.path)
    assert b.int_id == 2 and b.name == "openft-lora-2"
    assert "org" not in a.name + b.name


def test_sampling_options_keep_openai_meaning():
    request = parse_chat_request(
        {
            "model": "m",
            "messages": HELLO,
            "n": 3,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 5,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.25,
            "logit_bias": {"12": 3, "7": -100},
            "stop": ["\n\n"],
        }
    )

    options = sampling_options(request, max_tokens=40, stop_token_ids=frozenset({2, 9}))

    assert options == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 5,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": {12: 3.0, 7: -100.0},
        "max_tokens": 40,
        "stop_token_ids": [2, 9],
        "detokenize": False,
    }


def test_vllm_engine_serves_adapters_as_lora_requests_by_number(vllm_app, models, tokenizer):
    engine, client, bases = vllm_app

    base = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=0)
    a = client.chat.completions.create(model="ft:tiny:org:a:aaaaaaaa", messages=HELLO, max_tokens=8)
    b = client.chat.completions.create(model="ft:tiny:org:b:bbbbbbbb", messages=HELLO, max_tokens=8)
    client.chat.completions.create(model="ft:tiny:org:a:aaaaaaaa", messages=HELLO, max_tokens=8)

    calls = engine._backends[models["tiny"].base_path].calls
    assert bases == [models["tiny"].base_path], "one vLLM engine for the base and its adapters"
    assert [c["lora"] for c in calls] == [
        None,
        LoraRef("openft-lora-1", 1, models["ft:tiny:org:a:aaaaaaaa"].adapter_path),
        LoraRef("openft-lora-2", 2, models["ft:tiny:org:b:bbbbbbbb"].adapter_path),
        LoraRef("openft-lora-1", 1, models["ft:tiny:org:a:aaaaaaaa"].adapter_path),
    ]
    # The prompt vLLM sees is the one openft renders and counts.
    rendered = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    assert calls[0]["token_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert base.usage.prompt_tokens == len(calls[0]["token_ids"])
    script = engine._backends[models["tiny"].base_path].script
    for completion in (base, a, b):
        assert completion.choices[0].message.content == tokenizer.decode(script[:8], skip_special_tokens=True)
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 8


def test_vllm_engine_serves_full_models_with_its_fallback(vllm_app, models):
    engine, client, bases = vllm_app

    completion = client.chat.completions.create(
        model="ft:tiny:org:full:ffffffff", messages=HELLO, max_tokens=5
    )

    assert completion.usage.completion_tokens == 5
    assert bases == [], "vLLM was never started"
    assert engine.fallback.loaded_full_models() == [models["ft:tiny:org:full:ffffffff"].full_model_path]


def test_vllm_engine_cuts_at_a_stop_sequence_and_ends_the_vllm_request(vllm_app, scripted):
    _, client, _ = vllm_app

    completion = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=30, stop=[", and"], n=2
    )

    for choice in completion.choices:
        assert choice.message.content == " Paris is the capital of France"
        assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens < 60
    assert scripted.closed == [scripted.calls[0]["request_id"]], "vLLM's request was closed early"


def test_vllm_engine_closed_stream_aborts_the_vllm_request(vllm_app, scripted):
    engine, client, _ = vllm_app
    scripted.endless = True

    stream = client.chat.completions.create(model="tiny", messages=HELLO, stream=True, max_tokens=400)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    # The next request is answered, and the endless one was aborted, not left running.
    scripted.endless = False
    client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)

    first = scripted.calls[0]["request_id"]
    assert first in scripted.closed and first in scripted.aborted
    assert scripted.sent[first] < 200, "stopped long before its 400 tokens"
    assert engine._in_flight == 0


def test_vllm_engine_beyond_max_in_flight_is_429(models, scripted):
    scripted.paused = True  # the first request stays in flight
    engine = VLLMEngine(fallback=InferenceEngine(), backend_factory=lambda path: scripted, max_in_flight=1)
    request = parse_chat_request({"model": "tiny", "messages": HELLO, "max_tokens": 400})

    first = engine.generate(models["tiny"], request)
    with pytest.raises(RateLimitError) as caught:
        engine.generate(models["tiny"], request)
    first.events.close()

    assert caught.value.status_code == 429 and caught.value.headers == {"Retry-After": "1"}


# -- the real vLLM ----------------------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="vLLM needs a CUDA device")
def test_real_vllm_serves_base_and_adapters_through_the_sdk(serve, chat_app, models):
    pytest.importorskip("vllm")
    engine = VLLMEngine(fallback=InferenceEngine(), max_loras=2, max_lora_rank=8)
    url = serve(chat_app(engine, models))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)
    own = openai.OpenAI(
        base_url=f"{serve(chat_app(InferenceEngine(), models))}/v1", api_key="x", max_retries=0
    )

    answers = {}
    for name in ("tiny", "ft:tiny:org:a:aaaaaaaa", "ft:tiny:org:b:bbbbbbbb"):
        completion = client.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0)
        reference = own.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0)
        assert completion.usage.prompt_tokens == reference.usage.prompt_tokens
        assert completion.usage.completion_tokens == 12
        assert completion.choices[0].finish_reason == "length"
        answers[name] = completion.choices[0].message.content
    assert len(set(answers.values())) == 3, "each adapter changes the answer"

    chunks = list(
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, stream=True, n=2)
    )
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finishes == {0: "length", 1: "length"}
