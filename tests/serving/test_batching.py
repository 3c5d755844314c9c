"""Continuous batching through the SDK: requests that share a batch answer as if alone, leave it when their
client goes away, and wait in a bounded queue.

"At once" and "together" are shown by the engine's counters (decode steps, the largest batch, the adapters
in one step), never by the clock.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from openft.serving.engine import InferenceEngine
from openft.serving.protocols import ResolvedModel

HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]
BASE, ADAPTER_A, ADAPTER_B = "tiny", "ft:tiny:org:a:aaaaaaaa", "ft:tiny:org:b:bbbbbbbb"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for a state the engine reports (its counters move as requests arrive), not for a guessed delay."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def serve_engine(serve, chat_app, models) -> Iterator[Callable[..., tuple[InferenceEngine, openai.OpenAI]]]:
    clients: list[httpx.Client] = []

    def start(**engine_options) -> tuple[InferenceEngine, openai.OpenAI]:
        # float32, so "as if alone" means identical tokens: in bfloat16 a matmul's rounding can depend on how
        # many rows share it, and a near-tie between two tokens may then break either way.
        engine = InferenceEngine(**{"dtype": "float32", **engine_options})
        http = httpx.Client(timeout=120)
        clients.append(http)
        client = openai.OpenAI(
            base_url=f"{serve(chat_app(engine, models))}/v1", api_key="x", http_client=http, max_retries=0
        )
        return engine, client

    yield start
    for http in clients:
        http.close()


@pytest.fixture(scope="module")
def eos_id(tiny_model_dir: Path) -> int:
    return AutoTokenizer.from_pretrained(tiny_model_dir).convert_tokens_to_ids("<|im_end|>")


def answer(client: openai.OpenAI, params: dict) -> dict:
    """What a caller can see of a completion: each choice's text and finish_reason, and the usage."""
    if params.get("stream"):
        chunks = list(client.chat.completions.create(**params, stream_options={"include_usage": True}))
        texts: dict[int, str] = {}
        finishes: dict[int, str] = {}
        for chunk in chunks[:-1]:
            choice = chunk.choices[0]
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        usage = chunks[-1].usage
        choices = [(texts[i], finishes[i]) for i in sorted(texts)]
    else:
        completion = client.chat.completions.create(**params)
        usage = completion.usage
        choices = [(c.message.content, c.finish_reason) for c in completion.choices]
    return {"choices": choices, "prompt": usage.prompt_tokens, "completion": usage.completion_tokens}


def mixed_requests(eos: int) -> list[dict]:
    """Base and two adapters; greedy and seeded; lengths that end the rows at different steps; a stop, an
    end-of-turn, n=2 and a stream, so rows leave mid-batch and the survivors move in the cache."""

    no_eos = {str(eos): -100}

    def ask(model: str, content: str, **params) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": content}], **params}

    return [
        ask(BASE, "Hello! What is the capital of France?", temperature=0, max_tokens=24, logit_bias=no_eos),
        ask(BASE, "Name three rivers.", temperature=0, max_tokens=5),
        ask(ADAPTER_A, "Hello! What is the capital of France?", temperature=0, max_tokens=17),
        ask(ADAPTER_A, "Count to ten, please.", seed=3, max_tokens=30, n=2, logit_bias=no_eos),
        ask(ADAPTER_B, "Hello! What is the capital of France?", temperature=0, max_tokens=9),
        ask(ADAPTER_B, "Write a haiku.", seed=11, top_p=0.9, max_tokens=20, stream=True),
        ask(BASE, "Say nothing.", temperature=0, max_tokens=12, logit_bias={str(eos): 100}),
        ask(
            ADAPTER_A, "Tell me a story.", seed=5, max_tokens=28, presence_penalty=1.5, frequency_penalty=0.5
        ),
    ]


@contextlib.contextmanager
def recorded_prefills(loaded) -> Iterator[list[int]]:
    """The tokens of each prefill the loaded model's batch runs (through its FastDecoder)."""
    decoder = loaded.loop.model.decoder
    prefills: list[int] = []
    prefill = decoder.prefill

    def record(input_ids, *args, **kwargs):
        prefills.append(input_ids.shape[0])
        return prefill(input_ids, *args, **kwargs)

    decoder.prefill = record
    try:
        yield prefills
    finally:
        del decoder.prefill


def test_mixed_adapter_batch_answers_each_request_as_if_alone(serve_engine, models, eos_id):
    engine, client = serve_engine()
    requests = mixed_requests(eos_id)
    alone = [answer(client, params) for params in requests]

    base = models[BASE]
    before = engine.stats(base)
    with (
        recorded_prefills(engine._bases[base.base_path]) as prefills,
        ThreadPoolExecutor(len(requests)) as pool,
    ):
        with engine.hold(base):
            futures = [pool.submit(answer, client, params) for params in requests]
            wait_until(lambda: engine.stats(base).waiting == len(requests), "every request to be queued")
        together = [future.result() for future in futures]

    assert together == alone
    # The eight prompts were prefilled together, packed into one forward.
    assert prefills == [sum(a["prompt"] for a in alone)]
    stats = engine.stats(base)
    # Every choice but the one that ends its turn with its first token (sampled from the prefill).
    rows = sum(params.get("n", 1) for params in requests) - 1
    assert stats.largest_batch == rows, "all requests decoded in one batch"
    assert stats.most_adapters == 3, "base, adapter a and adapter b in the same decode step"
    assert stats.completed - before.completed == len(requests)
    # The exact counts the batch must keep: the limit, an end-of-turn at once, a stop that is not a limit.
    assert together[0]["completion"] == 24 and together[0]["choices"][0][1] == "length"
    assert together[3]["completion"] == 60 and [c[1] for c in together[3]["choices"]] == ["length"] * 2
    assert together[6] == {"choices": [("", "stop")], "prompt": together[6]["prompt"], "completion": 1}


def test_request_joining_a_running_batch_answers_as_if_alone(serve_engine, models, eos_id):
    engine, client = serve_engine()
    # Long enough to outgrow the cache's first allocation (256 positions) while the other joins.
    long = {
        "model": ADAPTER_A,
        "messages": HELLO,
        "max_tokens": 300,
        "seed": 1,
        "logit_bias": {str(eos_id): -100},
    }
    short = {"model": BASE, "messages": HELLO, "temperature": 0, "max_tokens": 12}
    alone = [answer(client, long), answer(client, short)]

    base = models[BASE]
    steps_before = engine.stats(base).steps
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(answer, client, long)
        wait_until(lambda: engine.stats(base).steps >= steps_before + 3, "the long request to be decoding")
        joined = answer(client, short)
        together = [running.result(), joined]

    assert together == alone
    assert engine.stats(base).largest_batch == 2, "the short request decoded beside the long one"


def test_n_choices_share_one_prefill(serve_engine, models):
    engine, client = serve_engine()
    client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=1)  # loads the model
    with recorded_prefills(engine._bases[models[BASE].base_path]) as prefills:
        completion = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=6, n=4, seed=2)

    assert prefills == [completion.usage.prompt_tokens]
    assert [c.finish_reason for c in completion.choices] == ["length"] * 4
    assert completion.usage.completion_tokens == 24


@pytest.fixture(scope="module")
def long_context_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ResolvedModel]:
    """A tiny model with a 4096-token window: an abandoned answer would run for thousands of steps."""
    from openft.training.tiny import build_tiny_model

    path = str(build_tiny_model(tmp_path_factory.mktemp("long-context"), max_position_embeddings=4096))
    return {"long": ResolvedModel("long", path)}


@pytest.fixture
def one_slot(serve, chat_app, long_context_models) -> tuple[InferenceEngine, str, ResolvedModel]:
    engine = InferenceEngine(max_batch=1)
    return engine, serve(chat_app(engine, long_context_models)), long_context_models["long"]


def endless(eos: int, **params) -> dict:
    """No max_tokens (so the whole context window, as at OpenAI) and the end-of-turn token banned."""
    return {"model": "long", "messages": HELLO, "logit_bias": {str(eos): -100}, "seed": 1, **params}


def test_closed_stream_frees_its_slot_for_the_next_request(one_slot, eos_id):
    engine, url, model = one_slot
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)

    stream = client.chat.completions.create(**endless(eos_id), stream=True)
    for _, _chunk in zip(range(5), stream, strict=False):
        pass
    stream.close()  # the client goes away after five chunks
    nxt = client.chat.completions.create(model="long", messages=HELLO, max_tokens=5, temperature=0)

    assert nxt.choices[0].finish_reason == "length" and nxt.usage.completion_tokens == 5
    stats = engine.stats(model)
    assert stats.cancelled == 1 and stats.completed == 1
    # With one slot the next request could only start once the first left it: had the first run on, the
    # batch would have taken ~4000 steps before the second's five.
    assert stats.steps < 1000, stats


def test_disconnected_non_streaming_client_frees_its_slot(one_slot, eos_id):
    engine, url, model = one_slot
    body = json.dumps(endless(eos_id)).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(
            lambda: (s := engine.stats(model)) is not None and s.steps >= 3, "the request to be decoding"
        )
    # The socket is closed: the client is gone before any answer.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
    nxt = client.chat.completions.create(model="long", messages=HELLO, max_tokens=5, temperature=0)

    assert nxt.usage.completion_tokens == 5
    stats = engine.stats(model)
    assert stats.cancelled == 1 and stats.completed == 1
    assert stats.steps < 1000, stats


def test_full_queue_answers_429_with_retry_after(serve, chat_app, models, assert_schema):
    engine = InferenceEngine(max_batch=1, max_queue=1)
    url = serve(chat_app(engine, models))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
    base = models[BASE]
    params = {"model": BASE, "messages": HELLO, "max_tokens": 3, "temperature": 0}

    with ThreadPoolExecutor(1) as pool:
        with engine.hold(base):
            queued = pool.submit(client.chat.completions.create, **params)
            wait_until(
                lambda: engine.stats(base) is not None and engine.stats(base).waiting == 1, "one waiting"
            )
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(**params)
        first = queued.result()

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"
    assert error.code == "rate_limit_exceeded" and error.body["type"] == "requests"
    assert_schema(error.response.json(), "ErrorResponse")
    assert "busy" in error.message
    # The queued request was not harmed by the refusal.
    assert first.choices[0].finish_reason == "length" and first.usage.completion_tokens == 3


def test_without_max_tokens_answer_may_fill_the_context_window(serve_engine, models, tiny_model_dir, eos_id):
    _, client = serve_engine()
    window = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]

    completion = client.chat.completions.create(
        model=BASE, messages=HELLO, temperature=0, logit_bias={str(eos_id): -100}
    )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.prompt_tokens + completion.usage.completion_tokens == window


def test_huge_message_is_refused_before_it_is_tokenized(serve_engine, models):
    engine, client = serve_engine()
    client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=1)  # loads the model
    tokenizer = engine._bases[models[BASE].base_path].tokenizer
    rendered: list[int] = []
    render = tokenizer.apply_chat_template
    tokenizer.apply_chat_template = lambda *args, **kwargs: rendered.append(1) or render(*args, **kwargs)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=BASE, messages=[{"role": "user", "content": "x" * 5_000_000}], max_tokens=1
            )
    finally:
        del tokenizer.apply_chat_template

    assert caught.value.param == "messages"
    assert "5000000 characters" in caught.value.message
    assert rendered == [], "the prompt was not rendered, let alone tokenized"


def test_queued_request_whose_client_leaves_is_dropped_from_the_queue(serve_engine, models):
    engine, client = serve_engine(max_queue=4)
    base = models[BASE]
    client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=1)
    stream_done = threading.Event()

    def abandon() -> None:
        stream = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=3, stream=True)
        stream_done.set()
        stream.close()

    with engine.hold(base):
        threading.Thread(target=abandon).start()
        wait_until(stream_done.is_set, "the stream to be opened")
        wait_until(lambda: engine.stats(base).waiting == 0, "the closed request to leave the queue")

    stats = engine.stats(base)
    assert stats.cancelled == 1 and stats.admitted == 1


def test_more_choices_than_the_batch_holds_is_400(serve_engine):
    _, client = serve_engine(max_batch=2)

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=2, n=3)

    assert caught.value.param == "n"
    assert "at most 2 sequences" in caught.value.message
