"""A validation in progress through the SDK: a cancel stops it within a poll and frees the queue,
and a base model that needs its one-time conversion says so before the conversion starts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from openft.settings import Settings
from openft.training import base_models
from openft.training.tiny import write_tiny_gguf
from openft.worker.loop import Worker
from openft.worker.validation import TransformersTokenizerSeam

BASE = "tiny-llama"
GGUF_BASE = "tiny-gguf"


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir, database_url) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=database_url,
        base_models={BASE: str(tiny_model_dir), GGUF_BASE: str(tmp_path / "gguf" / "tiny.gguf")},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
    )


def _jsonl(n: int) -> bytes:
    row = {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What is the capital of France? (ask #{i})"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    }
    line = json.dumps(row)
    return "".join(line.replace("{i}", str(i)) + "\n" for i in range(n)).encode()


def _create(client, data: bytes, model: str = BASE):
    training = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model=model, training_file=training.id)


def _messages(client, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


class GatedSeam(TransformersTokenizerSeam):
    """The real tokenizer seam; the first job's counter pauses after its first batch until the test
    has cancelled the job, so the cancel lands while validation is certainly in progress."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.counted: list[int] = []  # examples counted, per job validated
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def counter(self, model_dir: Path, method: str):
        inner = super().counter(model_dir, method)
        index = len(self.counted)
        self.counted.append(0)
        seam = self

        class Counting:
            def count_many(self, examples):
                counts = inner.count_many(examples)
                seam.counted[index] += len(examples)
                if index == 0 and not seam.cancelled.is_set():
                    seam.started.set()
                    seam.cancelled.wait(60)
                return counts

        return Counting()


def test_cancel_stops_a_validation_in_progress_and_the_next_job_is_validated(client, services, settings):
    n_big = 60_000
    big = _create(client, _jsonl(n_big))
    small = _create(client, _jsonl(12))
    seam = GatedSeam(settings)
    worker = threading.Thread(
        target=Worker(services, seam=seam).run, kwargs={"burst": True, "max_jobs": 2}, daemon=True
    )
    worker.start()
    try:
        assert seam.started.wait(60), "validation of the big file never started counting"
        assert client.fine_tuning.jobs.cancel(big.id).status == "cancelled"
    finally:
        seam.cancelled.set()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the worker kept validating the cancelled file"

    # It stopped a few batches after the cancel, far from the end of the file.
    assert 0 < seam.counted[0] < n_big // 4, seam.counted
    big = client.fine_tuning.jobs.retrieve(big.id)
    assert big.status == "cancelled" and big.error.code is None
    messages = _messages(client, big.id)
    assert messages[-1] == "Fine-tuning job cancelled"
    assert not any("validated" in m or "Training file" in m for m in messages)
    assert _lease_owner(services, big.id) is None
    # The job behind it did not wait for the rest of the big file.
    assert seam.counted[1] == 12
    assert client.fine_tuning.jobs.retrieve(small.id).status == "queued"


def _lease_owner(services, job_id: str) -> str | None:
    from sqlalchemy import select

    from openft.store.tables import JobRow

    with services.db.transaction() as session:
        return session.scalar(select(JobRow.lease_owner).where(JobRow.id == job_id))


def test_first_job_on_a_gguf_base_model_says_it_is_converting_before_it_does(
    client, services, settings, tiny_model_dir, monkeypatch
):
    pytest.importorskip("gguf")
    gguf = Path(settings.base_models[GGUF_BASE])
    gguf.parent.mkdir()
    write_tiny_gguf(gguf, tiny_model_dir)
    first = _create(client, _jsonl(12), model=GGUF_BASE)
    seen_during_conversion: list[list[str]] = []
    convert = base_models._convert_gguf

    def watched_convert(path: Path, out: Path) -> None:
        seen_during_conversion.append(_messages(client, first.id))
        convert(path, out)

    monkeypatch.setattr(base_models, "_convert_gguf", watched_convert)
    Worker(services).run(burst=True, max_jobs=1)

    notice = (
        f"Preparing base model {GGUF_BASE}: converting tiny.gguf ({gguf.stat().st_size / 1e6:,.0f} MB) to a "
        "Hugging Face model once; this takes about a minute, and later jobs on this model skip it"
    )
    [during] = seen_during_conversion
    assert during[-1] == notice
    assert client.fine_tuning.jobs.retrieve(first.id).status == "queued"
    assert _messages(client, first.id)[-1] == "Files validated, moving job to queued state"

    client.fine_tuning.jobs.cancel(first.id)  # or the next worker run would train it
    second = _create(client, _jsonl(12), model=GGUF_BASE)
    Worker(services).run(burst=True, max_jobs=1)
    assert len(seen_during_conversion) == 1
    assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"
    assert not any(m.startswith("Preparing base model") for m in _messages(client, second.id))
