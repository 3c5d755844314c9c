"""The inference engine: loads models on demand, shares each base model among its LoRA adapters, and generates.

Requests for one base model and all its adapters decode together in that model's batch loop
(``serving/batch.py``); a full fine-tuned model has a loop of its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.errors import ServerError
from openft.serving.compute import ComputeThread
from openft.serving.prompt import build_prompt
from openft.serving.protocols import Generation, ResolvedModel
from openft.serving.request import ChatRequest
from openft.serving.stream import EventStream

# Turn-end tokens of common chat templates: a model fine-tuned on a template stops on them even when its
# generation config names only the plain EOS token.
_TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_DEFAULT_CONTEXT_WINDOW = 2048
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class _Loaded:
    """One copy of a model's weights and the batch loop that runs it."""

    model: Any
    tokenizer: Any
    context_window: int
    loop: Any  # BatchLoop; typed loosely so this module imports torch only when a model loads

    @property
    def adapters(self) -> Any:
        return self.loop.model.adapters


class InferenceEngine:
    """Implements ``ChatEngine``. torch, transformers and peft are imported on the first load, not before.

    Base models stay loaded; adapters are evicted least-recently-used beyond ``max_adapters`` or
    ``max_adapter_bytes`` per base model (never one a running request uses); full fine-tuned models are
    evicted beyond ``max_full_models``. Each model decodes at most ``max_batch`` sequences at once and
    queues at most ``max_queue`` requests beyond them; one more is answered with a 429.
    """

    def __init__(
        self,
        *,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_full_models: int = 2,
        max_batch: int = 32,
        max_queue: int = 64,
        device: str | None = None,
        dtype: str = "auto",
        fast_decode: bool = True,
    ) -> None:
        if max_adapters < 1 or max_full_models < 1 or max_batch < 1 or max_queue < 0:
            raise ValueError("max_adapters, max_full_models and max_batch must be at least 1, max_queue 0.")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        self.max_adapters = max_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.max_full_models = max_full_models
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._device = device
        self._dtype = dtype
        # False: every model decodes through transformers' forward (the benchmark's comparison; a way out).
        self.fast_decode = fast_decode
        self._registry_lock = threading.Lock()
        # Every torch call of this engine (loading, prefill, decode) runs on this one thread.
        self._compute = ComputeThread()
        self._bases: dict[str, _Loaded] = {}
        self._full: OrderedDict[str, _Loaded] = OrderedDict()
        # An adapter may bring its own tokenizer (a chat template trained in); prompts render before the
        # batch loop loads the adapter's weights, so tokenizers are kept apart.
        self._adapter_tokenizers: OrderedDict[str, Any] = OrderedDict()

    # -- what is loaded -------------------------------------------------------------------------------

    def loaded_adapters(self, base_path: str) -> list[str]:
        """Adapter paths loaded on a base model, least recently used first."""
        loaded = self._bases.get(str(base_path))
        return loaded.adapters.paths() if loaded else []

    def loaded_full_models(self) -> list[str]:
        return list(self._full)

    def stats(self, model: ResolvedModel) -> Any:
        """The ``BatchStats`` of the batch that serves ``model`` (None before its first request)."""
        path = str(model.full_model_path) if model.full_model_path is not None else str(model.base_path)
        loaded = self._full.get(path) if model.full_model_path is not None else self._bases.get(path)
        return loaded.loop.stats() if loaded else None

    @contextlib.contextmanager
    def hold(self, model: ResolvedModel) -> Iterator[None]:
        """Queue the requests for ``model``'s batch without starting them until the block ends."""
        with self._loaded_for(model).loop.hold():
            yield

    def _loaded_for(self, model: ResolvedModel) -> _Loaded:
        with self._registry_lock:
            if model.full_model_path is not None:
                path = str(model.full_model_path)
                if path in self._full:
                    self._full.move_to_end(path)
                else:
                    # An evicted model's loop finishes the requests it holds, then its thread ends.
                    fallback = str(model.base_path)
                    self._full[path] = self._compute.call(
                        lambda: self._load(path, tokenizer_fallback=fallback)
                    )
                    while len(self._full) > self.max_full_models:
                        self._full.popitem(last=False)
                return self._full[path]
            path = str(model.base_path)
            if path not in self._bases:
                self._bases[path] = self._compute.call(lambda: self._load(path, with_adapters=True))
            return self._bases[path]

    def _load(
        self, path: str, tokenizer_fallback: str | None = None, *, with_adapters: bool = False
    ) -> _Loaded:
        import torch
        from transformers import AutoModelForCausalLM

        from openft.serving.adapters import AdapterSet
        from openft.serving.batch import BatchLoop, BatchModel
        from openft.serving.decoder import FastDecoder

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, _resolve_dtype(self._dtype, device))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        except OSError as exc:
            raise ServerError(f"Could not load the model weights at {path!r}: {exc}") from exc
        _check_full_attention(model, path)
        tokenizer = load_tokenizer(path) or (
            load_tokenizer(tokenizer_fallback) if tokenizer_fallback else None
        )
        if tokenizer is None:
            raise ServerError(f"No tokenizer found next to the model at {path!r}.")
        window = context_window(model.config, tokenizer)
        adapters = (
            AdapterSet(model, max_adapters=self.max_adapters, max_bytes=self.max_adapter_bytes)
            if with_adapters
            else None
        )
        batch_model = BatchModel(
            model=model,
            eos_ids=eos_ids(model.generation_config, tokenizer),
            context_window=window,
            vocab_size=model.config.get_text_config().vocab_size,
            adapters=adapters,
            # Built before any adapter wraps the model's projections.
            decoder=FastDecoder.build(model) if self.fast_decode else None,
        )
        loop = BatchLoop(
            batch_model, max_batch=self.max_batch, max_queue=self.max_queue, label=path, compute=self._compute
        )
        return _Loaded(model=model, tokenizer=tokenizer, context_window=window, loop=loop)

    def _tokenizer_for(self, loaded: _Loaded, adapter_path: str | None) -> Any:
        if adapter_path is None:
            return loaded.tokenizer
        with self._registry_lock:
            if adapter_path in self._adapter_tokenizers:
                self._adapter_tokenizers.move_to_end(adapter_path)
                return self._adapter_tokenizers[adapter_path] or loaded.tokenizer
        tokenizer = load_tokenizer(adapter_path)
        with self._registry_lock:
            self._adapter_tokenizers[adapter_path] = tokenizer
            while len(self._adapter_tokenizers) > 4 * self.max_adapters:
                self._adapter_tokenizers.popitem(last=False)
        return tokenizer or loaded.tokenizer

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, model: ResolvedModel, request: ChatRequest) -> Generation:
        """Render and check the prompt (a 400 before anything is queued), then queue it (a 429 when full)."""
        from openft.serving.batch import Submission

        loaded = self._loaded_for(model)
        adapter_path = str(model.adapter_path) if model.adapter_path is not None else None
        tokenizer = self._tokenizer_for(loaded, adapter_path)
        prompt = build_prompt(
            tokenizer,
            request,
            context_window=loaded.context_window,
            vocab_size=loaded.loop.model.vocab_size,
        )
        stream = EventStream()
        loaded.loop.submit(Submission(request, prompt, adapter_path, tokenizer, stream))
        return Generation(prompt_tokens=len(prompt.token_ids), events=stream)


def _resolve_dtype(setting: str, device: str) -> str:
    """``auto``: bfloat16 where it is native (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere, where
    bfloat16 is emulated and several times slower (the same rule training's autocast follows)."""
    if setting != "auto":
        return setting
    if device.startswith("cuda"):
        return "bfloat16"
    from openft.training.hardware import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def _check_full_attention(model: Any, path: str) -> None:
    # The batch's cache keeps every position of every layer; sliding-window or linear-attention layers
    # would need a cache of their own.
    layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        raise ServerError(
            f"The model at {path!r} has {', '.join(other)} layers; openft's engine serves models whose layers "
            "all use full attention (vLLM serves such models: OPENFT_SERVING_ENGINE=vllm on a GPU machine)."
        )


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved in ``path``, or None if there is none."""
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer_config.json").exists():
        return None
    return AutoTokenizer.from_pretrained(path)


def context_window(config: Any, tokenizer: Any) -> int:
    """A model's context window: its config's position limit, else its tokenizer's."""
    window = getattr(config.get_text_config(), "max_position_embeddings", None)
    if window:
        return int(window)
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30).
    return int(limit) if limit and limit < 10**7 else _DEFAULT_CONTEXT_WINDOW


def eos_ids(generation_config: Any, tokenizer: Any) -> frozenset[int]:
    """The tokens that end a turn: the generation config's, the tokenizer's, and common templates' turn ends."""
    ids: set[int] = set()
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _TURN_END_TOKENS if token in vocab)
    return frozenset(ids)
