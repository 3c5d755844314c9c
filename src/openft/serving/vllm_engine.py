"""vLLM behind openft's names, auth and tenancy (``OPENFT_SERVING_ENGINE=vllm``, GPU machines).

openft resolves a model name for the caller's organization exactly as for its own engine; vLLM only ever sees a
base model directory, token ids, and LoRA directories under numbers openft gives them. Each ``ft:`` adapter (and
checkpoint) is loaded by vLLM on first use. openft renders and checks the prompt (``prompt.py``) and turns vLLM's
sampled tokens into events with ``ChoiceText``, so ``usage``, stop sequences, tool calls and ``finish_reason``
mean what they mean with openft's own engine; vLLM schedules, batches and samples. Full fine-tuned models are
served by the fallback engine (openft's), since a vLLM engine holds one base model.

vLLM runs on an event loop of its own, in a thread; ``generate`` is called from any thread, as the
``ChatEngine`` seam says, and the events reach the reader through an ``EventStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from openft.errors import RateLimitError, ServerError
from openft.serving.choice import ChoiceText
from openft.serving.engine import context_window, eos_ids, load_tokenizer
from openft.serving.prompt import build_prompt
from openft.serving.protocols import ChatEngine, Generation, ResolvedModel
from openft.serving.request import ChatRequest
from openft.serving.stream import EventStream


@dataclass(frozen=True)
class LoraRef:
    """How vLLM knows one adapter directory: ``LoRARequest(name, int_id, path)``."""

    name: str
    int_id: int
    path: str


class LoraNames:
    """One stable number per adapter directory, never reused (vLLM caches adapters by number, so a reused number
    would serve the wrong weights). Names carry no organization or model name: those stay in openft."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._next = itertools.count(1)  # vLLM requires lora_int_id > 0
        self._lock = threading.Lock()

    def ref(self, adapter_path: str) -> LoraRef:
        with self._lock:
            if adapter_path not in self._ids:
                self._ids[adapter_path] = next(self._next)
            number = self._ids[adapter_path]
        return LoraRef(f"openft-lora-{number}", number, adapter_path)


def sampling_options(request: ChatRequest, *, max_tokens: int, stop_token_ids: frozenset[int]) -> dict:
    """vLLM ``SamplingParams`` keyword arguments with OpenAI's meaning of each chat parameter.

    Stop sequences are not passed: openft cuts the text itself (``ChoiceText``) and ends the request, so a stop
    that spans tokens and a tool call are found exactly as by openft's engine.
    """
    return {
        "n": request.n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "logit_bias": dict(request.logit_bias) or None,
        "max_tokens": max_tokens,
        "stop_token_ids": sorted(stop_token_ids),
        "detokenize": False,
    }


@dataclass(frozen=True)
class Delta:
    """New tokens of one choice, as vLLM reports them."""

    index: int
    token_ids: list[int]
    finish_reason: str | None


class VLLMBackend(Protocol):
    """What the engine needs of vLLM for one base model."""

    def generate(
        self, token_ids: list[int], options: dict, request_id: str, lora: LoraRef | None
    ) -> AsyncIterator[list[Delta]]: ...

    async def abort(self, request_id: str) -> None: ...


class _VLLM:
    """The real backend: a vLLM async engine with LoRA enabled, over one base model directory."""

    def __init__(self, base_path: str, *, max_loras: int, max_lora_rank: int, max_num_seqs: int) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.engine = AsyncLLMEngine.from_engine_args(
            AsyncEngineArgs(
                model=base_path,
                enable_lora=True,
                max_loras=max_loras,
                max_lora_rank=max_lora_rank,
                max_num_seqs=max_num_seqs,
            )
        )

    async def generate(
        self, token_ids: list[int], options: dict, request_id: str, lora: LoraRef | None
    ) -> AsyncIterator[list[Delta]]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(**options, output_kind=RequestOutputKind.DELTA)
        lora_request = LoRARequest(lora.name, lora.int_id, lora.path) if lora is not None else None
        outputs = self.engine.generate(
            TokensPrompt(prompt_token_ids=token_ids), params, request_id, lora_request=lora_request
        )
        async for output in outputs:
            yield [Delta(o.index, list(o.token_ids), o.finish_reason) for o in output.outputs]

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)


@dataclass(frozen=True)
class _Base:
    tokenizer: Any
    context_window: int
    vocab_size: int
    eos_ids: frozenset[int]


class VLLMEngine:
    """Implements ``ChatEngine`` over vLLM. At most ``max_in_flight`` requests at once; one more is a 429."""

    def __init__(
        self,
        *,
        fallback: ChatEngine,
        max_loras: int = 8,
        max_lora_rank: int = 64,
        max_num_seqs: int = 256,
        max_in_flight: int = 512,
        backend_factory: Callable[[str], VLLMBackend] | None = None,
    ) -> None:
        self.fallback = fallback
        self.max_in_flight = max_in_flight
        self.lora_names = LoraNames()
        self._backend_factory = backend_factory or (
            lambda path: _VLLM(
                path, max_loras=max_loras, max_lora_rank=max_lora_rank, max_num_seqs=max_num_seqs
            )
        )
        self._lock = threading.Lock()
        self._backends: dict[str, VLLMBackend] = {}
        self._bases: dict[str, _Base] = {}
        self._adapter_tokenizers: dict[str, Any] = {}
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="openft-vllm", daemon=True).start()

    def generate(self, model: ResolvedModel, request: ChatRequest) -> Generation:
        if model.full_model_path is not None:
            return self.fallback.generate(model, request)
        base = self._base(model.base_path)
        tokenizer = base.tokenizer
        if model.adapter_path is not None:
            tokenizer = self._adapter_tokenizer(model.adapter_path) or tokenizer
        prompt = build_prompt(
            tokenizer, request, context_window=base.context_window, vocab_size=base.vocab_size
        )
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise RateLimitError(
                    f"The model `{request.model}` is busy: {self._in_flight} requests are in flight. "
                    "Retry in a moment.",
                    retry_after_seconds=1,
                )
            self._in_flight += 1
        choices = [
            ChoiceText(
                i,
                tokenizer,
                stop=request.stop,
                tools=bool(request.tools),
                eos_ids=base.eos_ids,
                max_tokens=prompt.max_tokens,
            )
            for i in range(request.n)
        ]
        options = sampling_options(request, max_tokens=prompt.max_tokens, stop_token_ids=base.eos_ids)
        lora = self.lora_names.ref(model.adapter_path) if model.adapter_path is not None else None
        stream = EventStream()
        pump = self._pump(self._backend(model.base_path), prompt.token_ids, options, lora, choices, stream)
        task = asyncio.run_coroutine_threadsafe(pump, self._loop)
        stream.on_cancel = task.cancel  # the reader went away: stop vLLM at its next step
        return Generation(prompt_tokens=len(prompt.token_ids), events=stream)

    async def _pump(
        self,
        backend: VLLMBackend,
        token_ids: list[int],
        options: dict,
        lora: LoraRef | None,
        choices: list[ChoiceText],
        stream: EventStream,
    ) -> None:
        request_id = "openft-" + secrets.token_hex(12)
        error: BaseException | None = None
        try:
            async with contextlib.aclosing(backend.generate(token_ids, options, request_id, lora)) as outputs:
                async for deltas in outputs:
                    for delta in deltas:
                        _feed(choices[delta.index], delta, stream)
                    if all(choice.done for choice in choices):
                        break  # a stop sequence ended every choice: closing the outputs ends vLLM's request
            for choice in choices:
                if not choice.done:  # vLLM ended without saying why: it was the token limit
                    for event in choice.finish("length"):
                        stream.put(event)
        except asyncio.CancelledError:
            raise  # the reader went away
        except Exception as exc:
            error = ServerError(f"vLLM failed to generate: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await backend.abort(request_id)
            with self._lock:
                self._in_flight -= 1
            # Last, so a reader that sees the end sees the request gone from vLLM and from the count.
            stream.end(error)

    def _backend(self, base_path: str) -> VLLMBackend:
        with self._lock:
            if base_path not in self._backends:
                self._backends[base_path] = self._backend_factory(base_path)
            return self._backends[base_path]

    def _base(self, base_path: str) -> _Base:
        with self._lock:
            if base_path in self._bases:
                return self._bases[base_path]
        from transformers import AutoConfig, GenerationConfig

        tokenizer = load_tokenizer(base_path)
        if tokenizer is None:
            raise ServerError(f"No tokenizer found next to the model at {base_path!r}.")
        config = AutoConfig.from_pretrained(base_path)
        try:
            generation_config = GenerationConfig.from_pretrained(base_path)
        except OSError:
            generation_config = None
        base = _Base(
            tokenizer=tokenizer,
            context_window=context_window(config, tokenizer),
            vocab_size=config.get_text_config().vocab_size,
            eos_ids=eos_ids(generation_config, tokenizer),
        )
        with self._lock:
            return self._bases.setdefault(base_path, base)

    def _adapter_tokenizer(self, adapter_path: str) -> Any:
        with self._lock:
            if adapter_path in self._adapter_tokenizers:
                return self._adapter_tokenizers[adapter_path]
        tokenizer = load_tokenizer(adapter_path)
        with self._lock:
            return self._adapter_tokenizers.setdefault(adapter_path, tokenizer)


def _feed(choice: ChoiceText, delta: Delta, stream: EventStream) -> None:
    for token in delta.token_ids:
        if choice.done:
            return
        for event in choice.accept(token):
            stream.put(event)
    if delta.finish_reason is not None and not choice.done:
        for event in choice.finish("length" if delta.finish_reason == "length" else "stop"):
            stream.put(event)
