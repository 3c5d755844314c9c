"""Weights & Biases and MLflow through the SDK and the real libraries: a job with both integrations
trains the tiny model, and each run, read back with the library's own reader (wandb's reader of
offline run files, MLflow's ``MlflowClient``), holds exactly the per-step losses the job's metrics
events report, its config and the final model name. A failing integration is a warn event and the
job still succeeds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from openft.settings import Settings
from openft.worker.loop import Worker

BASE = "tiny-llama"
HP = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}


def _examples(n: int = 12) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Code word? (#{i})"},
                {"role": "assistant", "content": "banana"},
            ]
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir, mlflow_uri) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # no ~/.netrc or W&B settings of the machine running the tests
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
        mlflow_tracking_uri=mlflow_uri,
    )


def _train(client, services, integrations, validation: bool = True, hp=HP):
    training = client.files.create(file=("t.jsonl", _examples()), purpose="fine-tune")
    extra = {}
    if validation:
        extra["validation_file"] = client.files.create(file=("v.jsonl", _examples(4)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        integrations=integrations,
        **extra,
    )
    assert Worker(services).run(burst=True) == 2
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))
    losses = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics"}
    return job, events, losses


def _wandb_records(run_file) -> list[dict]:
    """The offline run's records, as wandb's own reader of .wandb files prints them."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_wandb_and_mlflow_runs_hold_the_jobs_per_step_losses(client, services, settings):
    integrations = [
        {"type": "wandb", "wandb": {"project": "openft-tests", "name": "tiny run", "tags": ["ci"]}},
        {"type": "mlflow", "mlflow": {"experiment": "openft-tests", "tags": {"team": "ml"}}},
    ]
    job, events, losses = _train(client, services, integrations)
    assert [i.type for i in job.integrations] == ["wandb", "mlflow"]
    assert sorted(losses) == list(range(1, 7))  # 12 examples / batch 4 x 2 epochs
    messages = [e.message for e in events]
    assert any(m.startswith(f"Weights & Biases run {job.id} is logged offline in ") for m in messages)
    assert any(m.startswith("MLflow run ") for m in messages)
    assert not [e for e in events if e.level == "warn" and ("Weights" in e.message or "MLflow" in e.message)]

    # W&B: the offline run, read back by wandb.
    (run_file,) = (settings.home / "wandb").glob(f"wandb/offline-run-*-{job.id}/run-{job.id}.wandb")
    records = _wandb_records(run_file)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["run_id"], run["display_name"], run["project"]) == (job.id, "tiny run", "openft-tests")
    assert {"ci", "openft/finetune", f"openft/{job.id}", f"openft/{BASE}"} <= set(run["tags"])
    config = run["config"]["update"]
    assert config["job_id"] == job.id and config["training_file"] == job.training_file
    assert config["hyperparameters"]["n_epochs"] == 2 and config["seed"] == 7
    history = [r["history"] for r in records if r["type"] == "history"]
    logged = {h["step"]["num"]: h["item"]["train_loss"] for h in history if "train_loss" in h["item"]}
    assert logged == losses
    assert any("full_valid_loss" in h["item"] for h in history)  # validation metrics too
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["fine_tuned_model"] == job.fine_tuned_model and summary["status"] == "succeeded"
    assert summary["checkpoint_steps"] == [3, 6]

    # MLflow: the run, read back with MlflowClient.
    mlflow = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name("openft-tests")
    (found,) = mlflow.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`openft.job_id` = '{job.id}'"
    )
    assert found.info.run_name == job.id and found.info.status == "FINISHED"
    assert found.data.tags["team"] == "ml" and found.data.tags["fine_tuned_model"] == job.fine_tuned_model
    assert found.data.params["hyperparameters.batch_size"] == "4" and found.data.params["model"] == BASE
    history = mlflow.get_metric_history(found.info.run_id, "train_loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    assert [m.step for m in mlflow.get_metric_history(found.info.run_id, "checkpoint_step")] == [3, 6]


@pytest.mark.parametrize("mlflow_uri", ["nosuchscheme://tracking"])
def test_a_failing_integration_is_a_warn_event_and_training_goes_on(client, services):
    integrations = [
        # wandb.init refuses this project name (W&B's own rule, checked by the library at run start)
        {"type": "wandb", "wandb": {"project": "bad/project#name"}},
        {"type": "mlflow", "mlflow": {"experiment": "e"}},
    ]
    job, events, losses = _train(client, services, integrations, validation=False, hp={**HP, "n_epochs": 1})
    warnings = [e.message for e in events if e.level == "warn"]
    assert any(w.startswith("Weights & Biases failed (") and "training goes on" in w for w in warnings)
    assert any(w.startswith("MLflow failed (") for w in warnings), warnings
    assert job.fine_tuned_model and len(losses) == 3
