"""Render API objects for people (aligned tables, local times) or for scripts (JSON)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

Column = tuple[str, Callable[[Any], Any]]


def as_dict(obj: Any) -> Any:
    """An SDK model (or a list of them) as plain JSON-ready data, keeping fields the SDK doesn't know."""
    if isinstance(obj, list | tuple):
        return [as_dict(item) for item in obj]
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(as_dict(obj), indent=2))


def when(ts: int | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def duration(start: int | None, end: int | None) -> str:
    if not start:
        return "-"
    seconds = int((end or time.time()) - start)
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def echo_table(rows: Iterable[Any], columns: Sequence[Column], empty: str = "Nothing to show.") -> None:
    """Aligned columns; a table, not JSON, because people read these and scripts use ``--json``."""
    cells = [[cell(get(row)) for _, get in columns] for row in rows]
    if not cells:
        click.echo(empty)
        return
    header = [name for name, _ in columns]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        click.echo("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())


def echo_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        click.echo(f"{name.ljust(width)}  {cell(value)}")


def status_style(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}.get(status)
    return click.style(status, fg=colour) if colour else status
