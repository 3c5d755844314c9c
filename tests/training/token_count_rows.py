"""Varied valid training rows for token-count tests: every message shape the validator accepts."""

from __future__ import annotations

import json
import random

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
_WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "Zürich",
    "東京",
    "🙂",
    "naïve",
    "3.14",
    "-42",
    "{}",
    "<tag>",
    "\\n",
)


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(_WORDS, k=rng.randint(1, n)))


def chat_row(rng: random.Random, i: int) -> dict:
    """A chat example; ``i % 8`` picks the shape: plain, multi-turn with weights, content parts,
    tool calls with tool results, the deprecated functions list, names, refusal, no system."""
    kind = i % 8
    messages: list[dict] = [{"role": "system", "content": _text(rng, 12)}]
    turns = 1 + (i % 3)
    for _ in range(turns):
        messages.append({"role": "user", "content": _text(rng, 30)})
        messages.append({"role": "assistant", "content": _text(rng, 40)})
    row: dict = {"messages": messages}
    if kind == 1 and turns > 1:
        messages[2]["weight"] = 0
        messages[-1]["weight"] = 1
    elif kind == 2:
        messages[1]["content"] = [
            {"type": "text", "text": _text(rng, 8)},
            {"type": "text", "text": _text(rng, 8)},
        ]
        messages[-1]["content"] = [{"type": "text", "text": _text(rng, 8)}]
    elif kind == 3:
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": _text(rng, 2)})},
        }
        messages += [
            {"role": "user", "content": "And the weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"sky": _text(rng, 3)})},
            {"role": "assistant", "content": _text(rng, 10)},
        ]
        row["tools"] = TOOLS
        row["parallel_tool_calls"] = False
    elif kind == 4:
        row["functions"] = [TOOLS[0]["function"]]
    elif kind == 5:
        messages[1]["name"] = "alice"
        messages[2]["name"] = "helper"
    elif kind == 6:
        messages[-1] = {"role": "assistant", "refusal": "I cannot help with that.", "content": None}
    elif kind == 7:
        messages.pop(0)
    return row


def preference_row(rng: random.Random, i: int) -> dict:
    """A DPO pair; some with a multi-turn prompt (earlier assistant turns are context), tools,
    or the API reference's ``preferred_completion`` spelling."""
    prompt: list[dict] = [{"role": "user", "content": _text(rng, 20)}]
    if i % 3 == 1:
        prompt = [
            {"role": "system", "content": _text(rng, 10)},
            *prompt,
            {"role": "assistant", "content": _text(rng, 20)},
            {"role": "user", "content": _text(rng, 10)},
        ]
    inp: dict = {"messages": prompt}
    if i % 5 == 2:
        inp["tools"] = TOOLS
    spelling = "completion" if i % 4 == 3 else "output"
    return {
        "input": inp,
        f"preferred_{spelling}": [{"role": "assistant", "content": _text(rng, 30)}],
        f"non_preferred_{spelling}": [{"role": "assistant", "content": _text(rng, 15)}],
    }


def completion_row(rng: random.Random, i: int) -> dict:
    return {"prompt": _text(rng, 20), "completion": " " + _text(rng, 20)}


ROWS = {"chat": chat_row, "preference": preference_row, "completion": completion_row}
METHOD = {"chat": "supervised", "preference": "dpo", "completion": "supervised"}


def rows(kind: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [ROWS[kind](rng, i) for i in range(n)]
