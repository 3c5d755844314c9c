"""Fixtures for API, service and store tests: settings, a fresh app, the official SDK, databases, the spec."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.testclient import TestClient

from openft.api.app import create_app
from openft.settings import Settings

# OpenAI's schemas live in the repository (tests/spec/README.md says where they come from).
SPEC_PATH = Path(__file__).resolve().parents[1] / "spec" / "openai-openapi-subset.yaml"

# (method, path regex under /v1) -> the components.schemas name its 2xx JSON body must match.
# None means "not JSON" (raw bytes). Extend this table for new endpoints; an unlisted endpoint fails.
RESPONSE_SCHEMAS: dict[tuple[str, str], str | None] = {
    ("POST", r"/files"): "OpenAIFile",
    ("GET", r"/files"): "ListFilesResponse",
    ("GET", r"/files/[^/]+"): "OpenAIFile",
    ("DELETE", r"/files/[^/]+"): "DeleteFileResponse",
    ("GET", r"/files/[^/]+/content"): None,
    ("POST", r"/uploads"): "Upload",
    ("POST", r"/uploads/[^/]+/parts"): "UploadPart",
    ("POST", r"/uploads/[^/]+/complete"): "Upload",
    ("POST", r"/uploads/[^/]+/cancel"): "Upload",
    ("POST", r"/fine_tuning/jobs"): "FineTuningJob",
    ("GET", r"/fine_tuning/jobs"): "ListPaginatedFineTuningJobsResponse",
    ("GET", r"/fine_tuning/jobs/[^/]+"): "FineTuningJob",
    ("POST", r"/fine_tuning/jobs/[^/]+/(cancel|pause|resume)"): "FineTuningJob",
    ("GET", r"/fine_tuning/jobs/[^/]+/events"): "ListFineTuningJobEventsResponse",
    ("GET", r"/fine_tuning/jobs/[^/]+/checkpoints"): "ListFineTuningJobCheckpointsResponse",
    ("GET", r"/models"): "ListModelsResponse",
    ("GET", r"/models/.+"): "Model",
    ("DELETE", r"/models/.+"): "DeleteModelResponse",
    ("POST", r"/fine_tuning/checkpoints/.+/permissions"): "ListFineTuningCheckpointPermissionResponse",
    ("GET", r"/fine_tuning/checkpoints/.+/permissions"): "ListFineTuningCheckpointPermissionResponse",
    (
        "DELETE",
        r"/fine_tuning/checkpoints/.+/permissions/[^/]+",
    ): "DeleteFineTuningCheckpointPermissionResponse",
    ("POST", r"/chat/completions"): "CreateChatCompletionResponse",  # non-streaming calls only
    ("POST", r"/fine_tuning/alpha/graders/run"): "RunGraderResponse",
    ("POST", r"/fine_tuning/alpha/graders/validate"): "ValidateGraderResponse",
}

# Fields the real API sends as null although the 3.1 subset types them as non-nullable (it was
# converted from 3.0 and lost `nullable`). We send every field, null where unknown, as OpenAI does.
NULLABLE_IN_PRACTICE: dict[str, tuple[str, ...]] = {
    "OpenAIFile": ("expires_at", "status_details"),
    "ListFilesResponse": ("first_id", "last_id"),
}


def _load_spec() -> dict:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for name, fields in NULLABLE_IN_PRACTICE.items():
        for field in fields:
            schemas[name]["properties"][field] = {
                "anyOf": [schemas[name]["properties"][field], {"type": "null"}]
            }

    def lift_nullable(node):
        # 3.0's `allOf: [X, {nullable: true}]` means "X or null"; 3.1 validators ignore `nullable`.
        if isinstance(node, dict):
            all_of = node.get("allOf")
            if isinstance(all_of, list) and {"nullable": True} in all_of:
                rest = [part for part in all_of if part != {"nullable": True}]
                node.pop("allOf")
                node["anyOf"] = [{"allOf": rest}, {"type": "null"}]
            for value in node.values():
                lift_nullable(value)
        elif isinstance(node, list):
            for value in node:
                lift_nullable(value)

    lift_nullable(schemas)

    def exclusive_bounds(node):
        # 3.0's boolean `exclusiveMinimum: true` beside `minimum` is a number in 3.1; left as is, a
        # 3.1 validator reads `true` as 1 and refuses every beta or learning_rate_multiplier <= 1.
        if isinstance(node, dict):
            for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                if node.get(flag) is True and bound in node:
                    node[flag] = node.pop(bound)
            for value in node.values():
                exclusive_bounds(value)
        elif isinstance(node, list):
            for value in node:
                exclusive_bounds(value)

    exclusive_bounds(schemas)
    # What the real API sends beyond the subset: a job's error object with null members when it
    # has not failed, and the "paused" status that /pause returns (the spec's own example shows it).
    job = schemas["FineTuningJob"]["properties"]
    for member in ("code", "message"):
        job["error"]["anyOf"][0]["properties"][member] = {"type": ["string", "null"]}
    job["status"]["enum"] = [*job["status"]["enum"], "paused"]
    # openft's extension integration {"type": "mlflow", "mlflow": {...}} beside OpenAI's wandb one.
    wandb_only = schemas["FineTuningIntegration"]
    schemas["FineTuningIntegration"] = {
        "anyOf": [
            wandb_only,
            {
                "type": "object",
                "required": ["type", "mlflow"],
                "properties": {
                    "type": {"enum": ["mlflow"]},
                    "mlflow": {
                        "type": "object",
                        "required": ["experiment"],
                        "properties": {
                            "experiment": {"type": "string"},
                            "run_name": {"type": ["string", "null"]},
                            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        ]
    }
    # A multi grader's `graders` is typed as one grader in the subset, but OpenAI's graders guide,
    # its cookbook and real jobs send a map of variable name -> grader (calculate_output uses the
    # names); the API reference's own example sends a list. openft echoes the shape it was sent.
    multi = schemas["GraderMulti"]["properties"]
    one_grader = multi["graders"]
    multi["graders"] = {
        "anyOf": [
            one_grader,
            {"type": "array", "items": one_grader},
            {"type": "object", "additionalProperties": one_grader},
        ]
    }
    return spec


class OpenAPI:
    """The reference spec, able to validate a JSON body against one of its component schemas."""

    URI = "urn:openft:openai-openapi-subset"

    def __init__(self) -> None:
        self.spec = _load_spec()
        assert self.spec["openapi"].startswith("3.1"), "the subset changed OAS version; switch validator"
        resource = Resource.from_contents(self.spec, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(self.URI, resource)

    def errors(self, schema_name: str, body) -> list[str]:
        assert schema_name in self.spec["components"]["schemas"], f"no schema {schema_name!r} in the subset"
        validator = OAS31Validator(
            {"$ref": f"{self.URI}#/components/schemas/{schema_name}"}, registry=self.registry
        )
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(body)
        ]

    def assert_matches(self, schema_name: str, body) -> None:
        problems = self.errors(schema_name, body)
        assert not problems, f"body does not match {schema_name}: {problems}\nbody: {body}"


def schema_for(method: str, path: str) -> str | None:
    """The schema name registered for a response; raises KeyError for an unregistered endpoint."""
    relative = path.removeprefix("/v1")
    for (m, pattern), name in RESPONSE_SCHEMAS.items():
        if m == method and re.fullmatch(pattern, relative):
            return name
    raise KeyError(f"{method} {path} is not in RESPONSE_SCHEMAS (tests/api/conftest.py); register it")


@pytest.fixture(scope="session")
def openapi() -> OpenAPI:
    return OpenAPI()


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(home=home, database_url=f"sqlite:///{home / 'openft.db'}")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.postgres)])
def settings_on_every_storage(request, tmp_path, monkeypatch) -> Settings:
    """For modules whose tests must hold on every storage (they override ``settings`` with it): the
    local directory with SQLite, and an S3 bucket on a real S3-protocol server with PostgreSQL."""
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    if request.param == "local":
        return Settings(home=home, database_url=f"sqlite:///{home / 'openft.db'}")
    return Settings(
        home=home,
        database_url=request.getfixturevalue("postgres_url"),
        **request.getfixturevalue("s3_storage"),
    )


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    app.state.services.close()


@pytest.fixture
def services(app):
    return app.state.services


class _SpecChecker:
    """An httpx response hook: every response a test receives is checked against the spec."""

    def __init__(self, openapi: OpenAPI) -> None:
        self.openapi = openapi
        self.problems: list[str] = []

    def __call__(self, response: httpx2.Response) -> None:
        response.read()
        request = response.request
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        if "x-request-id" not in response.headers:
            self.problems.append(f"{where}: no x-request-id header")
        try:
            name = (
                "ErrorResponse"
                if response.status_code >= 400
                else schema_for(request.method, request.url.path)
            )
        except KeyError as exc:
            self.problems.append(str(exc))
            return
        if name is None:
            return
        try:
            body = response.json()
        except ValueError:
            self.problems.append(f"{where}: body is not JSON: {response.text[:200]!r}")
            return
        self.problems.extend(f"{where}: {p}" for p in self.openapi.errors(name, body))


@pytest.fixture
def spec_checker(openapi) -> _SpecChecker:
    """Collects spec violations of every response; make_client fails the test if any were found."""
    return _SpecChecker(openapi)


@pytest.fixture
def make_client(app, spec_checker) -> Iterator[Callable[..., openai.OpenAI]]:
    """``make_client(api_key="...")``: an SDK client on the in-process app, responses spec-checked."""
    checker = spec_checker
    http_clients: list[TestClient] = []

    def make(api_key: str = "test") -> openai.OpenAI:
        http = TestClient(app, base_url="http://testserver", raise_server_exceptions=False)
        http.event_hooks = {"request": [], "response": [checker]}
        http_clients.append(http)
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=api_key, max_retries=0, http_client=http
        )

    yield make
    for http in http_clients:
        http.close()
    assert not checker.problems, "responses that break the OpenAPI subset:\n" + "\n".join(checker.problems)


@pytest.fixture
def client(make_client) -> openai.OpenAI:
    return make_client()


@pytest.fixture
def http(client) -> httpx2.Client:
    """The raw HTTP client under ``client`` (same hooks), for requests the SDK cannot make."""
    return client._client
