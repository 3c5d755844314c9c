"""The inference engine: loads models on demand, shares each base model among its LoRA adapters, and generates."""

from __future__ import annotations

import contextlib
import itertools
import queue
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openft.errors import InvalidRequestError, ServerError
from openft.serving.protocols import ChoiceFinished, Generation, GenerationEvent, ResolvedModel, TextDelta
from openft.serving.request import ChatRequest
from openft.serving.text import IncrementalDecoder, StopMatcher
from openft.serving.tools import TOOL_CALL_OPEN, parse_tool_calls

# Turn-end tokens of common chat templates: a model fine-tuned on a template stops on them even when its
# generation config names only the plain EOS token.
_TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_DEFAULT_CONTEXT_WINDOW = 2048


@dataclass
class _Adapter:
    name: str
    nbytes: int
    tokenizer: Any


@dataclass
class _Loaded:
    """One copy of a model's weights, with the adapters currently loaded onto it."""

    model: Any
    tokenizer: Any
    context_window: int
    eos_ids: frozenset[int]
    # Generation and adapter loading/eviction both mutate or read the LoRA layers: one at a time.
    lock: threading.Lock = field(default_factory=threading.Lock)
    peft: Any = None
    adapters: OrderedDict[str, _Adapter] = field(default_factory=OrderedDict)


class InferenceEngine:
    """Implements ``ChatEngine``. torch, transformers and peft are imported on the first load, not before.

    Base models stay loaded; adapters are evicted least-recently-used beyond ``max_adapters`` or
    ``max_adapter_bytes`` per base model; full fine-tuned models are evicted beyond ``max_full_models``.
    """

    def __init__(
        self,
        *,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_full_models: int = 2,
        device: str | None = None,
    ) -> None:
        if max_adapters < 1 or max_full_models < 1:
            raise ValueError("max_adapters and max_full_models must be at least 1.")
        self.max_adapters = max_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.max_full_models = max_full_models
        self._device = device
        self._registry_lock = threading.Lock()
        self._bases: dict[str, _Loaded] = {}
        self._full: OrderedDict[str, _Loaded] = OrderedDict()
        self._adapter_names = itertools.count()

    # -- what is loaded -------------------------------------------------------------------------------

    def loaded_adapters(self, base_path: str) -> list[str]:
        """Adapter paths loaded on a base model, least recently used first."""
        loaded = self._bases.get(str(base_path))
        return list(loaded.adapters) if loaded else []

    def loaded_full_models(self) -> list[str]:
        return list(self._full)

    def _loaded_for(self, model: ResolvedModel) -> _Loaded:
        with self._registry_lock:
            if model.full_model_path is not None:
                path = str(model.full_model_path)
                if path in self._full:
                    self._full.move_to_end(path)
                else:
                    self._full[path] = self._load(path, tokenizer_fallback=str(model.base_path))
                    while len(self._full) > self.max_full_models:
                        self._full.popitem(last=False)
                return self._full[path]
            path = str(model.base_path)
            if path not in self._bases:
                self._bases[path] = self._load(path)
            return self._bases[path]

    def _load(self, path: str, tokenizer_fallback: str | None = None) -> _Loaded:
        import torch
        from transformers import AutoModelForCausalLM

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        except OSError as exc:
            raise ServerError(f"Could not load the model weights at {path!r}: {exc}") from exc
        tokenizer = _tokenizer(path) or (_tokenizer(tokenizer_fallback) if tokenizer_fallback else None)
        if tokenizer is None:
            raise ServerError(f"No tokenizer found next to the model at {path!r}.")
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            context_window=_context_window(model, tokenizer),
            eos_ids=_eos_ids(model, tokenizer),
        )

    def _activate(self, loaded: _Loaded, adapter_path: str | None) -> contextlib.AbstractContextManager:
        """Make ``adapter_path`` (or no adapter) the active one; call with ``loaded.lock`` held."""
        if adapter_path is None:
            return loaded.peft.disable_adapter() if loaded.peft is not None else contextlib.nullcontext()
        if adapter_path in loaded.adapters:
            loaded.adapters.move_to_end(adapter_path)
        else:
            self._load_adapter(loaded, adapter_path)
        loaded.peft.set_adapter(loaded.adapters[adapter_path].name)
        return contextlib.nullcontext()

    def _load_adapter(self, loaded: _Loaded, adapter_path: str) -> None:
        from peft import PeftModel

        name = f"adapter_{next(self._adapter_names)}"
        try:
            if loaded.peft is None:
                loaded.peft = PeftModel.from_pretrained(loaded.model, adapter_path, adapter_name=name).eval()
            else:
                loaded.peft.load_adapter(adapter_path, adapter_name=name)
        except (OSError, ValueError) as exc:
            raise ServerError(f"Could not load the LoRA adapter at {adapter_path!r}: {exc}") from exc
        loaded.adapters[adapter_path] = _Adapter(name, _adapter_bytes(adapter_path), _tokenizer(adapter_path))
        # The new adapter is loaded before any is evicted, so the PeftModel never runs out of adapters.
        while len(loaded.adapters) > 1 and (
            len(loaded.adapters) > self.max_adapters
            or (
                self.max_adapter_bytes is not None
                and sum(a.nbytes for a in loaded.adapters.values()) > self.max_adapter_bytes
            )
        ):
            _, evicted = loaded.adapters.popitem(last=False)
            loaded.peft.delete_adapter(evicted.name)

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, model: ResolvedModel, request: ChatRequest, *, background: bool = False) -> Generation:
        loaded = self._loaded_for(model)
        adapter_path = str(model.adapter_path) if model.adapter_path is not None else None
        tokenizer = loaded.tokenizer
        if adapter_path is not None:
            # The adapter may bring its own tokenizer (a chat template trained in); it is known once loaded.
            with loaded.lock:
                self._activate(loaded, adapter_path)
                tokenizer = loaded.adapters[adapter_path].tokenizer or tokenizer
        prompt_ids = _render(tokenizer, request)
        max_tokens = _max_tokens(request, len(prompt_ids), loaded.context_window)
        vocab = loaded.model.config.get_text_config().vocab_size
        bad = [token for token in request.logit_bias if token >= vocab]
        if bad:
            raise InvalidRequestError(
                f"`logit_bias` names token id {bad[0]}, but this model's vocabulary has {vocab} tokens.",
                param="logit_bias",
            )
        cancelled = threading.Event()
        events = self._events(loaded, adapter_path, tokenizer, prompt_ids, request, max_tokens, cancelled)
        if background:
            events = _in_background(events, cancelled)
        return Generation(prompt_tokens=len(prompt_ids), events=events)

    def _events(
        self,
        loaded: _Loaded,
        adapter_path: str | None,
        tokenizer: Any,
        prompt_ids: list[int],
        request: ChatRequest,
        max_tokens: int,
        cancelled: threading.Event,
    ) -> Iterator[GenerationEvent]:
        import torch

        from openft.serving.sampling import LogitBiasLogitsProcessor, OpenAIPenaltyLogitsProcessor, sample

        processors = []
        if request.presence_penalty or request.frequency_penalty:
            processors.append(
                OpenAIPenaltyLogitsProcessor(request.presence_penalty, request.frequency_penalty)
            )
        if request.logit_bias:
            processors.append(LogitBiasLogitsProcessor(request.logit_bias))
        n = request.n
        decoders = [IncrementalDecoder(tokenizer) for _ in range(n)]
        # With tools, "<tool_call>" ends the content; the rest is held back and parsed into tool_calls.
        markers = (TOOL_CALL_OPEN,) if request.tools else ()
        matchers = [StopMatcher(request.stop + markers) for _ in range(n)]
        calls: list[list[str] | None] = [None] * n
        counts = [0] * n
        active = set(range(n))

        # Adapters load and switch outside inference mode: weights created inside it are inference tensors,
        # and peft's set_adapter later fails to flip their requires_grad.
        with loaded.lock, self._activate(loaded, adapter_path), torch.inference_mode():
            model = loaded.peft if loaded.peft is not None else loaded.model
            device = next(loaded.model.parameters()).device
            generator = torch.Generator(device=device)
            generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(63))
            # n copies of one prompt need no padding: the batch is rectangular.
            input_ids = torch.tensor([prompt_ids] * n, device=device)
            generated = torch.empty((n, 0), dtype=torch.long, device=device)
            out = model(input_ids=input_ids, use_cache=True)
            for step in range(max_tokens):
                if cancelled.is_set():
                    return
                scores = out.logits[:, -1, :].float()
                for processor in processors:
                    scores = processor(generated, scores)
                next_tokens = sample(
                    scores, temperature=request.temperature, top_p=request.top_p, generator=generator
                )
                generated = torch.cat([generated, next_tokens[:, None]], dim=1)
                for i, token in enumerate(next_tokens.tolist()):
                    if i not in active:
                        continue
                    counts[i] += 1
                    if token in loaded.eos_ids:
                        yield from _finish(i, decoders[i], matchers[i], calls[i], "stop", counts[i])
                        active.discard(i)
                        continue
                    text, hit_stop = matchers[i].push(decoders[i].push(token))
                    if calls[i] is not None:
                        calls[i].append(text)
                    elif text:
                        yield TextDelta(i, text)
                    if hit_stop and matchers[i].matched == TOOL_CALL_OPEN and calls[i] is None:
                        calls[i] = [TOOL_CALL_OPEN]
                        matchers[i] = StopMatcher(request.stop)
                    elif hit_stop:
                        yield from _finish(
                            i, decoders[i], StopMatcher(()), calls[i], "stop", counts[i], flush=False
                        )
                        active.discard(i)
                if not active or step == max_tokens - 1:
                    break
                out = model(input_ids=next_tokens[:, None], use_cache=True, **_cache_kwargs(out))
        for i in sorted(active):
            yield from _finish(i, decoders[i], matchers[i], calls[i], "length", counts[i])


def _cache_kwargs(out: Any) -> dict[str, Any]:
    # transformers 5.x renamed `past_key_values` to `cache` (output field and forward argument alike).
    if getattr(out, "cache", None) is not None:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def _finish(
    index: int,
    decoder: IncrementalDecoder,
    matcher: StopMatcher,
    call_text: list[str] | None,
    reason: str,
    count: int,
    *,
    flush: bool = True,
) -> Iterator[GenerationEvent]:
    text, hit_stop = matcher.push(decoder.flush()) if flush else ("", False)
    text = text if hit_stop else text + matcher.flush()
    if call_text is not None:
        call_text.append(text)
        tool_calls = parse_tool_calls("".join(call_text))
        if tool_calls:
            yield ChoiceFinished(index, "tool_calls", count, tool_calls)
            return
        text = "".join(call_text)  # not a well-formed call: it is content after all
    if text:
        yield TextDelta(index, text)
    yield ChoiceFinished(index, "stop" if hit_stop else reason, count)  # type: ignore[arg-type]


_END = object()


def _in_background(
    events: Iterator[GenerationEvent], cancelled: threading.Event
) -> Iterator[GenerationEvent]:
    """Sample in a thread of its own; the reader (an HTTP stream) may be slow or go away."""
    channel: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            for event in events:
                channel.put(event)
        except BaseException as exc:  # handed to the reader, which re-raises it in the request's thread
            channel.put(exc)
        finally:
            channel.put(_END)

    threading.Thread(target=run, name="openft-generate", daemon=True).start()

    def read() -> Iterator[GenerationEvent]:
        try:
            while (item := channel.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    return read()


def _render(tokenizer: Any, request: ChatRequest) -> list[int]:
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError(
            f"The model `{request.model}` has no chat template, so it cannot render chat messages.",
            param="model",
        )
    try:
        text = tokenizer.apply_chat_template(
            request.messages, tools=request.tools, add_generation_prompt=True, tokenize=False
        )
    except (TemplateError, ValueError, TypeError, KeyError) as exc:
        raise InvalidRequestError(
            f"The model `{request.model}`'s chat template cannot render these messages: {exc}",
            param="messages",
        ) from exc
    # The rendered text already holds the template's special tokens (BOS included); don't add them twice.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _max_tokens(request: ChatRequest, prompt_tokens: int, context_window: int) -> int:
    room = context_window - prompt_tokens
    if room < 1:
        raise InvalidRequestError(
            f"This model's maximum context length is {context_window} tokens, but the messages use "
            f"{prompt_tokens}. Shorten the messages.",
            param="messages",
        )
    if request.max_tokens is None:
        return room
    if request.max_tokens > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {context_window} tokens. The messages use {prompt_tokens} "
            f"and `{request.max_tokens_param}` asks for {request.max_tokens}; lower it to at most {room}.",
            param=request.max_tokens_param,
        )
    return request.max_tokens


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer_config.json").exists():
        return None
    return AutoTokenizer.from_pretrained(path)


def _context_window(model: Any, tokenizer: Any) -> int:
    window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if window:
        return int(window)
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30).
    return int(limit) if limit and limit < 10**7 else _DEFAULT_CONTEXT_WINDOW


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _TURN_END_TOKENS if token in vocab)
    return frozenset(ids)


def _adapter_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("adapter_model.*"))
