"""Opens the storage that ``OPENFT_STORAGE_URL`` names: blobs and artifacts on the local directory
under ``OPENFT_HOME`` (the default), or in an S3-compatible bucket with a local cache; and fetches
base models that ``OPENFT_BASE_MODELS`` places in a bucket."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from openft.settings import Settings
from openft.store.artifacts import Artifacts, LocalArtifacts, S3Artifacts, fetch_model_prefix
from openft.store.blobs import Blobs, BlobStore, S3BlobStore
from openft.store.cache import LocalCache
from openft.store.s3 import S3Bucket, S3Location, connect


@dataclass(frozen=True)
class Storage:
    blobs: Blobs
    artifacts: Artifacts


def open_storage(settings: Settings) -> Storage:
    """Local directories, or the bucket (checked reachable: a wrong URL fails at start-up)."""
    if settings.storage_url is None:
        return Storage(BlobStore(settings.files_dir), LocalArtifacts(settings.models_dir))
    bucket = S3Bucket(connect(settings.s3_endpoint_url), S3Location.parse(settings.storage_url))
    bucket.check()
    cache = LocalCache(settings.cache_dir, settings.cache_max_bytes)
    return Storage(S3BlobStore(bucket, cache), S3Artifacts(bucket, cache, settings.models_dir))


def is_remote_source(source: str) -> bool:
    return str(source).startswith("s3://")


def model_fetcher(settings: Settings) -> Callable[[str], Path]:
    """Fetches ``s3://bucket/path`` base-model sources (``OPENFT_BASE_MODELS``) into this machine's
    cache, with the storage's endpoint and credentials; the client is made on first use."""
    clients: list = []

    def fetch(url: str) -> Path:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
            raise FileNotFoundError(f"a base model in a bucket is named s3://bucket/path, not {url!r}")
        if not clients:
            clients.append(connect(settings.s3_endpoint_url))
        bucket = S3Bucket(clients[0], S3Location(parsed.netloc, ""))
        return fetch_model_prefix(
            bucket, parsed.path, LocalCache(settings.cache_dir, settings.cache_max_bytes)
        )

    return fetch
