"""Opens the storage that ``OPENFT_STORAGE_URL`` names: blobs and artifacts on the local directory
under ``OPENFT_HOME`` (the default), or in an S3-compatible bucket with a local cache."""

from __future__ import annotations

from dataclasses import dataclass

from openft.settings import Settings
from openft.store.artifacts import Artifacts, LocalArtifacts, S3Artifacts
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
