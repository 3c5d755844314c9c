"""Builders for the rows of test training files: good examples of each format, and raw bytes."""

from __future__ import annotations

import json

Row = dict | str | bytes


def chat(i: int = 0, **extra) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": f"What is {i} + 1?"},
            {"role": "assistant", "content": str(i + 1)},
        ],
        **extra,
    }


def preference(i: int = 0, spelling: str = "output") -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": f"Say hi number {i}"}]},
        f"preferred_{spelling}": [{"role": "assistant", "content": f"Hi #{i}!"}],
        f"non_preferred_{spelling}": [{"role": "assistant", "content": "no"}],
    }


def completion(i: int = 0) -> dict:
    return {"prompt": f"{i} + 1 =", "completion": f" {i + 1}"}


def encode(rows: list[Row], newline: bytes = b"\n", final_newline: bool = True) -> bytes:
    parts = [
        r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows
    ]
    return newline.join(parts) + (newline if final_newline else b"")
