"""/v1/models through the SDK: base models, aliases, fine-tuned models and checkpoints; names with ':' and '/'."""

from __future__ import annotations

import openai
import pytest

from openft.errors import NotFoundError
from openft.settings import DEFAULT_BASE_MODEL, SMOLLM2_PACKAGE_SOURCE, Settings

SLASHED_BASE = "HuggingFaceTB/SmolLM2-360M"
TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10
LEASE = 60.0


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


def fine_tune(services, organization_id: str, *, base: str = DEFAULT_BASE_MODEL, suffix: str = "demo"):
    """Run a job through the worker's calls to success with two checkpoints; artifacts on disk."""
    file = services.files.create_from_bytes(organization_id, "train.jsonl", "fine-tune", TRAIN)
    job = services.fine_tuning.create(organization_id, model=base, training_file=file.id, suffix=suffix)
    runtime = services.runtime
    claim = runtime.claim("w", LEASE)
    runtime.mark_validated(job.id, claim.generation, hyperparameters=claim.job.hyperparameters, stats={})
    claim = runtime.claim("w", LEASE)
    root = services.settings.models_dir / "jobs" / job.id
    checkpoints = []
    for step in (5, 10):
        (root / f"ckpt-{step}").mkdir(parents=True)
        checkpoints.append(
            runtime.record_checkpoint(
                job.id, claim.generation, step=step, metrics={}, path=f"jobs/{job.id}/ckpt-{step}"
            )
        )
    (root / "final").mkdir(parents=True)
    (root / "final" / "adapter_model.safetensors").write_bytes(b"weights")
    name = runtime.succeed(
        job.id,
        claim.generation,
        artifact_path=f"jobs/{job.id}/final",
        trained_tokens=10,
        result_csv=b"step\n",
        final_step=15,
        final_metrics={},
    )
    return name, checkpoints, root


@pytest.fixture
def org(services) -> str:
    return services.organizations.ensure_default().id


def test_list_shows_base_models_aliases_and_own_fine_tunes(client, services, org):
    name, checkpoints, _ = fine_tune(services, org)
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {DEFAULT_BASE_MODEL, SLASHED_BASE, "gpt-4o-mini", name, *checkpoints}
    assert {models[m].owned_by for m in (DEFAULT_BASE_MODEL, SLASHED_BASE, "gpt-4o-mini")} == {"system"}
    assert {models[m].owned_by for m in (name, *checkpoints)} == {"personal"}
    assert all(m.object == "model" and isinstance(m.created, int) for m in models.values())


def test_retrieve_fine_tuned_model_and_checkpoint_names_with_colons(client, services, org):
    name, checkpoints, _ = fine_tune(services, org)
    assert name.count(":") == 4 and checkpoints[0].endswith(":ckpt-step-5")
    for model in (name, checkpoints[0]):
        retrieved = client.models.retrieve(model)
        assert (retrieved.id, retrieved.owned_by) == (model, "personal")


def test_retrieve_base_name_with_slash_raw_or_encoded(client, http):
    assert client.models.retrieve(SLASHED_BASE).id == SLASHED_BASE  # the SDK sends %2F
    assert http.get(f"/v1/models/{SLASHED_BASE}").json()["id"] == SLASHED_BASE  # older SDKs send '/'
    assert http.get("/v1/models/HuggingFaceTB%2FSmolLM2-360M").json()["owned_by"] == "system"
    assert client.models.retrieve("gpt-4o-mini").owned_by == "system"


def test_retrieve_unknown_model_answers_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("ft:nope:personal::12345678")
    assert raised.value.code == "model_not_found"
    assert raised.value.body["message"] == "The model 'ft:nope:personal::12345678' does not exist"


def test_delete_fine_tuned_model_removes_it_its_checkpoints_and_artifacts(client, services, org):
    name, checkpoints, root = fine_tune(services, org)
    deleted = client.models.delete(name)
    assert (deleted.id, deleted.object, deleted.deleted) == (name, "model", True)

    remaining = {m.id for m in client.models.list()}
    assert name not in remaining and not remaining & set(checkpoints)
    assert not (root / "final").exists() and not (root / "ckpt-10").exists()
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(name)
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.delete(name)
    assert raised.value.code == "model_not_found"


def test_delete_one_checkpoint_keeps_the_model(client, services, org):
    name, checkpoints, root = fine_tune(services, org)
    assert client.models.delete(checkpoints[0]).deleted
    assert {m.id for m in client.models.list()} >= {name, checkpoints[1]}
    assert not (root / "ckpt-5").exists() and (root / "final").exists()
    job_id = root.name
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)]
    assert steps == [15, 10]


def test_delete_base_model_is_refused_with_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.models.delete(DEFAULT_BASE_MODEL)
    assert "base model" in raised.value.body["message"]
    assert DEFAULT_BASE_MODEL in {m.id for m in client.models.list()}


def test_another_organizations_model_is_invisible(services, make_client):
    mine = make_client(api_key=services.organizations.create_key("personal"))
    theirs = make_client(api_key=services.organizations.create_key("rival"))
    rival_org = services.organizations.ensure("rival").id
    name, _, root = fine_tune(services, rival_org)
    assert name.split(":")[2] == "rival"
    assert theirs.models.retrieve(name).owned_by == "rival"

    assert name not in {m.id for m in mine.models.list()}
    with pytest.raises(openai.NotFoundError):
        mine.models.retrieve(name)
    with pytest.raises(openai.NotFoundError):
        mine.models.delete(name)
    with pytest.raises(openai.BadRequestError) as raised:
        mine.fine_tuning.jobs.create(model=name, training_file="file-x")
    assert raised.value.code == "model_not_available"
    assert (root / "final").exists()


def test_resolve_for_inference(services, org):
    name, checkpoints, root = fine_tune(services, org)
    models = services.models
    assert models.resolve_for_inference(org, "gpt-4o-mini") == (DEFAULT_BASE_MODEL, None)
    assert models.resolve_for_inference(org, SLASHED_BASE) == (SLASHED_BASE, None)
    assert models.resolve_for_inference(org, name) == (DEFAULT_BASE_MODEL, root / "final")
    assert models.resolve_for_inference(org, checkpoints[1]) == (DEFAULT_BASE_MODEL, root / "ckpt-10")
    other = services.organizations.ensure("rival").id
    with pytest.raises(NotFoundError):
        models.resolve_for_inference(other, name)
