"""A chat request's prompt: rendered by the model's chat template, counted, and checked against its context window.

Every engine goes through here before it queues anything, so a bad request is a 400 before any work starts,
and the same prompt gives the same ``prompt_tokens`` whichever engine serves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openft.errors import InvalidRequestError
from openft.serving.request import ChatRequest


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    # The completion tokens this request may use: its max_tokens, or the rest of the context window.
    max_tokens: int


def build_prompt(tokenizer: Any, request: ChatRequest, *, context_window: int, vocab_size: int) -> Prompt:
    _check_logit_bias(request, vocab_size)
    _check_size_before_tokenizing(tokenizer, request, context_window)
    token_ids = _render(tokenizer, request)
    return Prompt(token_ids, _max_tokens(request, len(token_ids), context_window))


def max_token_chars(tokenizer: Any) -> int:
    """The most characters of text any one token can stand for (its vocabulary's longest entry).

    Byte-level vocabularies spell one character per byte and sentencepiece ones one per character, so the
    entry's length bounds the decoded text in both. A normalizer that composes characters (NFC, NFKC) could
    shrink the text before tokenizing: then allow four times as much.
    """
    cached = getattr(tokenizer, "_openft_max_token_chars", None)
    if cached is None:
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        cached = longest if backend is not None and backend.normalizer is None else 4 * longest
        tokenizer._openft_max_token_chars = cached
    return cached


def _check_size_before_tokenizing(tokenizer: Any, request: ChatRequest, context_window: int) -> None:
    """Refuse a prompt that cannot fit before paying to tokenize it (a 50 MB message took minutes)."""
    chars = sum(len(m.get("content") or "") for m in request.messages)
    limit = context_window * max_token_chars(tokenizer)
    if chars > limit:
        raise InvalidRequestError(
            f"This model's maximum context length is {context_window} tokens, but the messages hold {chars} "
            f"characters, more than {context_window} tokens can spell (at most {limit} characters). "
            "Shorten the messages.",
            param="messages",
        )


def _check_logit_bias(request: ChatRequest, vocab_size: int) -> None:
    bad = [token for token in request.logit_bias if token >= vocab_size]
    if bad:
        raise InvalidRequestError(
            f"`logit_bias` names token id {bad[0]}, but this model's vocabulary has {vocab_size} tokens.",
            param="logit_bias",
        )


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
        return room  # as at OpenAI: without a limit, the answer may fill the context window
    if request.max_tokens > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {context_window} tokens. The messages use {prompt_tokens} "
            f"and `{request.max_tokens_param}` asks for {request.max_tokens}; lower it to at most {room}.",
            param=request.max_tokens_param,
        )
    return request.max_tokens
