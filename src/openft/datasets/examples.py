"""Detects an example's format (chat, preference, completion) and checks and normalises one example.

Normalised shapes, which the trainer can rely on:

- chat: ``{"messages": [...], "tools": [...], "parallel_tool_calls": bool}``; the deprecated
  ``functions`` list becomes ``tools``.
- preference: ``{"input": {"messages", "tools", "parallel_tool_calls"}, "preferred_output": [msg],
  "non_preferred_output": [msg]}``, whichever of OpenAI's two spellings the file used.
- completion: ``{"prompt": str, "completion": str}``.
"""

from __future__ import annotations

from typing import Any, Literal

from openft.datasets import problems as p
from openft.datasets.messages import check_functions, check_message, check_messages, check_tools
from openft.datasets.problems import ExampleFindings, json_type
from openft.datasets.reinforcement import check_reinforcement

Format = Literal["chat", "preference", "completion", "reinforcement"]
Method = Literal["supervised", "dpo", "reinforcement"]

# OpenAI names the chat format "fine-tune-chat"; the other two names follow the same pattern.
FORMAT_NAMES: dict[str, str] = {
    "chat": "fine-tune-chat",
    "preference": "fine-tune-preference",
    "completion": "fine-tune-completion",
    "reinforcement": "fine-tune-reinforcement",
}
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "supervised": ("chat", "completion"),
    "dpo": ("preference",),
    "reinforcement": ("reinforcement",),
}
FORMAT_METHOD: dict[str, str] = {
    "chat": "supervised",
    "completion": "supervised",
    "preference": "dpo",
    "reinforcement": "reinforcement",
}

_OUTPUT_SPELLINGS = (
    ("preferred_output", "non_preferred_output"),
    ("preferred_completion", "non_preferred_completion"),
)
_OUTPUT_KEYS = frozenset(key for pair in _OUTPUT_SPELLINGS for key in pair)
_CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})


def detect_format(example: dict, method: str | None = None) -> Format | None:
    if "messages" in example:
        # The same key starts a chat example and an RFT prompt; the job's method tells them apart.
        return "reinforcement" if method == "reinforcement" else "chat"
    if "input" in example or not _OUTPUT_KEYS.isdisjoint(example):
        return "preference"
    if "prompt" in example or "completion" in example:
        return "completion"
    return None


def describe_unknown_format(example: dict) -> str:
    keys = ", ".join(repr(k) for k in list(example)[:8]) or "none"
    return (
        "the example is not in a known format: a chat example has 'messages', a preference (DPO) example has 'input', "
        "'preferred_output' and 'non_preferred_output', and a completion example has 'prompt' and "
        f"'completion'; this one has keys {keys}"
    )


def mismatch_message(file_format: str, method: str) -> str:
    """OpenAI's wording for a file whose format does not fit the job's method, plus what to do."""
    expected = FORMAT_METHOD[file_format]
    wanted = " or ".join(FORMAT_NAMES[f] for f in METHOD_FORMATS[method])
    return (
        f"Input file is in the {FORMAT_NAMES[file_format]} format, but the specified fine-tuning job is not "
        f"using '{expected}' as the training method (provided method={method}). Either create the job with "
        f"method type '{expected}', or upload a file in the {wanted} format."
    )


def check_example(example: dict, fmt: Format, found: ExampleFindings) -> dict | None:
    """Check one example already detected as ``fmt``; return it normalised, or None if invalid."""
    if fmt == "chat":
        return _check_chat(example, found)
    if fmt == "preference":
        return _check_preference(example, found)
    if fmt == "reinforcement":
        return check_reinforcement(example, found)
    return _check_completion(example, found)


def _check_chat(example: dict, found: ExampleFindings) -> dict | None:
    before = len(found.errors)
    _warn_unknown_keys(example, _CHAT_KEYS, found)
    messages = check_messages(example["messages"], found, path="messages", allow_weight=True)
    tools = _check_tool_fields(example, found, path="")
    if messages is not None:
        assistants = [m for m in messages if m["role"] == "assistant"]
        if not assistants:
            found.error(
                "the example has no assistant message, so there is nothing to learn; add the assistant's reply",
                field="messages",
            )
        elif all(m["weight"] == 0 for m in assistants):
            found.error(
                "every assistant message has weight 0, so there is nothing to train; give at least one "
                "assistant message weight 1 (or remove its weight)",
                field="messages",
            )
        _warn_missing_roles(messages, found)
    if len(found.errors) != before or messages is None or tools is None:
        return None
    return {"messages": messages, **tools}


def _check_preference(example: dict, found: ExampleFindings) -> dict | None:
    before = len(found.errors)
    spellings = [pair for pair in _OUTPUT_SPELLINGS if not set(pair).isdisjoint(example)]
    if len(spellings) > 1:
        found.error(
            "mixes 'preferred_output'/'non_preferred_output' with 'preferred_completion'/"
            "'non_preferred_completion'; use one spelling for both outputs",
            field="preferred_output",
        )
        return None
    preferred_key, non_preferred_key = spellings[0] if spellings else _OUTPUT_SPELLINGS[0]
    _warn_unknown_keys(example, {"input", preferred_key, non_preferred_key}, found)

    inp = example.get("input")
    messages = tools = None
    if not isinstance(inp, dict):
        found.error(
            f"'input' must be an object like {{\"messages\": [...]}}, got {json_type(inp)}"
            if "input" in example
            else "the example has no 'input'; put the conversation so far in input.messages",
            field="input",
        )
    else:
        for extra in sorted(set(inp) - {"messages", "tools", "parallel_tool_calls"}):
            found.error(
                f"unknown key {extra!r} in 'input'; allowed keys are messages, parallel_tool_calls, tools",
                field=f"input.{extra}",
            )
        messages = check_messages(inp.get("messages"), found, path="input.messages", allow_weight=False)
        tools = _check_tool_fields(inp, found, path="input.")
    outputs = [_check_output(example, key, found) for key in (preferred_key, non_preferred_key)]
    if len(found.errors) != before or messages is None or tools is None or None in outputs:
        return None
    if outputs[0] == outputs[1]:
        found.warn(
            "the preferred and non-preferred outputs are identical, so the example teaches nothing",
            field="preferred_output",
        )
    return {
        "input": {"messages": messages, **tools},
        "preferred_output": outputs[0],
        "non_preferred_output": outputs[1],
    }


def _check_output(example: dict, key: str, found: ExampleFindings) -> list[dict] | None:
    if key not in example:
        found.error(f"the example has no '{key}'; give it a list with one assistant message", field=key)
        return None
    raw = example[key]
    if not isinstance(raw, list) or len(raw) != 1:
        got = f"{len(raw)} messages" if isinstance(raw, list) else json_type(raw)
        found.error(f"must be a list of exactly one assistant message, got {got}", field=key)
        return None
    message = check_message(raw[0], found, index=None, path=f"{key}[0]", allow_weight=False, call_ids=set())
    if message is None:
        return None
    if message["role"] != "assistant":
        found.error(
            f"the message must have role 'assistant', got {message['role']!r}", field=f"{key}[0].role"
        )
        return None
    return [message]


def _check_completion(example: dict, found: ExampleFindings) -> dict | None:
    before = len(found.errors)
    _warn_unknown_keys(example, {"prompt", "completion"}, found)
    for key in ("prompt", "completion"):
        if key not in example:
            found.error(
                f"the example has no '{key}'; a completion example needs 'prompt' and 'completion'", field=key
            )
        elif not isinstance(example[key], str):
            found.error(f"'{key}' must be a string, got {json_type(example[key])}", field=key)
    if len(found.errors) == before and not example["completion"]:
        found.error(
            "'completion' is empty, so there is nothing to learn; give the expected output",
            field="completion",
        )
    if len(found.errors) != before:
        return None
    return {"prompt": example["prompt"], "completion": example["completion"]}


def _check_tool_fields(obj: dict, found: ExampleFindings, *, path: str) -> dict | None:
    """Check ``tools``/``functions``/``parallel_tool_calls``; return them normalised (defaults filled)."""
    before = len(found.errors)
    tools: list[dict] | None = []
    if "tools" in obj and obj["tools"] is not None:
        tools = check_tools(obj["tools"], found, path=f"{path}tools")
    if "functions" in obj and not path:
        functions = check_functions(obj["functions"], found)
        if tools is not None and functions is not None:
            tools = tools + functions
    parallel = obj.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        found.error(
            f"'parallel_tool_calls' must be true or false, got {json_type(parallel)}",
            field=f"{path}parallel_tool_calls",
        )
    if len(found.errors) != before or tools is None:
        return None
    return {"tools": tools, "parallel_tool_calls": parallel}


def _warn_unknown_keys(example: dict, known: set[str] | frozenset[str], found: ExampleFindings) -> None:
    for key in example:
        if key not in known:
            found.warn(
                f"unknown top-level key {key!r} is ignored (allowed: {', '.join(sorted(known))})",
                field=key,
                kind=p.UNKNOWN_KEY,
            )


def _warn_missing_roles(messages: list[dict[str, Any]], found: ExampleFindings) -> None:
    roles = {m["role"] for m in messages}
    if not roles & {"system", "developer"}:
        found.warn("the example has no system message", kind=p.MISSING_ROLE)
    if "user" not in roles:
        found.warn("the example has no user message", kind=p.MISSING_ROLE)
