"""Checks chat messages, tool calls and tool definitions against OpenAI's schema, and normalises them.

A normalised message always has ``role`` and ``content`` (a string, or None only for an assistant
message that carries ``tool_calls``/``function_call``). Text-part lists are joined into one string;
an assistant ``refusal`` without content becomes the content. Assistant messages of supervised
examples always carry ``weight`` (0 or 1, default 1); no other message does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from openft.datasets.problems import ExampleFindings, json_type

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLE_LIST = ", ".join(ROLES)
_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "function_call", "weight", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_TEXT_PARTS: dict[str, frozenset[str]] = {
    "assistant": frozenset({"text", "refusal"}),
}
_UNSUPPORTED_PARTS = {
    "image_url": "images are not supported by this base model; remove the image part or describe it in text",
    "input_audio": "audio input is not supported by this base model; transcribe it to a text part",
    "file": "file inputs are not supported by this base model; paste the file's text into a text part",
}
_UNSUPPORTED_KEYS = {
    "audio": "audio replies are not supported by this base model; remove 'audio' and give the reply as content",
}
# OpenAI's rule for function names (ChatCompletionTool).
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def check_messages(
    raw: Any, found: ExampleFindings, *, path: str, allow_weight: bool, index_messages: bool = True
) -> list[dict] | None:
    """Check a non-empty list of messages; return them normalised, or None if any is invalid.

    ``index_messages`` numbers problems by message (1-based); otherwise they are located by path.
    """
    if not isinstance(raw, list) or not raw:
        got = "an empty array" if raw == [] else json_type(raw)
        found.error(f"'{path}' must be a non-empty array of messages, got {got}", field=path)
        return None
    before = len(found.errors)
    out: list[dict] = []
    call_ids: set[str] = set()
    for i, message in enumerate(raw):
        index = i + 1 if index_messages else None
        normalised = check_message(
            message, found, index=index, path=f"{path}[{i}]", allow_weight=allow_weight, call_ids=call_ids
        )
        if normalised is not None:
            out.append(normalised)
    return out if len(found.errors) == before else None


def check_message(
    raw: Any,
    found: ExampleFindings,
    *,
    index: int | None,
    path: str,
    allow_weight: bool,
    call_ids: set[str],
) -> dict | None:
    """Check one message; ``call_ids`` gathers tool-call ids so later tool messages can be matched."""

    def error(message: str, key: str | None = None) -> None:
        found.error(message, message_index=index, field=f"{path}.{key}" if key else path)

    if not isinstance(raw, dict):
        error(
            f'a message must be a JSON object like {{"role": "user", "content": "..."}}, got {json_type(raw)}'
        )
        return None
    before = len(found.errors)
    role = raw.get("role")
    if "role" not in raw:
        error(f"the message has no 'role'; set it to one of {_ROLE_LIST}", "role")
        return None
    if role not in _KEYS:
        error(f"unknown role {role!r}; use one of {_ROLE_LIST}", "role")
        return None
    for key in raw:
        if key in _KEYS[role]:
            continue
        if key == "weight":
            error(
                f"'weight' is only allowed on assistant messages, not on {_a(role)} message; remove it", key
            )
        elif key in _UNSUPPORTED_KEYS:
            error(_UNSUPPORTED_KEYS[key], key)
        else:
            allowed = ", ".join(sorted(_KEYS[role]))
            error(f"unknown key {key!r} in {_a(role)} message; allowed keys are {allowed}", key)
    out: dict[str, Any] = {"role": role}

    content = _check_content(raw, role, error)
    if "name" in raw:
        if isinstance(raw["name"], str) and raw["name"]:
            out["name"] = raw["name"]
        else:
            error(f"'name' must be a non-empty string, got {json_type(raw['name'])}", "name")
    elif role == "function":
        error("a function message needs the 'name' of the function it answers", "name")

    if role == "assistant":
        if "tool_calls" in raw:
            calls = _check_tool_calls(raw["tool_calls"], error, f"{path}.tool_calls")
            if calls is not None:
                out["tool_calls"] = calls
                call_ids.update(call["id"] for call in calls)
        if "function_call" in raw:
            call = _check_function(raw["function_call"], error, "function_call", arguments=True)
            if call is not None:
                out["function_call"] = call
        if content is None and isinstance(raw.get("refusal"), str):
            content = raw["refusal"]
        elif "refusal" in raw and not isinstance(raw["refusal"], str | None):
            error(f"'refusal' must be a string, got {json_type(raw['refusal'])}", "refusal")
        if content is None and "tool_calls" not in raw and "function_call" not in raw:
            if "content" not in raw:
                error(
                    "the assistant message has no 'content'; give it the reply the model should learn",
                    "content",
                )
            else:
                error(
                    "the assistant message has null content and no 'tool_calls'; give it a reply", "content"
                )
        if allow_weight:
            out["weight"] = _check_weight(raw, error)
        elif "weight" in raw:
            error("'weight' is only used in supervised chat examples; remove it here", "weight")
    if role == "tool":
        call_id = raw.get("tool_call_id")
        if "tool_call_id" not in raw:
            error(
                "a tool message needs 'tool_call_id': the id of the assistant tool call it answers",
                "tool_call_id",
            )
        elif not isinstance(call_id, str) or not call_id:
            error(f"'tool_call_id' must be a non-empty string, got {json_type(call_id)}", "tool_call_id")
        elif call_id not in call_ids:
            error(
                f"tool_call_id {call_id!r} does not match the id of any tool call in an earlier assistant "
                "message; use the id from the assistant's tool_calls",
                "tool_call_id",
            )
        else:
            out["tool_call_id"] = call_id
    out["content"] = content
    return out if len(found.errors) == before else None


def _a(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"


def _check_content(raw: dict, role: str, error) -> str | None:
    if "content" not in raw:
        if role not in ("assistant", "function"):
            error(f"the {role} message has no 'content'; add its text as \"content\"", "content")
        return None
    content = raw["content"]
    if content is None:
        if role not in ("assistant", "function"):
            error(f"the {role} message's content is null; give it a string", "content")
        return None
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or (role == "function"):
        error(f"'content' must be a string or an array of text parts, got {json_type(content)}", "content")
        return None
    if not content:
        error("'content' is an empty array; give it a string or at least one text part", "content")
        return None
    allowed = _TEXT_PARTS.get(role, frozenset({"text"}))
    texts: list[str] = []
    for j, part in enumerate(content):
        key = f"content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict):
            error(f'content part {j + 1} must be an object like {{"type": "text", "text": "..."}}', key)
        elif kind in _UNSUPPORTED_PARTS:
            error(_UNSUPPORTED_PARTS[kind], key)
        elif kind not in allowed:
            error(
                f"content part {j + 1} has type {kind!r}; {_a(role)} message accepts {', '.join(sorted(allowed))}",
                key,
            )
        elif not isinstance(part.get(kind), str):
            error(f"content part {j + 1} of type {kind!r} needs a string {kind!r}", key)
        else:
            texts.append(part[kind])
    return "".join(texts) if len(texts) == len(content) else None


def _check_weight(raw: dict, error) -> int:
    if "weight" not in raw:
        return 1
    weight = raw["weight"]
    # bool is an int in Python; JSON true/false is not a weight.
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
        error(
            f"weight must be 0 or 1, got {json.dumps(weight)}; use 0 to skip this message in training "
            "or 1 (the default) to train on it",
            "weight",
        )
        return 1
    return int(weight)


def _check_tool_calls(raw: Any, error, path: str) -> list[dict] | None:
    if not isinstance(raw, list) or not raw:
        error(f"'tool_calls' must be a non-empty array, got {json_type(raw)}", "tool_calls")
        return None
    out = []
    for j, call in enumerate(raw):
        key = f"tool_calls[{j}]"
        if not isinstance(call, dict):
            error(f"tool call {j + 1} must be an object, got {json_type(call)}", key)
            continue
        for extra in sorted(set(call) - {"id", "type", "function"}):
            error(f"unknown key {extra!r} in tool call {j + 1}; allowed keys are function, id, type", key)
        if not isinstance(call.get("id"), str) or not call.get("id"):
            error(
                f"tool call {j + 1} needs a non-empty string 'id' (tool messages answer it by this id)", key
            )
        # A missing type is accepted: "function" is the only kind there is.
        if call.get("type", "function") != "function":
            error(
                f"tool call {j + 1} has type {call.get('type')!r}; the only supported type is 'function'", key
            )
        function = _check_function(call.get("function"), error, f"{key}.function", arguments=True, n=j + 1)
        if function is not None and isinstance(call.get("id"), str):
            out.append({"id": call["id"], "type": "function", "function": function})
    return out if len(out) == len(raw) else None


def _check_function(raw: Any, error, key: str, *, arguments: bool, n: int | None = None) -> dict | None:
    """Check a ``{name, arguments}`` call (``arguments=True``) or a ``{name, description?, parameters?}``
    definition."""
    what = f"tool call {n}'s function" if n else f"'{key}'"
    if not isinstance(raw, dict):
        error(f"{what} must be an object with a 'name', got {json_type(raw)}", key)
        return None
    allowed = {"name", "arguments"} if arguments else {"name", "description", "parameters", "strict"}
    ok = True
    for extra in sorted(set(raw) - allowed):
        error(
            f"unknown key {extra!r} in {what}; allowed keys are {', '.join(sorted(allowed))}",
            f"{key}.{extra}",
        )
        ok = False
    name = raw.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        error(
            f"{what} needs a 'name' of 1-64 letters, digits, '_' or '-', got {json.dumps(name)}",
            f"{key}.name",
        )
        ok = False
    if arguments:
        args = raw.get("arguments")
        if not isinstance(args, str):
            error(
                f"{what} 'arguments' must be a string holding JSON (json.dumps the object), got {json_type(args)}",
                f"{key}.arguments",
            )
            return None
        try:
            json.loads(args)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            error(f"{what} 'arguments' is not valid JSON ({detail}): {args[:80]!r}", f"{key}.arguments")
            return None
        return {"name": name, "arguments": args} if ok else None
    if "description" in raw and not isinstance(raw["description"], str):
        error(f"'description' of {what} must be a string", f"{key}.description")
        ok = False
    if "parameters" in raw and not isinstance(raw["parameters"], dict):
        error(f"'parameters' of {what} must be a JSON Schema object", f"{key}.parameters")
        ok = False
    if "strict" in raw and not isinstance(raw["strict"], bool | None):
        error(f"'strict' of {what} must be true or false", f"{key}.strict")
        ok = False
    return dict(raw) if ok else None


def check_tools(raw: Any, found: ExampleFindings, *, path: str) -> list[dict] | None:
    """Check ``tools``: ``[{"type": "function", "function": {name, description?, parameters?}}]``."""

    def error(message: str, key: str) -> None:
        found.error(message, field=key)

    if not isinstance(raw, list):
        error(f"'tools' must be an array of tool definitions, got {json_type(raw)}", path)
        return None
    out = []
    for j, tool in enumerate(raw):
        key = f"{path}[{j}]"
        if not isinstance(tool, dict):
            error(f'tool {j + 1} must be an object like {{"type": "function", "function": {{...}}}}', key)
            continue
        for extra in sorted(set(tool) - {"type", "function"}):
            error(f"unknown key {extra!r} in tool {j + 1}; allowed keys are function, type", key)
        if tool.get("type", "function") != "function":
            error(f"tool {j + 1} has type {tool.get('type')!r}; the only supported type is 'function'", key)
            continue
        function = _check_function(tool.get("function"), error, f"{key}.function", arguments=False)
        if function is not None and set(tool) <= {"type", "function"}:
            out.append({"type": "function", "function": function})
    return out if len(out) == len(raw) else None


def check_functions(raw: Any, found: ExampleFindings) -> list[dict] | None:
    """Check the deprecated ``functions`` list and return it as ``tools``."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= 128:
        found.error(
            f"'functions' must be an array of 1 to 128 function definitions, got {json_type(raw)}",
            field="functions",
        )
        return None
    out = []
    for j, function in enumerate(raw):
        checked = _check_function(
            function, lambda m, k: found.error(m, field=k), f"functions[{j}]", arguments=False
        )
        if checked is not None:
            out.append({"type": "function", "function": checked})
    return out if len(out) == len(raw) else None
