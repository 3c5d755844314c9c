"""The live progress view of one fine-tuning job, built by polling the public jobs and events API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import openai
from tqdm import tqdm

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
EVENTS_PAGE = 100


class EventCursor:
    """Yields a job's events oldest first, each once, across polls.

    ``list_events`` is newest first and ``after`` pages towards older events, so new events are
    read page by page from the newest until the last one already seen.
    """

    def __init__(self, client: openai.OpenAI, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.last_seen: str | None = None

    def poll(self) -> list[Any]:
        fresh: list[Any] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": EVENTS_PAGE}
            if after:
                kwargs["after"] = after
            page = self.client.fine_tuning.jobs.list_events(self.job_id, **kwargs)
            for event in page.data:
                if event.id == self.last_seen:
                    return self._advance(fresh)
                fresh.append(event)
            if not page.data or not page.has_more:
                return self._advance(fresh)
            after = page.data[-1].id

    def _advance(self, fresh_newest_first: list[Any]) -> list[Any]:
        if fresh_newest_first:
            self.last_seen = fresh_newest_first[0].id
        return list(reversed(fresh_newest_first))


@dataclass
class Progress:
    """What the bar shows, folded from metrics events."""

    step: int = 0
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    _token_marks: list[tuple[float, float]] = field(default_factory=list)

    def add(self, event: Any) -> bool:
        """Fold one event in; True if it was a metrics event."""
        data = event.data if isinstance(event.data, dict) else None
        if getattr(event, "type", None) != "metrics" or not data:
            return False
        self.step = int(data.get("step", self.step))
        self.total_steps = data.get("total_steps", self.total_steps)
        self.train_loss = data.get("train_loss", self.train_loss)
        valid = data.get("full_valid_loss", data.get("valid_loss"))
        if valid is not None:
            self.valid_loss = valid
        self._fold_throughput(data, event.created_at)
        return True

    def _fold_throughput(self, data: dict[str, Any], created_at: int) -> None:
        # The speed is reported directly when the trainer knows it; otherwise it is derived from a
        # cumulative token count over the events' timestamps.
        if data.get("tokens_per_second") is not None:
            self.tokens_per_second = float(data["tokens_per_second"])
            return
        tokens = data.get("trained_tokens", data.get("tokens"))
        if tokens is None:
            return
        self._token_marks.append((float(created_at), float(tokens)))
        self._token_marks = self._token_marks[-20:]
        (t0, n0), (t1, n1) = self._token_marks[0], self._token_marks[-1]
        if t1 > t0:
            self.tokens_per_second = (n1 - n0) / (t1 - t0)

    def postfix(self, estimated_finish: int | None, now: float) -> str:
        parts = []
        if self.train_loss is not None:
            parts.append(f"loss={self.train_loss:.4f}")
        if self.valid_loss is not None:
            parts.append(f"val_loss={self.valid_loss:.4f}")
        if self.tokens_per_second is not None:
            parts.append(f"tok/s={self.tokens_per_second:,.0f}")
        if estimated_finish:
            parts.append(f"ETA={_clock(max(0, estimated_finish - now))}")
        return " ".join(parts)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def watch_job(
    client: openai.OpenAI,
    job_id: str,
    *,
    poll_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    echo: Callable[[str], None] = click.echo,
    show_bar: bool = True,
) -> Any:
    """Follow a job until it ends and return its final state; prints message events as they come.

    Watching is read-only: interrupting it (Ctrl-C) leaves the job running on the server.
    """
    cursor = EventCursor(client, job_id)
    progress = Progress()
    bar: tqdm | None = None
    try:
        for job in _poll_job(client, job_id, poll_seconds, sleep):
            for event in cursor.poll():
                if progress.add(event):
                    continue
                line = f"[{event.level}] {event.message}"
                if bar is not None:
                    bar.write(line)
                else:
                    echo(line)
            if progress.total_steps and bar is None and show_bar:
                bar = tqdm(total=int(progress.total_steps), unit="step", dynamic_ncols=True, leave=True)
            if bar is not None:
                bar.n = min(progress.step, bar.total)
                bar.set_postfix_str(progress.postfix(getattr(job, "estimated_finish", None), time.time()))
                bar.refresh()
            if job.status in TERMINAL_STATUSES:
                return job
    finally:
        if bar is not None:
            bar.close()
    raise AssertionError("unreachable: _poll_job only stops at a terminal status")


def _poll_job(client: openai.OpenAI, job_id: str, poll_seconds: float, sleep) -> Iterator[Any]:
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        yield job
        if job.status in TERMINAL_STATUSES:
            return
        sleep(poll_seconds)


def report_outcome(job: Any) -> int:
    """Print how the job ended; return the process exit code (0 only for success)."""
    if job.status == "succeeded":
        click.echo(f"Job {job.id} succeeded. Fine-tuned model: {job.fine_tuned_model}")
        return 0
    if job.status == "failed":
        error = job.error
        message = getattr(error, "message", None) or "no error message"
        code = getattr(error, "code", None)
        click.echo(f"Job {job.id} failed: {message}" + (f" (code: {code})" if code else ""), err=True)
        return 1
    click.echo(f"Job {job.id} was {job.status}.", err=True)
    return 1
