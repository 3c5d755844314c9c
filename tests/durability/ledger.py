"""What durability tests check after the dust settles: events, adapters against twins, leftovers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import openai
from sqlalchemy import select

from openft.services.context import Services
from openft.store.tables import FileRow, JobEventRow, UploadPartRow

BASE = "tiny-llama"
ADAPTER_FILE = Path("final") / "adapter" / "adapter_model.safetensors"
_TWINS: dict[str, dict] = {}


def examples(n: int, word: str = "banana") -> bytes:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You answer with the code word."},
                {"role": "user", "content": f"What is the code word? (ask #{i})"},
                {"role": "assistant", "content": word},
            ]
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def create_job(client: openai.OpenAI, *, n: int, n_epochs: int, seed: int, word: str = "banana"):
    training = client.files.create(file=("train.jsonl", examples(n, word)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        seed=seed,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": n_epochs, "batch_size": 1, "learning_rate_multiplier": 5}
            },
        },
    )


def job_dir(services: Services, job_id: str) -> Path:
    return services.settings.models_dir / "jobs" / job_id


def event_rows(services: Services, job_id: str) -> list[JobEventRow]:
    with services.db.transaction() as session:
        return list(
            session.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.pk))
        )


def messages(services: Services, job_id: str) -> list[str]:
    return [e.message for e in event_rows(services, job_id)]


def metrics_steps(services: Services, job_id: str) -> list[int]:
    return [e.data["step"] for e in event_rows(services, job_id) if e.type == "metrics"]


def resumed_from(services: Services, job_id: str) -> list[int]:
    prefix = "Resuming from the checkpoint at step "
    return [int(m.removeprefix(prefix)) for m in messages(services, job_id) if m.startswith(prefix)]


def complete_checkpoints(services: Services, job_id: str) -> list[int]:
    root = job_dir(services, job_id) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(d.name.split("-")[1]) for d in root.glob("step-*") if (d / "COMPLETE").is_file())


def assert_events_complete_and_ordered(services: Services, job_id: str, total_steps: int) -> None:
    rows = event_rows(services, job_id)
    times = [e.created_at for e in rows]
    assert times == sorted(times), "events are not in order"
    texts = [e.message for e in rows]
    assert texts[0] == f"Created fine-tuning job: {job_id}"
    assert texts.count("Fine-tuning job started") == 1
    assert texts.count("The job has successfully completed") == 1
    assert texts[-1] == "The job has successfully completed"
    assert sum(t.startswith("New fine-tuned model created: ") for t in texts) == 1
    steps = [e.data["step"] for e in rows if e.type == "metrics"]
    assert steps == list(range(1, total_steps + 1)), f"metrics events: {steps}"


def load_adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def twin_adapter(job_output: Path, scratch: Path) -> dict:
    """The adapter of the job's own spec trained straight through, in this process, never stopped.

    Cached by spec (output directory and file path aside) so identical jobs train one twin."""
    from openft.training.recipe import train
    from openft.training.spec import TrainingSpec

    spec = TrainingSpec.from_json((job_output / "spec.json").read_text())
    data = Path(spec.training_file).read_bytes()
    key_spec = replace(spec, job_id="", output_dir="", training_file=hashlib.sha256(data).hexdigest())
    key = key_spec.to_json()
    if key not in _TWINS:
        out = scratch / f"twin-{len(_TWINS)}"
        train(replace(spec, output_dir=str(out)), _Silent())
        _TWINS[key] = load_adapter(out / ADAPTER_FILE)
    return _TWINS[key]


class _Silent:
    def emit(self, line: dict) -> None:
        pass

    def stop_requested(self) -> None:
        return None


def assert_same_adapter(actual: dict, expected: dict) -> None:
    import torch

    assert actual.keys() == expected.keys()
    different = [name for name in actual if not torch.equal(actual[name], expected[name])]
    assert not different, f"tensors differ from the uninterrupted twin: {different}"


def leftovers(services: Services) -> list[str]:
    """Files a crash could orphan: blob temporaries, blobs without a row (and rows without a blob),
    half-written or torn checkpoints, staged final models, fence-file temporaries."""
    found: list[str] = []
    files_dir = services.settings.files_dir
    found += [f"blob temporary {p.name}" for p in (files_dir / ".tmp").iterdir()]
    with services.db.transaction() as session:
        keys = set(session.scalars(select(FileRow.blob_key))) | set(
            session.scalars(select(UploadPartRow.blob_key))
        )
    on_disk = {p.name for p in files_dir.iterdir() if p.is_file()}
    found += [f"blob without a row: {k}" for k in sorted(on_disk - keys)]
    found += [f"row without a blob: {k}" for k in sorted(keys - on_disk)]
    for out in (services.settings.models_dir / "jobs").glob("*"):
        found += [f"staged final model {p}" for p in out.glob(".final-*")]
        found += [f"fence temporary {p}" for p in out.glob(".LEASE-*")]
        found += [f"checkpoint temporary {p}" for p in out.glob("checkpoints/.tmp-*")]
        found += [
            f"torn checkpoint {p}" for p in out.glob("checkpoints/step-*") if not (p / "COMPLETE").is_file()
        ]
    return found
