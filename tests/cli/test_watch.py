"""Following a job: the event cursor, the progress fold, and `jobs create --watch` / `jobs watch`.

No worker runs here: a JobDriver plays the worker through the service layer, one step per poll
(the watcher's ``sleep`` is where the next events are produced), so nothing waits on a clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from live import JobDriver, LiveServer, Openft, create_job

from openft.cli import client as client_module
from openft.cli.watch import EventCursor, Progress, watch_job


def test_event_cursor_returns_each_new_event_once_oldest_first_across_pages(
    live_server: LiveServer, chat_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("openft.cli.watch.EVENTS_PAGE", 2)  # force several pages per poll
    job_id = create_job(live_server, chat_file)
    cursor = EventCursor(live_server.client(), job_id)
    first = [e.message for e in cursor.poll()]
    assert first[0] == f"Created fine-tuning job: {job_id}"

    driver = JobDriver(live_server.services, job_id, total_steps=5).start()
    for step in range(1, 6):
        driver.step(step, 3.0 - step * 0.1)
    fresh = cursor.poll()
    messages = [e.message for e in fresh]
    assert messages[0] == "Files validated, moving job to queued state"
    assert [e.data["step"] for e in fresh if e.type == "metrics"] == [1, 2, 3, 4, 5]
    assert not set(messages) & set(first)
    assert cursor.poll() == []


def test_watch_job_follows_steps_until_success(
    live_server: LiveServer, chat_file: Path, tmp_path: Path
) -> None:
    job_id = create_job(live_server, chat_file)
    driver = JobDriver(live_server.services, job_id, total_steps=3)
    script = iter(
        [
            driver.start,
            lambda: driver.step(1, 2.5, trained_tokens=100),
            lambda: driver.step(2, 1.5, valid_loss=1.7, trained_tokens=200),
            lambda: driver.step(3, 0.9, trained_tokens=300),
            lambda: driver.succeed(tmp_path),
        ]
    )
    printed: list[str] = []

    def next_poll(_seconds: float) -> None:
        next(script)()

    job = watch_job(live_server.client(), job_id, sleep=next_poll, echo=printed.append, show_bar=False)

    assert job.status == "succeeded" and job.fine_tuned_model
    assert "[info] Fine-tuning job started" in printed
    assert f"[info] New fine-tuned model created: {job.fine_tuned_model}" in printed
    assert not any(line.startswith("[info] Step ") for line in printed), "metrics feed the bar, not the log"


def test_progress_folds_metrics_into_the_bar_text() -> None:
    class Event:
        def __init__(self, created_at: int, **data: float) -> None:
            self.type, self.created_at, self.data = "metrics", created_at, data

    progress = Progress()
    assert progress.add(Event(100, step=1, total_steps=10, train_loss=2.0, trained_tokens=1000))
    assert progress.add(
        Event(110, step=2, total_steps=10, train_loss=1.5, valid_loss=1.8, trained_tokens=3000)
    )
    assert (progress.step, progress.total_steps) == (2, 10)
    text = progress.postfix(estimated_finish=1090, now=1000)
    assert text == "loss=1.5000 val_loss=1.8000 tok/s=200 ETA=01:30"


def test_jobs_create_watch_prints_the_model_name(
    openft: Openft, live_server: LiveServer, chat_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive: list[JobDriver] = []

    def watch_and_drive(client, job_id):  # noqa: ANN001, ANN202 - stands in for watch_job
        driver = JobDriver(live_server.services, job_id, total_steps=1)
        drive.append(driver)
        steps = iter([driver.start, lambda: driver.step(1, 1.0), lambda: driver.succeed(tmp_path)])
        return watch_job(client, job_id, sleep=lambda _s: next(steps)(), show_bar=True)

    monkeypatch.setattr(client_module, "watch_job", watch_and_drive)
    result = openft("jobs", "create", chat_file, "--watch")
    job = live_server.client().fine_tuning.jobs.retrieve(drive[0].job_id)
    assert job.status == "succeeded"
    assert f"succeeded. Fine-tuned model: {job.fine_tuned_model}" in result.stdout
    assert "Ctrl-C stops watching, the job keeps running" in result.stderr
    assert "1/1" in result.stderr and "loss=1.0000" in result.stderr  # the progress bar's last state


def test_jobs_watch_on_a_failed_job_prints_the_error_and_exits_1(
    openft: Openft, live_server: LiveServer, chat_file: Path
) -> None:
    job_id = create_job(live_server, chat_file)
    JobDriver(live_server.services, job_id).start().fail("CUDA out of memory at step 3; lower batch_size.")
    result = openft("jobs", "watch", job_id, expect=1)
    assert "failed: CUDA out of memory at step 3; lower batch_size. (code: training_failed)" in result.stderr


def test_jobs_watch_interrupted_leaves_the_job_running(
    openft: Openft, live_server: LiveServer, chat_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(live_server, chat_file)

    def interrupted(client, job_id):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(client_module, "watch_job", interrupted)
    result = openft("jobs", "watch", job_id, expect=130)
    assert "The job keeps running" in result.stderr
    assert live_server.client().fine_tuning.jobs.retrieve(job_id).status == "validating_files"
