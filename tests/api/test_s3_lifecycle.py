"""A job end to end with an S3 bucket (a real S3-protocol server) and PostgreSQL, through the SDK:
checkpoints and the model are published to the bucket and named by key, the worker's local copies
are dropped, chat serves the model through the cache, and deleting the model deletes its objects."""

from __future__ import annotations

import base64
import signal

import openai
import pytest
from test_training_lifecycle import (
    BASE,
    _create,
    _InterposingLauncher,
    _metrics_steps,
    _pending_signals,
    _wait_for,
)

from openft.services.context import Services
from openft.settings import Settings
from openft.store.artifacts import MANIFEST
from openft.worker.loop import Worker

pytestmark = pytest.mark.postgres


REMOTE = "tiny-llama-in-a-bucket"


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir, postgres_url, s3_storage, s3) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    # The same tiny model once more, kept in a bucket of its own as an operator would upload it.
    models_bucket = s3.new_bucket()
    for path in sorted(tiny_model_dir.rglob("*")):
        if path.is_file():
            key = f"base/tiny/{path.relative_to(tiny_model_dir).as_posix()}"
            s3.client().put_object(Bucket=models_bucket, Key=key, Body=path.read_bytes())
    return Settings(
        home=home,
        database_url=postgres_url,
        base_models={BASE: str(tiny_model_dir), REMOTE: f"s3://{models_bucket}/base/tiny"},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
        **s3_storage,
    )


def _trees(services, job_id: str) -> set[str]:
    """The complete trees (those with a manifest) the bucket holds for the job."""
    bucket = services.artifacts.bucket
    return {
        name.removeprefix("models/").removesuffix(f"/{MANIFEST}")
        for name, _, _ in bucket.list(f"models/jobs/{job_id}/")
        if name.endswith(f"/{MANIFEST}")
    }


def test_a_job_keeps_its_checkpoints_and_model_in_the_bucket(client, services, settings):
    job = _create(client, n_epochs=3, batch_size=4)
    assert Worker(services).run(burst=True) == 2
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [9, 6, 3]

    # The database names keys of the bucket, and the bucket holds exactly those trees: the last
    # epoch's checkpoint gave way to the final model.
    final, step6, step3 = (
        f"jobs/{job.id}/final",
        f"jobs/{job.id}/checkpoints/step-6",
        f"jobs/{job.id}/checkpoints/step-3",
    )
    assert services.runtime.artifact_keys(job.id) == {final, step6, step3}
    assert _trees(services, job.id) == {final, step6, step3}
    out = settings.models_dir / "jobs" / job.id
    assert not (out / "final").exists() and not (out / "checkpoints").exists()  # the worker's copies

    (result_id,) = job.result_files
    assert base64.b64decode(client.files.content(result_id).read()).startswith(b"step,train_loss")

    # Chat serves the model and a checkpoint from the bucket, through this machine's cache.
    question = [{"role": "user", "content": "What is the code word? (ask #0)"}]
    for name in (job.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(model=name, messages=question, max_tokens=4, temperature=0)
        assert reply.model == name and reply.usage.completion_tokens > 0
        _, local = services.models.resolve_for_inference(job.organization_id, name)
        assert settings.cache_dir in local.parents

    assert client.models.delete(job.fine_tuned_model).deleted is True
    assert list(services.artifacts.bucket.list(f"models/jobs/{job.id}/")) == []
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=question)


def test_a_base_model_in_a_bucket_is_fetched_into_the_cache_and_serves(client, settings, tiny_model_dir):
    from openft.training.base_models import BaseModelRegistry

    registry = BaseModelRegistry.from_settings(settings)
    local = registry.materialize(REMOTE)
    assert settings.cache_dir in local.parents
    originals = {
        p.relative_to(tiny_model_dir): p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()
    }
    assert {
        p.relative_to(local): p.read_bytes() for p in local.rglob("*") if p.is_file() and p.name != ".entry"
    } == originals
    inode = (local / "config.json").stat().st_ino
    assert registry.materialize(REMOTE) == local
    assert (local / "config.json").stat().st_ino == inode  # the cached copy, not a second download

    question = [{"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model=REMOTE, messages=question, max_tokens=3, temperature=0)
    assert reply.model == REMOTE and reply.usage.completion_tokens > 0
    assert REMOTE in {m.id for m in client.models.list()}


def test_a_pause_too_late_for_the_child_leaves_no_copy_on_the_machine(client, services, settings, tmp_path):
    # The child has trained its last step when the pause arrives: the job is paused with its final
    # epoch checkpoint, which is in the bucket, so the machine's scratch goes as after any other stop.
    job = _create(client, n_epochs=1, batch_size=4)

    def pause_at_the_result(line: dict) -> None:
        if line.get("type") == "result":
            assert client.fine_tuning.jobs.pause(job.id).status == "paused"

    machine = Services.build(settings.with_(home=tmp_path / "machine"))
    try:
        Worker(machine, launcher=_InterposingLauncher(pause_at_the_result)).run(burst=True)
    finally:
        machine.close()
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    step, _ = services.artifacts.latest_checkpoint(job.id)
    assert step == max(_metrics_steps(client, job.id))
    scratch = tmp_path / "machine" / "models" / "jobs" / job.id
    assert not (scratch / "checkpoints").exists() and not (scratch / "final").exists()


def test_a_paused_job_resumes_on_another_machine_from_the_bucket(client, services, settings, tmp_path):
    job = _create(client, n_epochs=2, batch_size=2)
    paused: list[str] = []

    def pause_at_step_two(line: dict) -> None:
        if line.get("type") == "metrics" and line["step"] == 2 and not paused:
            # Hold the child still until the worker has asked it to pause (SIGUSR1 pending): a tiny
            # model's remaining steps can otherwise end before the worker's next status poll.
            launcher.proc.send_signal(signal.SIGSTOP)
            paused.append(client.fine_tuning.jobs.pause(job.id).status)
            _wait_for(lambda: _pending_signals(launcher.proc.pid) & (1 << (signal.SIGUSR1 - 1)), timeout=30)
            launcher.proc.send_signal(signal.SIGCONT)

    # Machine A: its own OPENFT_HOME (disk and cache); same database and bucket.
    machine_a = Services.build(settings.with_(home=tmp_path / "machine-a"))
    try:
        launcher = _InterposingLauncher(pause_at_step_two)
        Worker(machine_a, launcher=launcher).run(burst=True)
    finally:
        machine_a.close()
    assert paused == ["paused"]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    step, _ = services.artifacts.latest_checkpoint(job.id)
    assert step == max(_metrics_steps(client, job.id)) >= 2  # the pause's checkpoint is in the bucket
    # ... and machine A kept no copy: a job's scratch does not outlive its run there.
    assert not (tmp_path / "machine-a" / "models" / "jobs" / job.id / "checkpoints").exists()

    # Machine B (this one): nothing of the job on disk; it resumes from the bucket.
    assert not (settings.models_dir / "jobs" / job.id).exists()
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert f"Resuming from the checkpoint at step {step}" in messages, messages
    steps = _metrics_steps(client, job.id)
    assert sorted(steps) == list(range(1, 13))  # every step once: none lost, none repeated
