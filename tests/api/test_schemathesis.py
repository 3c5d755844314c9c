"""A bounded, deterministic schemathesis run over every operation the app serves reports no 5xx,
on SQLite and PostgreSQL.

Cases come from OpenAI's own schemas (tests/spec) for each operation the app implements, and from
the app's own OpenAPI (/v1/openapi.json) for any operation the subset lacks. Each operation is
fuzzed in schemathesis's positive and negative modes, with random path parameters and again with
the ids of real objects (a file, a job, a pending upload, a fine-tuned model), so that handlers
get past their 404s. Hypothesis is derandomized and bounded: the same cases on every run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from openft.settings import DEFAULT_BASE_MODEL, Settings
from openft.store.tables import ModelRow

SPEC_PATH = Path(__file__).resolve().parents[1] / "spec" / "openai-openapi-subset.yaml"
EXAMPLES = 12  # per operation, mode and set of path parameters
LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(home=tmp_path / "openft-home", database_url=database_url)


def _key(method: str, path: str) -> tuple[str, str]:
    return method.upper(), re.sub(r"\{[^}]+\}", "{}", path)


def _operations(app) -> list:
    """Every operation the app serves under /v1: from OpenAI's subset where it has it, else from
    the app's own OpenAPI."""
    served = {_key(m, p.removeprefix("/v1")) for p, ms in app.openapi()["paths"].items() for m in ms}
    served.discard(("GET", "/openapi.json"))
    subset = schemathesis.openapi.from_dict(yaml.safe_load(SPEC_PATH.read_text()))
    operations = [
        op for op in (r.ok() for r in subset.get_all_operations()) if _key(op.method, op.path) in served
    ]
    covered = {_key(op.method, op.path) for op in operations}
    own = schemathesis.openapi.from_dict(app.openapi())
    operations += [
        op
        for op in (r.ok() for r in own.get_all_operations())
        if _key(op.method, op.path.removeprefix("/v1")) in served - covered
    ]
    found = {_key(op.method, op.path.removeprefix("/v1")) for op in operations}
    assert found == served, f"operations without a schema to fuzz: {served - found}"
    return operations


def _real_ids(client, services) -> dict[str, str]:
    """Path parameter values naming real objects of the caller, by parameter name."""
    file = client.files.create(file=("train.jsonl", LINE * 10), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=file.id, metadata={"k": "v"})
    upload = client.uploads.create(bytes=100, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    model = f"ft:{DEFAULT_BASE_MODEL}:personal:fuzz:AbCdEfGh"
    with services.db.transaction() as session:
        session.add(
            ModelRow(
                id=model,
                organization_id=job.organization_id,
                job_id=job.id,
                kind="fine_tune",
                base_model=DEFAULT_BASE_MODEL,
                path="absent",
                created_at=job.created_at,
            )
        )
    return {
        "file_id": file.id,
        "fine_tuning_job_id": job.id,
        "job_id": job.id,
        "upload_id": upload.id,
        "model": model,
    }


def _fuzz(
    app, operation, mode: GenerationMode, path_parameters: dict | None, server_errors: list[str]
) -> int:
    """Send ``EXAMPLES`` generated requests for one operation; record any 5xx; return how many."""
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        nonlocal calls
        response = case.call(base_url="http://testserver/v1", app=app)
        calls += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{operation.label} ({mode.value}) -> {response.status_code} {response.text[:200]}\n"
                f"  {case.as_curl_command()}"
            )

    fuzz()
    return calls


def test_fuzzing_every_operation_finds_no_server_error(app, client, services):
    real = _real_ids(client, services)
    server_errors: list[str] = []
    calls = 0
    for operation in _operations(app):
        names = [p.name for p in operation.path_parameters]
        variants: list[dict | None] = [None]
        if names and all(name in real for name in names):
            variants.append({name: real[name] for name in names})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in variants:
                calls += _fuzz(app, operation, mode, path_parameters, server_errors)

    assert calls > 300
    assert not server_errors, "server errors:\n" + "\n".join(server_errors)
    # Jobs cannot be deleted: the real one still answers, and so does a filtered list (nothing a
    # fuzzed request stored broke them).
    assert client.fine_tuning.jobs.retrieve(real["job_id"]).id == real["job_id"]
    assert real["job_id"] in [j.id for j in client.fine_tuning.jobs.list(metadata={"k": "v"}).data]
