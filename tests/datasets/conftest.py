"""Fixtures that write small JSONL training files under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from dataset_rows import Row, encode


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """``write_jsonl(rows, newline=b"\\n", final_newline=True, prefix=b"")``: rows are dicts (dumped as
    JSON), strings or raw bytes; returns the file's path."""
    counter = iter(range(1_000_000))

    def write(
        rows: list[Row], *, newline: bytes = b"\n", final_newline: bool = True, prefix: bytes = b""
    ) -> Path:
        path = tmp_path / f"data-{next(counter)}.jsonl"
        path.write_bytes(prefix + encode(rows, newline, final_newline))
        return path

    return write
