"""POST /v1/fine_tuning/jobs through the official SDK: every field, nulls, and every 400 with code and param."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import select

from openft.settings import DEFAULT_BASE_MODEL, SMOLLM2_PACKAGE_SOURCE, Settings
from openft.store.tables import JobRow, ModelRow

SLASHED_BASE = "HuggingFaceTB/SmolLM2-360M"
TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10
AUTO_SUPERVISED = {
    "batch_size": "auto",
    "learning_rate_multiplier": "auto",
    "n_epochs": "auto",
    "fine_tuning_type": "auto",
    "lora_rank": "auto",
    "lora_alpha": "auto",
    "lora_dropout": "auto",
    "lora_target_modules": "auto",
    "max_seq_length": "auto",
    "n_devices": "auto",
    "gradient_checkpointing": "auto",
}


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={DEFAULT_BASE_MODEL: SMOLLM2_PACKAGE_SOURCE, SLASHED_BASE: str(tmp_path / "absent")},
        model_aliases={"gpt-4o-mini": DEFAULT_BASE_MODEL},
    )


@pytest.fixture
def training_file(client) -> str:
    return client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune").id


def test_create_minimal_reports_every_field_with_defaults(client, training_file):
    job = client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=training_file)

    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert (job.status, job.model, job.training_file, job.validation_file) == (
        "validating_files",
        DEFAULT_BASE_MODEL,
        training_file,
        None,
    )
    assert isinstance(job.seed, int) and 0 <= job.seed <= 2_147_483_647
    assert job.error.model_dump() == {"code": None, "message": None, "param": None}
    assert job.hyperparameters.model_dump() == {
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "n_epochs": "auto",
    }
    assert job.method.type == "supervised"
    assert job.method.supervised.hyperparameters.model_dump(exclude_none=True) == AUTO_SUPERVISED
    assert (job.fine_tuned_model, job.finished_at, job.trained_tokens, job.estimated_finish) == (None,) * 4
    assert (job.result_files, job.integrations, job.metadata) == ([], [], None)
    assert job.model_extra["user_provided_suffix"] is None

    events = client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == [
        f"Validating training file: {training_file}",
        f"Created fine-tuning job: {job.id}",
    ]
    assert not events.has_more


def test_create_with_every_field_echoes_them(client, training_file):
    validation_file = client.files.create(file=("valid.jsonl", TRAIN), purpose="fine-tune").id
    integrations = [
        {"type": "wandb", "wandb": {"project": "proj", "name": "run", "entity": None, "tags": ["a", "b"]}}
    ]
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=training_file,
        validation_file=validation_file,
        suffix="my-model_v1.2",
        seed=42,
        metadata={"team": "search", "run": "7"},
        integrations=integrations,
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {"beta": 0.2, "n_epochs": 2, "lora_rank": 8, "fine_tuning_type": "lora"}
            },
        },
    )

    assert job.model == "gpt-4o-mini"  # the caller's name; the alias trains the configured base
    assert (job.validation_file, job.seed, job.metadata) == (
        validation_file,
        42,
        {"team": "search", "run": "7"},
    )
    assert job.model_extra["user_provided_suffix"] == "my-model_v1.2"
    assert [i.model_dump() for i in job.integrations] == integrations
    assert job.method.type == "dpo"
    dpo = job.method.dpo.hyperparameters
    assert (dpo.beta, dpo.n_epochs, dpo.batch_size) == (0.2, 2, "auto")
    assert (dpo.model_extra["lora_rank"], dpo.model_extra["fine_tuning_type"]) == (8, "lora")
    assert job.hyperparameters.n_epochs == 2  # openft reports the top-level view for DPO too
    events = client.fine_tuning.jobs.list_events(job.id).data
    assert events[0].message == (
        f"Validating training file: {training_file} and validation file: {validation_file}"
    )


def test_create_accepts_null_for_every_nullable_field(http, training_file):
    body = {
        "model": DEFAULT_BASE_MODEL,
        "training_file": training_file,
        "validation_file": None,
        "suffix": None,
        "seed": None,
        "method": None,
        "hyperparameters": None,
        "integrations": None,
        "metadata": None,
    }
    response = http.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["method"]["type"] == "supervised" and isinstance(job["seed"], int)
    assert (job["integrations"], job["metadata"], job["user_provided_suffix"]) == ([], None, None)


def test_create_with_null_method_parts_uses_auto(http, training_file):
    body = {"model": DEFAULT_BASE_MODEL, "training_file": training_file, "method": {"type": "supervised"}}
    assert http.post("/v1/fine_tuning/jobs", json=body).json()["hyperparameters"]["n_epochs"] == "auto"
    body["method"] = {"type": "supervised", "supervised": None}
    assert http.post("/v1/fine_tuning/jobs", json=body).status_code == 200
    body["method"] = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": None}}}
    assert http.post("/v1/fine_tuning/jobs", json=body).json()["hyperparameters"]["n_epochs"] == "auto"


def test_create_deprecated_hyperparameters_apply_to_supervised(client, training_file):
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL,
        training_file=training_file,
        hyperparameters={"n_epochs": 4, "batch_size": 2},
    )
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (4, 2)
    assert job.method.supervised.hyperparameters.n_epochs == 4


def test_create_deprecated_hyperparameters_agreeing_with_method_merge(client, training_file):
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL,
        training_file=training_file,
        hyperparameters={"n_epochs": 4, "learning_rate_multiplier": 0.5},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 8}}},
    )
    assert job.hyperparameters.model_dump() == {
        "n_epochs": 4,
        "batch_size": 8,
        "learning_rate_multiplier": 0.5,
    }


def test_create_from_own_fine_tuned_model_continues_training(client, services, training_file):
    org = services.organizations.ensure_default().id
    parent = f"ft:{SLASHED_BASE}:personal:prev:abcd1234"
    with services.db.transaction() as session:
        session.add(
            ModelRow(
                id=parent,
                organization_id=org,
                job_id="ftjob-x",
                kind="fine_tune",
                base_model=SLASHED_BASE,
                path="jobs/x",
                created_at=1,
            )
        )
    job = client.fine_tuning.jobs.create(model=parent, training_file=training_file)
    assert job.model == parent
    with services.db.transaction() as session:
        row = session.scalar(select(JobRow).where(JobRow.id == job.id))
        assert (row.base_model, row.parent_model) == (SLASHED_BASE, parent)


def _bad(param: str, code: str | None = None, **fields):
    return pytest.param(fields, param, code, id=param + ":" + ",".join(f"{k}" for k in fields))


BAD_REQUESTS = [
    _bad("model", "model_not_available", model="no-such-model"),
    _bad("model", "model_not_available", model="ft:someone:else:x:12345678"),
    _bad("training_file", training_file="file-doesnotexist"),
    _bad("validation_file", validation_file="file-doesnotexist"),
    _bad("suffix", suffix="has space"),
    _bad("suffix", suffix="a:b"),
    _bad("suffix", suffix="x" * 65),
    _bad("suffix", suffix=""),
    _bad("seed", seed=-1),
    _bad("seed", seed=2_147_483_648),
    _bad("metadata", metadata={f"k{i}": "v" for i in range(17)}),
    _bad("metadata", metadata={"k" * 65: "v"}),
    _bad("metadata", metadata={"k": "v" * 513}),
    _bad("metadata", metadata={"k": 1}),
    _bad("integrations", integrations=[{"type": "wandb", "wandb": {"project": "p"}}] * 6),
    _bad("integrations[0].type", integrations=[{"type": "neptune", "wandb": {"project": "p"}}]),
    _bad("integrations[0].mlflow", integrations=[{"type": "mlflow", "wandb": {"project": "p"}}]),
    _bad("integrations[0].mlflow.experiment", integrations=[{"type": "mlflow", "mlflow": {"run_name": "r"}}]),
    _bad(
        "integrations[0].mlflow.tags",
        integrations=[{"type": "mlflow", "mlflow": {"experiment": "e", "tags": ["x"]}}],
    ),
    _bad("integrations[0].wandb.project", integrations=[{"type": "wandb", "wandb": {"name": "n"}}]),
    _bad(
        "integrations[0].wandb.tags",
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["t"] * 51}}],
    ),
    _bad(
        "integrations[0].wandb.tags",
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["t" * 65]}}],
    ),
    _bad(
        "method.reinforcement.grader.type", method={"type": "reinforcement", "reinforcement": {"grader": {}}}
    ),
    _bad("method.reinforcement.grader", method={"type": "reinforcement", "reinforcement": {}}),
    _bad(
        "method.reinforcement.grader.operation",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {
                    "type": "string_check",
                    "name": "s",
                    "input": "{{sample.output_text}}",
                    "reference": "a",
                    "operation": "equals",
                }
            },
        },
    ),
    _bad(
        "method.reinforcement.grader.calculate_output",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {
                    "type": "multi",
                    "graders": {
                        "a": {"type": "string_check", "input": "x", "reference": "x", "operation": "eq"}
                    },
                    "calculate_output": "a + b",
                }
            },
        },
    ),
    _bad(
        "method.reinforcement.grader.model",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {
                    "type": "score_model",
                    "name": "judge",
                    "model": "no-such-model",
                    "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
                }
            },
        },
    ),
    _bad(
        "method.reinforcement.hyperparameters.compute_multiplier",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {
                    "type": "string_check",
                    "name": "s",
                    "input": "{{sample.output_text}}",
                    "reference": "a",
                    "operation": "eq",
                },
                "hyperparameters": {"compute_multiplier": 11},
            },
        },
    ),
    _bad("method.type", method={"type": "rlhf"}),
    _bad("method.type", method={}),
    _bad(
        "method.supervised.hyperparameters.n_epochs",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}},
    ),
    _bad(
        "method.supervised.hyperparameters.batch_size",
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 257}}},
    ),
    _bad(
        "method.supervised.hyperparameters.learning_rate_multiplier",
        method={"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}}},
    ),
    _bad(
        "method.supervised.hyperparameters.beta",
        method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}},
    ),
    _bad("method.dpo.hyperparameters.beta", method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}),
    _bad(
        "method.dpo.hyperparameters.lora_rank",
        method={"type": "dpo", "dpo": {"hyperparameters": {"lora_rank": 0}}},
    ),
    _bad(
        "method.supervised.hyperparameters.n_devices",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_devices": 0}}},
    ),
    _bad(
        "method.dpo.hyperparameters.n_devices",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_devices": 1.5}}},
    ),
    _bad(
        "method.supervised.hyperparameters.n_devices",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_devices": "all"}}},
    ),
    _bad("hyperparameters.n_epochs", hyperparameters={"n_epochs": 51}),
    _bad(
        "hyperparameters",
        hyperparameters={"n_epochs": 2},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    ),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_REQUESTS)
def test_create_bad_request_answers_400_naming_the_field(client, training_file, fields, param, code):
    request = {"model": DEFAULT_BASE_MODEL, "training_file": training_file, **fields}
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(**request)
    assert (raised.value.status_code, raised.value.param, raised.value.code) == (400, param, code)
    assert client.fine_tuning.jobs.list().data == []  # nothing was created


def test_create_unknown_model_uses_openai_message(client, training_file):
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model="gpt-5-turbo", training_file=training_file)
    assert raised.value.body["message"].startswith(
        "Model gpt-5-turbo is not available for fine-tuning or does not exist."
    )


def test_create_unknown_training_file_uses_openai_message(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file="file-nope")
    assert raised.value.body["message"] == "invalid training_file: file-nope"


def test_create_with_file_of_other_purpose_names_the_purpose(client):
    other = client.files.create(file=("data.jsonl", TRAIN), purpose="user_data").id
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=other)
    assert raised.value.param == "training_file"
    assert "'user_data'" in raised.value.body["message"] and "'fine-tune'" in raised.value.body["message"]


def test_create_missing_training_file_answers_400(http):
    response = http.post("/v1/fine_tuning/jobs", json={"model": DEFAULT_BASE_MODEL})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"


def test_create_with_another_organizations_file_or_model_is_refused(services, make_client):
    mine = make_client(api_key=services.organizations.create_key("personal"))
    theirs = make_client(api_key=services.organizations.create_key("rival"))
    their_file = theirs.files.create(file=("t.jsonl", TRAIN), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as raised:
        mine.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=their_file)
    assert (raised.value.param, raised.value.body["message"]) == (
        "training_file",
        f"invalid training_file: {their_file}",
    )

    their_job = theirs.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=their_file)
    with pytest.raises(openai.NotFoundError):
        mine.fine_tuning.jobs.retrieve(their_job.id)
    assert mine.fine_tuning.jobs.list().data == []
