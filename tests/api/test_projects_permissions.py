"""Projects and checkpoint permissions through the SDK: project-scoped keys, the OpenAI-Project
header, 404 across projects as across organizations, and sharing a fine-tuned model or checkpoint
with other projects (of the same or another organization) both ways: granted use works, revoked use
is a 404 at once, and a grantee can never delete it or read what made it."""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from sqlalchemy import select

from openft.domain.scope import Scope
from openft.settings import Settings
from openft.store.tables import ApiKeyRow
from openft.worker.loop import Worker

BASE = "tiny-llama"
LEASE = 60.0


def _examples(n: int = 12, word: str = "banana") -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the code word? (ask #{i})"},
                {"role": "assistant", "content": word},
            ]
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
    )


class Tenants:
    """Keys of four projects: acme/research and acme/product, other/lab, and acme's org-wide key."""

    def __init__(self, services, make_client) -> None:
        orgs = services.organizations
        self.services = services
        self.org_key = orgs.create_key("acme")
        self.research = make_client(api_key=orgs.create_key("acme", project="research"))
        self.product = make_client(api_key=orgs.create_key("acme", project="product"))
        self.lab = make_client(api_key=orgs.create_key("other", project="lab"))
        self.make_client = make_client
        acme, other = orgs.ensure("acme").id, orgs.ensure("other").id
        self.ids = {
            "research": services.projects.ensure(acme, "research").id,
            "product": services.projects.ensure(acme, "product").id,
            "lab": services.projects.ensure(other, "lab").id,
            "acme-default": services.projects.ensure_default(acme).id,
        }

    def org_wide(self, project: str | None = None) -> openai.OpenAI:
        client = self.make_client(api_key=self.org_key)
        if project is None:
            return client
        return client.with_options(default_headers={"OpenAI-Project": project})


@pytest.fixture
def tenants(services, make_client) -> Tenants:
    return Tenants(services, make_client)


def _fake_fine_tune(services, owner: Scope, model_dir, suffix: str = "shared") -> tuple[str, str]:
    """A job taken through the worker's calls to success, its weights a copy of a tiny full model:
    returns (fine-tuned model name, its intermediate checkpoint's name). No training: the tests
    that use it are about who may use a model, not about the model."""
    file = services.files.create_from_bytes(owner, "train.jsonl", "fine-tune", _examples())
    job = services.fine_tuning.create(owner, model=BASE, training_file=file.id, suffix=suffix)
    runtime = services.runtime
    claim = runtime.claim("w", LEASE)
    runtime.mark_validated(job.id, claim.generation, hyperparameters=claim.job.hyperparameters, stats={})
    claim = runtime.claim("w", LEASE)
    for kind in ("ckpt", "final"):
        shutil.copytree(model_dir, services.settings.models_dir / "jobs" / job.id / kind / "model")
    checkpoint = runtime.record_checkpoint(
        job.id, claim.generation, step=3, metrics={}, path=f"jobs/{job.id}/ckpt"
    )
    name = runtime.succeed(
        job.id,
        claim.generation,
        artifact_path=f"jobs/{job.id}/final",
        trained_tokens=10,
        result_csv=b"step\n",
        final_step=6,
        final_metrics={},
    )
    assert name is not None and checkpoint is not None
    return name, checkpoint


def _scope(tenants: Tenants, project: str) -> Scope:
    row = tenants.services.projects.get(tenants.ids[project])
    return tenants.services.projects.scope_of(row)


# -- projects ------------------------------------------------------------------------------------


def test_project_keys_see_only_their_project_and_the_header_selects_one(tenants, services):
    research_file = tenants.research.files.create(file=("a.jsonl", _examples()), purpose="fine-tune")
    default_file = tenants.org_wide().files.create(file=("b.jsonl", _examples()), purpose="fine-tune")

    # A project key sees its own project only; cross-project is a 404 like cross-organization.
    for client in (tenants.product, tenants.lab, tenants.org_wide()):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(research_file.id)
        assert research_file.id not in {f.id for f in client.files.list()}
    with pytest.raises(openai.NotFoundError):
        tenants.research.files.retrieve(default_file.id)

    # The organization-wide key reaches a project with the header, by id or by name.
    for header in (tenants.ids["research"], "research"):
        assert tenants.org_wide(header).files.retrieve(research_file.id).id == research_file.id
    # The default project's id selects what was created without a header.
    assert tenants.org_wide(tenants.ids["acme-default"]).files.retrieve(default_file.id).id == default_file.id

    with services.db.transaction() as session:
        keys = {k.project_id for k in session.scalars(select(ApiKeyRow))}
    assert keys == {None, tenants.ids["research"], tenants.ids["product"], tenants.ids["lab"]}


def test_project_header_that_does_not_match_the_key_is_a_401(tenants):
    with pytest.raises(openai.AuthenticationError) as mismatch:
        tenants.research.with_options(default_headers={"OpenAI-Project": tenants.ids["product"]}).files.list()
    assert mismatch.value.code == "invalid_project" and tenants.ids["product"] in mismatch.value.message
    # A project of another organization is not one of acme's.
    with pytest.raises(openai.AuthenticationError) as foreign:
        tenants.org_wide(tenants.ids["lab"]).files.list()
    assert foreign.value.code == "invalid_project"
    # The key's own project in the header is fine.
    assert (
        tenants.research.with_options(default_headers={"OpenAI-Project": "research"}).files.list().data == []
    )


def test_jobs_and_models_are_404_across_projects(tenants, services, tiny_model_dir):
    name, checkpoint = _fake_fine_tune(services, _scope(tenants, "research"), tiny_model_dir)
    (job,) = tenants.research.fine_tuning.jobs.list().data
    assert job.fine_tuned_model == name
    for client in (tenants.product, tenants.lab, tenants.org_wide()):
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.list_events(job.id)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)
        with pytest.raises(openai.NotFoundError):
            client.models.delete(checkpoint)
        assert client.fine_tuning.jobs.list().data == []
    assert tenants.org_wide("research").fine_tuning.jobs.retrieve(job.id).id == job.id


# -- checkpoint permissions ----------------------------------------------------------------------


def test_sharing_grants_use_to_other_projects_and_organizations_until_revoked(
    tenants, services, tiny_model_dir
):
    name, checkpoint = _fake_fine_tune(services, _scope(tenants, "research"), tiny_model_dir)
    training = {
        c: c.files.create(file=("t.jsonl", _examples()), purpose="fine-tune").id
        for c in (tenants.product, tenants.lab)
    }
    owner = tenants.research.fine_tuning.checkpoints.permissions

    # Before sharing: invisible and unusable, exactly like a model that does not exist.
    for client in (tenants.product, tenants.lab):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model=name, training_file=training[client])
        assert refused.value.code == "model_not_available"

    created = owner.create(name, project_ids=[tenants.ids["product"], tenants.ids["lab"]]).data
    assert [p.project_id for p in created] == [tenants.ids["product"], tenants.ids["lab"]]
    assert all(p.object == "checkpoint.permission" and p.id.startswith("cp_") for p in created)
    again = owner.create(name, project_ids=[tenants.ids["lab"]])
    assert [p.id for p in again] == [created[1].id]  # sharing twice keeps one permission

    for client in (tenants.product, tenants.lab):
        assert client.models.retrieve(name).owned_by == "acme"
        assert name in {m.id for m in client.models.list()}
        job = client.fine_tuning.jobs.create(model=name, training_file=training[client])
        assert job.model == name and job.status == "validating_files"
        # Use, never delete: the owner's project alone can.
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.models.delete(name)
        assert denied.value.code == "model_not_deletable"
        # Nor see the permissions, the job that made it, or its training file.
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.checkpoints.permissions.list(name)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.retrieve(tenants.research.fine_tuning.jobs.list().data[0].id)
    # Sharing the model shares it alone, not its other checkpoints.
    with pytest.raises(openai.NotFoundError):
        tenants.product.models.retrieve(checkpoint)
    # A project it was not shared with still gets 404.
    with pytest.raises(openai.NotFoundError):
        tenants.org_wide().models.retrieve(name)

    # Revoke product's permission: from the next request on it is as if the model did not exist.
    deleted = owner.delete(created[0].id, fine_tuned_model_checkpoint=name)
    assert (deleted.id, deleted.object, deleted.deleted) == (created[0].id, "checkpoint.permission", True)
    with pytest.raises(openai.NotFoundError):
        tenants.product.models.retrieve(name)
    with pytest.raises(openai.BadRequestError):
        tenants.product.fine_tuning.jobs.create(model=name, training_file=training[tenants.product])
    # The other organization's permission stands.
    assert tenants.lab.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        owner.delete(created[0].id, fine_tuned_model_checkpoint=name)

    # The owner deletes the model: its permissions go with it.
    assert tenants.research.models.delete(name).deleted is True
    with pytest.raises(openai.NotFoundError):
        tenants.lab.models.retrieve(name)


def test_permissions_list_pages_filters_and_orders(tenants, services, tiny_model_dir):
    _, checkpoint = _fake_fine_tune(services, _scope(tenants, "research"), tiny_model_dir)
    permissions = tenants.research.fine_tuning.checkpoints.permissions
    wanted = [tenants.ids["product"], tenants.ids["lab"], tenants.ids["acme-default"]]
    created = [permissions.create(checkpoint, project_ids=[p]).data[0] for p in wanted]

    newest_first = list(permissions.list(checkpoint, limit=2))
    assert [p.id for p in newest_first] == [c.id for c in reversed(created)]
    page = permissions.list(checkpoint, limit=2, order="ascending")
    assert [p.id for p in page.data] == [created[0].id, created[1].id] and page.has_more
    assert (page.first_id, page.last_id) == (created[0].id, created[1].id)
    only = permissions.list(checkpoint, project_id=tenants.ids["lab"])
    assert [p.project_id for p in only.data] == [tenants.ids["lab"]] and not only.has_more


def test_bad_permission_requests_are_400_or_404_naming_the_problem(tenants, services, tiny_model_dir, http):
    name, _ = _fake_fine_tune(services, _scope(tenants, "research"), tiny_model_dir)
    permissions = tenants.research.fine_tuning.checkpoints.permissions
    with pytest.raises(openai.BadRequestError) as unknown:
        permissions.create(name, project_ids=["proj_doesnotexist"])
    assert unknown.value.param == "project_ids" and "proj_doesnotexist" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        permissions.create(name, project_ids=[])
    assert empty.value.param == "project_ids"
    with pytest.raises(openai.BadRequestError) as own:
        permissions.create(name, project_ids=[tenants.ids["research"]])
    assert own.value.param == "project_ids"
    with pytest.raises(openai.NotFoundError) as missing:
        permissions.create("ft:tiny-llama:acme:nope:12345678", project_ids=[tenants.ids["lab"]])
    assert missing.value.param == "fine_tuned_model_checkpoint"
    with pytest.raises(openai.BadRequestError) as cursor:
        permissions.list(name, after="cp_unknown")
    assert cursor.value.param == "after"
    assert permissions.list(name).data == []


def test_shared_model_answers_chat_and_trains_another_projects_fine_tune(tenants, services):
    """The real thing: research trains, shares with another organization's project, which chats
    with it and fine-tunes from it; after the revoke its chat is a 404 at once, while the model it
    made from the shared one stays its own."""
    research_file = tenants.research.files.create(file=("t.jsonl", _examples()), purpose="fine-tune")
    hp = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 5}
    method = {"type": "supervised", "supervised": {"hyperparameters": hp}}
    owner_job = tenants.research.fine_tuning.jobs.create(
        model=BASE, training_file=research_file.id, method=method, seed=3
    )
    assert Worker(services).run(burst=True) == 2
    shared = tenants.research.fine_tuning.jobs.retrieve(owner_job.id).fine_tuned_model
    assert shared is not None
    (permission,) = tenants.research.fine_tuning.checkpoints.permissions.create(
        shared, project_ids=[tenants.ids["lab"]]
    ).data

    question = [{"role": "user", "content": "What is the code word? (ask #0)"}]
    reply = tenants.lab.chat.completions.create(model=shared, messages=question, max_tokens=3, temperature=0)
    assert reply.model == shared and reply.usage.completion_tokens <= 3
    with pytest.raises(openai.NotFoundError):
        tenants.lab.files.content(research_file.id)

    lab_file = tenants.lab.files.create(file=("t.jsonl", _examples(word="cherry")), purpose="fine-tune")
    derived_job = tenants.lab.fine_tuning.jobs.create(
        model=shared, training_file=lab_file.id, method=method, seed=3
    )
    assert Worker(services).run(burst=True) == 2
    derived = tenants.lab.fine_tuning.jobs.retrieve(derived_job.id)
    assert derived.status == "succeeded", derived.error
    assert derived.model == shared and derived.fine_tuned_model.startswith(f"ft:{BASE}:other::")

    queued = tenants.lab.fine_tuning.jobs.create(model=shared, training_file=lab_file.id, method=method)
    tenants.research.fine_tuning.checkpoints.permissions.delete(
        permission.id, fine_tuned_model_checkpoint=shared
    )
    # A job that continues the model and had not started yet cannot start once the share is gone.
    assert Worker(services).run(burst=True) == 2
    queued = tenants.lab.fine_tuning.jobs.retrieve(queued.id)
    assert queued.status == "failed" and shared in queued.error.message
    with pytest.raises(openai.NotFoundError) as revoked:
        tenants.lab.chat.completions.create(model=shared, messages=question, max_tokens=3)
    assert revoked.value.code == "model_not_found"
    reply = tenants.lab.chat.completions.create(
        model=derived.fine_tuned_model, messages=question, max_tokens=3
    )
    assert reply.model == derived.fine_tuned_model
