"""Parse and validate an OpenAI chat-completions request body into a ChatRequest, or raise a 400 naming the param."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openft.errors import InvalidRequestError

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 4
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# Every top-level field of OpenAI's CreateChatCompletionRequest. A field outside this set is a typo or a
# newer feature; OpenAI answers 400 "Unrecognized request argument" and so do we.
KNOWN_FIELDS = frozenset(
    {
        "messages", "model", "metadata", "temperature", "top_p", "user", "safety_identifier",
        "prompt_cache_key", "prompt_cache_retention", "service_tier", "modalities", "verbosity",
        "reasoning_effort", "max_completion_tokens", "frequency_penalty", "presence_penalty",
        "web_search_options", "top_logprobs", "response_format", "audio", "store", "moderation", "stream",
        "stop", "logit_bias", "logprobs", "max_tokens", "n", "prediction", "seed", "stream_options",
        "tools", "tool_choice", "parallel_tool_calls", "function_call", "functions",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ChatRequest:
    model: str
    # Messages normalised for a Hugging Face chat template: text content, "developer" rendered as "system".
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    # Which spelling the caller used, so a 400 about the limit names their param.
    max_tokens_param: str = "max_completion_tokens"
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequestError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    _reject_unsupported(body)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("`model` is required and must be a model name string.", param="model")

    max_tokens_param = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _integer(body, max_tokens_param, low=1)
    n = _integer(body, "n", low=1, high=MAX_CHOICES)
    seed = _integer(body, "seed")
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise InvalidRequestError("`top_p` must be greater than 0 and at most 1.", param="top_p")
    stream = _boolean(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise InvalidRequestError(
                "`stream_options` is only allowed when `stream` is true.", param="stream_options"
            )
        if not isinstance(stream_options, dict):
            raise InvalidRequestError("`stream_options` must be an object.", param="stream_options")
        include_usage = bool(stream_options.get("include_usage"))

    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        n=1 if n is None else n,
        stop=_stop(body.get("stop")),
        seed=seed,
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0) or 0.0,
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0) or 0.0,
        logit_bias=_logit_bias(body.get("logit_bias")),
        tools=_tools(body),
        stream=bool(stream),
        include_usage=include_usage,
    )


def _reject_unsupported(body: dict) -> None:
    def unsupported(param: str, what: str) -> InvalidRequestError:
        return InvalidRequestError(f"{what} is not supported by this server; remove `{param}`.", param=param)

    if body.get("logprobs"):
        raise unsupported("logprobs", "Returning log probabilities")
    if body.get("top_logprobs"):
        raise unsupported("top_logprobs", "Returning log probabilities")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise unsupported("response_format", "Structured output (json_object / json_schema)")
    if body.get("audio") is not None:
        raise unsupported("audio", "Audio output")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported("modalities", f"Output modalities {modalities!r} (only ['text'])")
    for param, what in (
        ("prediction", "Predicted outputs"),
        ("web_search_options", "Web search"),
        ("moderation", "Moderation"),
        ("reasoning_effort", "Reasoning effort"),
        ("verbosity", "Verbosity"),
        ("functions", "The deprecated `functions` (use `tools`)"),
        ("function_call", "The deprecated `function_call` (use `tools`)"),
    ):
        if body.get(param) is not None:
            raise unsupported(param, what)
    if body.get("store"):
        raise unsupported("store", "Storing completions")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice not in ("none", "auto"):
        raise unsupported("tool_choice", f"Forcing a tool call with tool_choice={tool_choice!r}")


def _integer(body: dict, key: str, *, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"`{key}` must be an integer, got {value!r}.", param=key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequestError(f"`{key}` must be {bounds}, got {value}.", param=key)
    return value


def _number(body: dict, key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"`{key}` must be a number, got {value!r}.", param=key)
    if not low <= value <= high:
        raise InvalidRequestError(f"`{key}` must be between {low:g} and {high:g}, got {value}.", param=key)
    return float(value)


def _boolean(body: dict, key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(f"`{key}` must be true or false, got {value!r}.", param=key)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError("`stop` must be a string or a list of strings.", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"`stop` has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES} are allowed.", param="stop"
        )
    if any(s == "" for s in stops):
        raise InvalidRequestError("`stop` sequences must not be empty strings.", param="stop")
    return tuple(stops)


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError("`logit_bias` must map token ids to numbers.", param="logit_bias")
    bias: dict[int, float] = {}
    for token, amount in value.items():
        if not str(token).isdigit() or isinstance(amount, bool) or not isinstance(amount, int | float):
            raise InvalidRequestError(
                f"`logit_bias` must map token ids to numbers, got {token!r}: {amount!r}.", param="logit_bias"
            )
        if not -100 <= amount <= 100:
            raise InvalidRequestError(
                f"`logit_bias` values must be between -100 and 100, got {amount} for token {token}.",
                param="logit_bias",
            )
        bias[int(token)] = float(amount)
    return bias


def _tools(body: dict) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise InvalidRequestError("`tools` must be a list of tool objects.", param="tools")
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            raise InvalidRequestError(
                'Only function tools are supported: {"type": "function", "function": {...}}.',
                param=f"tools[{i}]",
            )
    # "none" keeps the tools out of the prompt, so the model is not told it may call them.
    return None if body.get("tool_choice") == "none" else tools


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("`messages` must be a non-empty list of messages.", param="messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {role!r}; expected one of {', '.join(sorted(ROLES))}.",
                param=f"messages[{i}].role",
            )
        rendered: dict[str, Any] = {"role": "system" if role == "developer" else role}
        rendered["content"] = _content(message.get("content"), i, required=not message.get("tool_calls"))
        for key in ("name", "tool_call_id", "tool_calls"):
            if message.get(key) is not None:
                rendered[key] = message[key]
        messages.append(rendered)
    return messages


def _content(content: Any, i: int, *, required: bool) -> str:
    if content is None and not required:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequestError(
                    f"messages[{i}].content[{j}] is of type {kind!r}; only text parts are supported.",
                    param=f"messages[{i}].content[{j}]",
                )
            texts.append(part.get("text") or part.get("refusal") or "")
        return "\n".join(texts)
    raise InvalidRequestError(
        f"messages[{i}].content must be a string or a list of text parts.", param=f"messages[{i}].content"
    )
