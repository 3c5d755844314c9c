"""Exact token counts for many examples at once: the trainer's tokens, one render per sequence, batched encoding.

The trainer (``data.tokenize_example``) renders a conversation once in full and once per prefix
around each trained assistant turn, to find the loss mask, then tokenizes the full rendering. The
count is the length of that last tokenization alone, so ``TemplateTokenCounter`` renders each
sequence once, with the same template and the same normalisation, and encodes a whole batch of
renderings in one call of the fast (Rust) tokenizer, which uses every core. The prefix renderings
only matter for a template that cannot be masked (``TemplateError``) or an example whose trained
turns render to nothing; the trainer's own path runs on the first example of every conversation
shape (``_shape``) and on every ``VERIFY_EVERY``-th example, so such a template is still refused at
validation, on the line where it shows, and the fast count is checked against the trainer's as it
goes. A template whose masking fails only on some contents of an already seen shape is found by
the sample or, at the latest, when training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from openft.training.data import Method, Tokenizing, normalise_message, tokenize_example
from openft.training.labels import NothingToTrainError, render

log = logging.getLogger(__name__)

VERIFY_EVERY = 100
# Distinct conversation shapes remembered; past this, only the sampled examples are verified.
MAX_SHAPES = 10_000


class TemplateTokenCounter:
    """A ``openft.datasets.TokenCounter`` for one tokenizer and method; ``count_many`` returns each
    example's count, or why the chat template cannot render or mask it."""

    def __init__(self, tokenizer: Any, method: Method) -> None:
        self.tokenizer = tokenizer
        self.method = method
        self.tok = Tokenizing(tokenizer)
        self._backend = _plain_backend(tokenizer)
        self._direct = _DirectRender.of(tokenizer)
        self._shapes: set[tuple] = set()
        self._n_seen = 0

    def count_many(self, examples: Sequence[dict[str, Any]]) -> list[int | str]:
        plain: list[str] = []  # encoded without special tokens, as rendered chats are
        with_special: list[str] = []  # completion prompts, encoded as the trainer does: with them
        plans: list[_Plan | str] = []
        direct = self._direct
        for example in examples:
            try:
                plan = self._plan(example, plain, with_special)
            except Exception as exc:  # the template's own raise_exception, a TemplateError, ...
                plans.append(_reason(exc))
                continue
            plans.append(plan)
        if direct is not None and self._direct is None:
            return self._again(examples)  # rendered directly before the difference showed
        plain_counts = self._lengths(plain, add_special_tokens=False)
        special_counts = self._lengths(with_special, add_special_tokens=True)
        results: list[int | str] = []
        for plan in plans:
            if isinstance(plan, str):
                results.append(plan)
                continue
            count = plan.extra + sum(plain_counts[i] for i in plan.plain)
            count += sum(special_counts[i] for i in plan.special)
            if plan.verified is not None and plan.verified != count:
                return self._without_fast_path(examples, plan.verified, count)
            results.append(count)
        return results

    def _plan(self, example: dict[str, Any], plain: list[str], with_special: list[str]) -> _Plan:
        self._n_seen += 1
        verified = None
        shape = _shape(example)
        if shape not in self._shapes or self._n_seen % VERIFY_EVERY == 1:
            # The trainer's own path: masks every trained turn, raises what training would.
            verified = sum(len(s) for s in tokenize_example(self.tok, example, self.method))
            if len(self._shapes) < MAX_SHAPES:
                self._shapes.add(shape)
        if verified is not None and self._direct is not None and not self._direct_agrees(example):
            log.warning(
                "rendering the chat template directly differs from apply_chat_template; using the latter"
            )
            self._direct = None
        if self.method == "reinforcement":
            # A prompt rendered with the generation prompt (build_prompt): the trainer's own path for
            # every example; reinforcement files are prompts only, and small beside chat files.
            if verified is None:
                verified = sum(len(s) for s in tokenize_example(self.tok, example, self.method))
            return _Plan((), (), verified, None)
        if "prompt" in example:
            with_special.append(example["prompt"])
            plain.append(example["completion"])
            eos = 1 if self.tokenizer.eos_token_id is not None else 0
            return _Plan((len(plain) - 1,), (len(with_special) - 1,), eos, verified)
        if self.method == "dpo":
            inp = example["input"]
            tools = inp.get("tools")
            texts = [
                self._render(inp["messages"] + [example["preferred_output"][-1]], tools),
                self._render(inp["messages"] + [example["non_preferred_output"][-1]], tools),
            ]
        else:
            texts = [self._render(example["messages"], example.get("tools"))]
        plain.extend(texts)
        return _Plan(tuple(range(len(plain) - len(texts), len(plain))), (), 0, verified)

    def _render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, direct: bool = True
    ) -> str:
        # What assistant_only_labels tokenizes: the same messages, tools and template choice.
        normalised = [normalise_message(m) for m in messages]
        template = self.tok.template_for(tools)
        if direct and self._direct is not None:
            return self._direct(normalised, tools or None, template)
        return render(self.tokenizer, normalised, tools, add_generation_prompt=False, chat_template=template)

    def _direct_agrees(self, example: dict[str, Any]) -> bool:
        if "messages" in example:
            conversations = [(example["messages"], example.get("tools"))]
        elif "input" in example:
            inp = example["input"]
            conversations = [(inp["messages"] + example["preferred_output"], inp.get("tools"))]
        else:
            return True
        return all(self._render(m, t) == self._render(m, t, direct=False) for m, t in conversations)

    def _lengths(self, texts: list[str], *, add_special_tokens: bool) -> list[int]:
        if not texts:
            return []
        if self._backend is not None:
            # No offsets, no attention masks, no Python lists of ids: only the lengths are wanted.
            return [
                len(e) for e in self._backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
            ]
        encoded = self.tokenizer(
            texts,
            add_special_tokens=add_special_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def _without_fast_path(
        self, examples: Sequence[dict[str, Any]], trainer: int, fast: int
    ) -> list[int | str]:
        if self._backend is None:
            raise RuntimeError(
                f"Token count {fast} differs from the trainer's {trainer} for the same example; this is a bug."
            )
        log.warning(
            "the tokenizer's direct batch encoding counted %d tokens where the trainer counts %d; "
            "counting through the tokenizer's own call from now on",
            fast,
            trainer,
        )
        self._backend = None
        return self._again(examples)

    def _again(self, examples: Sequence[dict[str, Any]]) -> list[int | str]:
        self._n_seen -= len(examples)
        return self.count_many(examples)


class _DirectRender:
    """``apply_chat_template(..., tokenize=False)`` without its per-call deep copies of the input.

    It copies every message and tool to strip rich objects (images, tensors) before the sandboxed
    template sees them, which costs as much as the rendering. Validated examples are plain JSON
    already, so the template compiled by transformers itself gets them as they are, with the same
    variables (the special tokens, ``tools``, no ``documents``) and None-valued keys dropped as
    apply_chat_template drops them. Verified examples compare both renderings.
    """

    def __init__(self, tokenizer: Any, compile_template: Any) -> None:
        self.tokenizer = tokenizer
        self.compile_template = compile_template
        self.variables = dict(tokenizer.special_tokens_map)
        self.templates: dict[tuple[str | None, bool], Any] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> _DirectRender | None:
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:  # a transformers without it: apply_chat_template all the way
            return None
        return cls(tokenizer, _compile_jinja_template)

    def __call__(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template: str | None
    ) -> str:
        key = (template, tools is not None)
        compiled = self.templates.get(key)
        if compiled is None:
            compiled = self.compile_template(self.tokenizer.get_chat_template(template, tools))
            self.templates[key] = compiled
        clean = [{k: v for k, v in m.items() if v is not None and k != "weight"} for m in messages]
        return compiled.render(
            messages=clean, tools=tools, documents=None, add_generation_prompt=False, **self.variables
        )


class _Plan:
    """Where one example's texts sit in the batch, what the trainer adds, and its verified count."""

    __slots__ = ("plain", "special", "extra", "verified")

    def __init__(self, plain: tuple[int, ...], special: tuple[int, ...], extra: int, verified: int | None):
        self.plain, self.special, self.extra, self.verified = plain, special, extra, verified


def _shape(example: dict[str, Any]) -> tuple:
    """What a template's control flow depends on: the first and last message and each pair of
    neighbours, by role, tool calls, empty content and trained or not. Counting pairs rather than
    whole sequences keeps long conversations of every length from each being a new shape."""
    if "prompt" in example:
        return ("completion",)
    if "messages" in example:
        messages, tools = example["messages"], example.get("tools")
    else:
        inp = example["input"]
        tools = inp.get("tools")
        messages = [*inp["messages"], *example["preferred_output"]]
    kinds = [
        (m["role"], bool(m.get("tool_calls")), bool(m.get("content")), m.get("weight", 1) == 0)
        for m in messages
    ]
    return (bool(tools), kinds[0], kinds[-1], frozenset(zip(kinds, kinds[1:], strict=False)))


def _plain_backend(tokenizer: Any) -> Any | None:
    """The Rust tokenizer behind a fast one, if encoding with it directly gives what calling the
    tokenizer gives: no truncation or padding configured, special tokens handled the same way."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if bool(getattr(backend, "encode_special_tokens", False)) != bool(
        getattr(tokenizer, "split_special_tokens", False)
    ):
        return None
    return backend


def _reason(exc: Exception) -> str:
    detail = str(exc).strip() or type(exc).__name__
    if isinstance(exc, NothingToTrainError):
        return f"the base model would train on nothing in this example: {detail}"
    return f"the base model's chat template cannot be used for this example: {detail}"
