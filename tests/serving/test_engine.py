"""The inference engine directly: adapter LRU eviction, full-model caching, concurrent requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from openft.errors import InvalidRequestError, ServerError
from openft.serving import response
from openft.serving.engine import InferenceEngine
from openft.serving.protocols import ResolvedModel
from openft.serving.request import parse_chat_request

HELLO = [{"role": "user", "content": "Hello! What is the capital of France?"}]


def text(engine: InferenceEngine, model: ResolvedModel, **params) -> str:
    request = parse_chat_request(
        {"model": model.name, "messages": HELLO, "max_tokens": 12, "seed": 7, **params}
    )
    return response.completion(model.name, engine.generate(model, request))["choices"][0]["message"][
        "content"
    ]


def test_generate_beyond_max_adapters_evicts_least_recently_used(models):
    engine = InferenceEngine(max_adapters=1)
    a, b = models["ft:tiny:org:a:aaaaaaaa"], models["ft:tiny:org:b:bbbbbbbb"]

    first_a = text(engine, a)
    text(engine, b)
    assert engine.loaded_adapters(a.base_path) == [b.adapter_path]

    # Reloaded after eviction, A answers exactly as before: eviction removed A's weights, not B's.
    assert text(engine, a) == first_a
    assert engine.loaded_adapters(a.base_path) == [a.adapter_path]


def test_generate_within_max_adapters_keeps_recently_used_order(models):
    engine = InferenceEngine(max_adapters=2)
    a, b = models["ft:tiny:org:a:aaaaaaaa"], models["ft:tiny:org:b:bbbbbbbb"]

    text(engine, a)
    text(engine, b)
    text(engine, a)

    assert engine.loaded_adapters(a.base_path) == [b.adapter_path, a.adapter_path]


def test_generate_beyond_adapter_byte_budget_evicts(models, adapter_dirs):
    one_adapter = sum(f.stat().st_size for f in adapter_dirs[0].glob("adapter_model.*"))
    engine = InferenceEngine(max_adapters=8, max_adapter_bytes=one_adapter + one_adapter // 2)
    a, b = models["ft:tiny:org:a:aaaaaaaa"], models["ft:tiny:org:b:bbbbbbbb"]

    text(engine, a)
    text(engine, b)

    assert engine.loaded_adapters(a.base_path) == [b.adapter_path]


def test_generate_adapters_share_one_base_model(models):
    engine = InferenceEngine()
    text(engine, models["ft:tiny:org:a:aaaaaaaa"])
    text(engine, models["ft:tiny:org:b:bbbbbbbb"])
    text(engine, models["tiny"])

    assert list(engine._bases) == [models["tiny"].base_path]
    assert engine.loaded_full_models() == []


def test_generate_beyond_max_full_models_evicts_oldest(models, tiny_model_dir):
    engine = InferenceEngine(max_full_models=1)
    full = models["ft:tiny:org:full:ffffffff"]
    other = ResolvedModel("ft:tiny:org:other:oooooooo", full.base_path, full_model_path=str(tiny_model_dir))

    text(engine, full)
    text(engine, other)

    assert engine.loaded_full_models() == [str(tiny_model_dir)]


def test_generate_in_parallel_threads_matches_sequential(models):
    names = ["tiny", "ft:tiny:org:a:aaaaaaaa", "ft:tiny:org:b:bbbbbbbb", "ft:tiny:org:full:ffffffff"] * 2
    sequential_engine = InferenceEngine()
    expected = [text(sequential_engine, models[name]) for name in names]

    engine = InferenceEngine(max_adapters=1)  # evictions race with generation too
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(lambda name: text(engine, models[name]), names))

    assert results == expected


def test_generate_streaming_in_background_matches_inline(models):
    engine = InferenceEngine()
    model = models["ft:tiny:org:a:aaaaaaaa"]
    request = parse_chat_request(
        {"model": model.name, "messages": HELLO, "max_tokens": 12, "seed": 3, "n": 2}
    )

    inline = response.completion(model.name, engine.generate(model, request))
    streamed = list(response.chunks(model.name, engine.generate(model, request), include_usage=True))

    for index, choice in enumerate(inline["choices"]):
        pieces = [
            c["choices"][0]["delta"].get("content") or ""
            for c in streamed[:-1]
            if c["choices"][0]["index"] == index
        ]
        assert "".join(pieces) == choice["message"]["content"]
    assert streamed[-1]["usage"]["completion_tokens"] == inline["usage"]["completion_tokens"] == 24


def test_generate_stream_closed_early_stops_sampling(models):
    engine = InferenceEngine()
    model = models["tiny"]
    text(engine, model)
    forwards = []
    engine._bases[model.base_path].model.register_forward_hook(lambda *args: forwards.append(1))
    request = parse_chat_request({"model": "tiny", "messages": HELLO, "max_tokens": 480, "seed": 1})

    events = engine.generate(model, request).events
    next(events)
    events.close()  # the client went away
    for thread in threading.enumerate():
        if thread.name == "openft-generate":
            thread.join()

    assert len(forwards) < 480


def test_generate_with_prompt_over_context_window_is_400(models):
    engine = InferenceEngine()
    long = [{"role": "user", "content": "word " * 2000}]
    request = parse_chat_request({"model": "tiny", "messages": long})

    with pytest.raises(InvalidRequestError) as caught:
        engine.generate(models["tiny"], request)

    assert caught.value.param == "messages"


def test_generate_after_a_failed_decode_step_serves_the_next_request(models):
    engine = InferenceEngine()
    model = models["tiny"]
    text(engine, model)
    loaded = engine._bases[model.base_path]
    heads = []

    def fail_once(module, args):
        # The embeddings run once for the prefill, then once per decode step: the first decode step fails.
        heads.append(1)
        if len(heads) == 2:
            raise RuntimeError("device lost")

    handle = loaded.model.model.embed_tokens.register_forward_pre_hook(fail_once)
    try:
        request = parse_chat_request({"model": "tiny", "messages": HELLO, "max_tokens": 8})
        with pytest.raises(ServerError, match="device lost"):
            response.completion("tiny", engine.generate(model, request))
        assert text(engine, model)  # the loop lives on, with a fresh cache
    finally:
        handle.remove()
