"""Fixtures for serving tests: adapters and a full model built offline, a chat app on a real socket, schemas."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from openapi_schema_validator import OAS31Validator

from openft.serving.engine import InferenceEngine
from openft.serving.protocols import ResolvedModel, StaticModelResolver

# OpenAI's schemas live in the repository (tests/spec/README.md says where they come from).
SPEC_PATH = Path(__file__).resolve().parents[1] / "spec" / "openai-openapi-subset.yaml"


def _build_adapter(base: Path, path: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base)
        # Random A and B (not B = 0), so the adapter really changes the base model's output.
        config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: intra-op threads only contend (4x slower), so use one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different LoRA adapters on the tiny model; read-only."""
    root = tmp_path_factory.mktemp("adapters")
    return [_build_adapter(tiny_model_dir, root / f"adapter-{i}", seed=100 + i) for i in range(2)]


@pytest.fixture(scope="session")
def full_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full model with its own weights (a stand-in for a full fine-tune of the tiny model); read-only."""
    from openft.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("full-model"), seed=7)


@pytest.fixture
def models(tiny_model_dir: Path, adapter_dirs: list[Path], full_model_dir: Path) -> dict[str, ResolvedModel]:
    base = str(tiny_model_dir)
    table = [
        ResolvedModel("tiny", base),
        ResolvedModel("ft:tiny:org:a:aaaaaaaa", base, adapter_path=str(adapter_dirs[0])),
        ResolvedModel("ft:tiny:org:b:bbbbbbbb", base, adapter_path=str(adapter_dirs[1])),
        ResolvedModel("ft:tiny:org:full:ffffffff", base, full_model_path=str(full_model_dir)),
    ]
    return {m.name: m for m in table}


def make_app(engine: InferenceEngine, models: dict[str, ResolvedModel]) -> FastAPI:
    """The chat router alone, with the state and error envelope that create_app provides."""
    from openft.api import errors
    from openft.api.chat import router

    app = FastAPI()
    app.include_router(router)
    app.state.inference = engine
    app.state.model_resolver = StaticModelResolver(models)
    errors.install(app)
    return app


@pytest.fixture
def chat_app() -> Callable[[InferenceEngine, dict[str, ResolvedModel]], FastAPI]:
    return make_app


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], str]]:
    """Start an app on an ephemeral port in a thread; return its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: FastAPI) -> str:
        # The socket listens before uvicorn runs, so a client can connect at once: no readiness polling.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def engine() -> InferenceEngine:
    return InferenceEngine(max_adapters=4)


@pytest.fixture
def base_url(serve, engine: InferenceEngine, models: dict[str, ResolvedModel]) -> str:
    return serve(make_app(engine, models))


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with httpx.Client(timeout=60) as http:
        yield openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", http_client=http, max_retries=0)


@pytest.fixture(scope="session")
def openapi_spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def _nullable_as_anyof(node):
    """The subset says OpenAPI 3.1 yet marks many nulls the 3.0 way (`nullable: true`), which 3.1 ignores
    and 3.0 validators can't combine with 3.1's `type: 'null'`; rewrite them as `anyOf [schema, null]`."""
    if isinstance(node, list):
        return [_nullable_as_anyof(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_as_anyof(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    node.pop("nullable", None)
    return node


@pytest.fixture(scope="session")
def assert_schema(openapi_spec: dict) -> Callable[[dict, str], None]:
    """assert_schema(obj, "CreateChatCompletionResponse"): validate against a component, $refs resolved."""
    validators: dict[str, OAS31Validator] = {}

    def check(obj: dict, component: str) -> None:
        if component not in validators:
            # The whole document is the root, so "#/components/..." references resolve within it.
            document = _nullable_as_anyof(openapi_spec)
            validators[component] = OAS31Validator({**document, "$ref": f"#/components/schemas/{component}"})
        errors = sorted(validators[component].iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)

    return check
