"""Tool calls in generated text: the `<tool_call>{json}</tool_call>` blocks of Hermes/Qwen-style chat templates."""

from __future__ import annotations

import json
import re
import secrets

TOOL_CALL_OPEN = "<tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(text: str) -> list[dict] | None:
    """OpenAI ``tool_calls`` for the blocks in ``text``, or None if any block is not a well-formed call.

    All or nothing: a half-parsed answer would hide what the model said, so malformed text stays content.
    """
    calls = []
    for block in _BLOCK.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", {})
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": call["name"],
                    # OpenAI sends arguments as a JSON string, whatever the model wrote.
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
        )
    return calls or None
