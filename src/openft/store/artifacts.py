"""Model artifacts: fine-tuned models and checkpoints, each a directory ("tree") named by a key
relative to the models directory (``jobs/<job>/final``, ``jobs/<job>/checkpoints/step-N``).

Locally the trees stay where training wrote them, under ``OPENFT_HOME/models``. In object storage a
tree is published as a prefix: its files go under ``<key>/<upload>/``, then ``<key>/MANIFEST.json``,
written last, names that upload and records each file's size and sha256. A tree without a manifest
is torn and never read; two writers of one key never mix their files (each has its own upload), and
readers take trees through the local cache, which checks every file against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from openft.store.cache import RECORD, CacheIntegrityError, Expected, LocalCache
from openft.store.s3 import CHUNK, S3Bucket

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
MANIFESTS_REMEMBERED = 1024
_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}"


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid artifact key {key!r}")
    return key


class Artifacts(Protocol):
    """What the worker, the Models service and the sweeps need of the artifact store."""

    remote: bool

    def key_for(self, local: Path) -> str: ...

    def local_dir(self, key: str) -> Path: ...

    def publish(self, local: Path, key: str, *, before_commit: Callable[[], None] | None = None) -> None: ...

    def latest_checkpoint(self, job_id: str) -> tuple[int, str] | None: ...

    def restore(self, key: str, dest: Path) -> None: ...

    def prune_checkpoints(self, job_id: str, keep: set[str], *, keep_latest: bool = True) -> int: ...

    def delete(self, key: str) -> None: ...


class LocalArtifacts:
    """Trees on the local (or shared, mounted) models directory: published where they were written."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def key_for(self, local: Path) -> str:
        """The key of a directory under the models directory (an absolute path otherwise: model rows
        written before keys existed hold absolute paths, and ``local_dir`` passes them through)."""
        try:
            return local.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(local)

    def local_dir(self, key: str) -> Path:
        return self.root / key

    def publish(self, local: Path, key: str, *, before_commit: Callable[[], None] | None = None) -> None:
        """Nothing to copy: training wrote the tree in place, atomically, marker last."""

    def latest_checkpoint(self, job_id: str) -> tuple[int, str] | None:
        return None  # the job's checkpoints are already where training resumes from

    def restore(self, key: str, dest: Path) -> None:
        raise NotImplementedError("local trees are never restored: they are in place")

    def prune_checkpoints(self, job_id: str, keep: set[str], *, keep_latest: bool = True) -> int:
        return 0  # the training process prunes its own checkpoint directory

    def delete(self, key: str) -> None:
        root = self.root.resolve()
        target = self.local_dir(key).resolve()
        # Never follow a stored path outside the models directory (or onto the directory itself).
        if target == root or root not in target.parents:
            return
        shutil.rmtree(target, ignore_errors=True)


class S3Artifacts:
    """Trees under ``<prefix>models/`` of a bucket, read through the local cache."""

    remote = True
    NAMESPACE = "models/"

    def __init__(self, bucket: S3Bucket, cache: LocalCache, local_root: Path) -> None:
        self.bucket = bucket
        self.cache = cache
        self.local_root = local_root  # where this machine's training writes trees before publishing
        self._manifests: dict[str, dict[str, Any]] = {}

    def _name(self, key: str) -> str:
        return self.NAMESPACE + check_key(key)

    def key_for(self, local: Path) -> str:
        return check_key(local.resolve().relative_to(self.local_root.resolve()).as_posix())

    # -- reading ---------------------------------------------------------------------------------

    def manifest(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.bucket.get_bytes(f"{self._name(key)}/{MANIFEST}"))
        except FileNotFoundError:
            return None

    def local_dir(self, key: str) -> Path:
        """The tree, complete and checked, in the local cache; ``FileNotFoundError`` if the store
        has no complete tree under ``key``."""
        for attempt in (1, 2):
            # A tree's manifest is read once per process (a chat request need not ask the bucket):
            # the database, checked first by every caller, says whether the tree still exists.
            manifest = self._manifests.get(key) if attempt == 1 else None
            if manifest is None:
                manifest = self.manifest(key)
            if manifest is None:
                self._manifests.pop(key, None)
                raise FileNotFoundError(f"no complete tree {key!r} in {self.bucket.describe()}")
            if len(self._manifests) >= MANIFESTS_REMEMBERED:
                self._manifests.clear()
            self._manifests[key] = manifest
            upload = manifest["upload"]
            files = {rel: Expected(f["bytes"], f["sha256"]) for rel, f in manifest["files"].items()}
            base = f"{self._name(key)}/{upload}/"
            try:
                return self.cache.get(
                    key, upload, files, lambda rel, base=base: self.bucket.get_chunks(base + rel)
                )
            except (FileNotFoundError, CacheIntegrityError):
                if attempt == 2:
                    raise
                # Published again while we downloaded (the same step saved twice): read the new one.
                log.info("tree %s changed while it was downloaded; fetching it again", key)
        raise AssertionError("unreachable")

    def latest_checkpoint(self, job_id: str) -> tuple[int, str] | None:
        """(step, key) of the job's newest complete checkpoint in the store."""
        steps = []
        for name in self.bucket.children(f"{self.NAMESPACE}jobs/{job_id}/checkpoints/"):
            if match := _STEP.match(name):
                steps.append(int(match.group(1)))
        for step in sorted(steps, reverse=True):
            key = checkpoint_key(job_id, step)
            if self.bucket.head(f"{self._name(key)}/{MANIFEST}") is not None:
                return step, key
        return None

    def restore(self, key: str, dest: Path) -> None:
        """Place the tree at ``dest`` (absent): hard links to the cached copy where the filesystem
        allows (nothing is copied), then one rename, so ``dest`` appears whole."""
        source = self.local_dir(key)
        temp = dest.with_name(f".tmp-restore-{dest.name}-{secrets.token_hex(4)}")
        try:
            for path in sorted(source.rglob("*")):
                if path.is_dir() or path.name == RECORD:
                    continue
                target = temp / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
            os.rename(temp, dest)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------------

    def publish(self, local: Path, key: str, *, before_commit: Callable[[], None] | None = None) -> None:
        """Upload the tree at ``local`` under ``key``: every file, then the manifest.
        ``before_commit`` runs just before the manifest is written and may raise to abandon the
        tree (a worker that lost its lease); the files already sent are then removed."""
        name = self._name(key)
        upload = f"u{time.time_ns():x}{secrets.token_hex(4)}"
        files: dict[str, dict[str, Any]] = {}
        try:
            for path in sorted(local.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(local).as_posix()
                with open(path, "rb") as handle:
                    size, sha256 = self.bucket.put(
                        f"{name}/{upload}/{rel}", iter(lambda h=handle: h.read(CHUNK), b"")
                    )
                files[rel] = {"bytes": size, "sha256": sha256}
            if not files:
                # A directory that vanished (rglob of a missing path yields nothing): never commit an
                # empty tree, which would look complete to every resume.
                raise FileNotFoundError(f"nothing to publish at {local}")
            if before_commit is not None:
                before_commit()
            manifest = {"key": key, "upload": upload, "files": files, "created_at": int(time.time())}
            self.bucket.put_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
            self._manifests.pop(key, None)
        except BaseException:
            self.bucket.delete_many(f"{name}/{upload}/{rel}" for rel in files)
            raise
        # Earlier uploads of the same key (a step saved again) are nobody's now.
        stale = [
            n
            for n, _, _ in self.bucket.list(f"{name}/")
            if not n.startswith(f"{name}/{upload}/") and n != f"{name}/{MANIFEST}"
        ]
        self.bucket.delete_many(stale)

    # -- deleting --------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Manifest first (the tree stops being complete at once), then its files."""
        name = self._name(key)
        manifest = self.manifest(key)
        self.bucket.delete(f"{name}/{MANIFEST}")
        self.bucket.delete_many(n for n, _, _ in self.bucket.list(f"{name}/"))
        self._manifests.pop(key, None)
        if manifest is not None:
            self.cache.forget(key, manifest["upload"])

    def prune_checkpoints(self, job_id: str, keep: set[str], *, keep_latest: bool = True) -> int:
        """Delete the job's checkpoint trees that are not in ``keep`` nor (``keep_latest``) its
        newest complete one, which a resume needs. Returns how many went."""
        latest = self.latest_checkpoint(job_id) if keep_latest else None
        removed = 0
        for name in self.bucket.children(f"{self.NAMESPACE}jobs/{job_id}/checkpoints/"):
            key = f"jobs/{job_id}/checkpoints/{name}"
            if key in keep or (latest is not None and key == latest[1]):
                continue
            self.delete(key)
            removed += 1
        return removed

    # -- sweeping --------------------------------------------------------------------------------

    def job_ids(self) -> list[str]:
        return self.bucket.children(f"{self.NAMESPACE}jobs/")

    def sweep_job(self, job_id: str, keep: set[str], cutoff: datetime) -> int:
        """For a job that will write nothing more: delete every object older than ``cutoff`` that
        no tree in ``keep`` needs (trees not kept, torn uploads, earlier uploads). Returns how many."""
        prefix = f"{self.NAMESPACE}jobs/{job_id}/"
        trees: dict[str, list[tuple[str, datetime]]] = {}
        for name, _, modified in self.bucket.list(prefix):
            rest = name[len(prefix) :].split("/")
            depth = 2 if rest[0] == "checkpoints" else 1
            trees.setdefault("/".join(rest[:depth]), []).append((name, modified))
        doomed: list[str] = []
        for tree, objects in trees.items():
            key = f"jobs/{job_id}/{tree}"
            needed: Callable[[str], bool] = lambda n: False  # noqa: E731
            if key in keep and (manifest := self.manifest(key)) is not None:
                live = f"{self._name(key)}/{manifest['upload']}/"
                manifest_name = f"{self._name(key)}/{MANIFEST}"
                needed = lambda n, live=live, m=manifest_name: n == m or n.startswith(live)  # noqa: E731
            doomed += [n for n, modified in objects if modified <= cutoff and not needed(n)]
        # Manifests first: a tree going away stops being complete before its files go.
        doomed.sort(key=lambda n: not n.endswith(f"/{MANIFEST}"))
        return self.bucket.delete_many(doomed)


def fetch_model_prefix(bucket: S3Bucket, path: str, cache: LocalCache) -> Path:
    """A model kept in a bucket by its operator, in the local cache: the Hugging Face directory under
    ``path/`` (returned as a directory), or the single ``.gguf`` object ``path`` (returned as a file).

    Nothing recorded a sha256 for these objects: each file is checked against its size and, for an
    object stored in one piece, the MD5 that S3 reports as its ETag. A changed object (new size or
    ETag) is a new cache entry."""
    path = path.strip("/")
    listed: dict[str, tuple[int, str]] = {}
    paginator = bucket.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket.name, Prefix=bucket.key(f"{path}/")):
        for item in page.get("Contents", ()):
            rel = item["Key"][len(bucket.key(f"{path}/")) :]
            if rel and not rel.endswith("/"):
                listed[rel] = (int(item["Size"]), item["ETag"].strip('"'))
    single = not listed and path.endswith(".gguf")
    if single:
        head = bucket.head(path)
        if head is not None:
            listed[path.rsplit("/", 1)[-1]] = (int(head["ContentLength"]), head["ETag"].strip('"'))
    if not listed:
        raise FileNotFoundError(f"nothing under s3://{bucket.name}/{bucket.key(path)}: no model there")
    files = {
        rel: Expected(size, md5=None if "-" in etag else etag) for rel, (size, etag) in sorted(listed.items())
    }
    version = hashlib.sha256(json.dumps(sorted(listed.items())).encode()).hexdigest()[:32]
    source = (
        (lambda _: bucket.get_chunks(path)) if single else (lambda rel: bucket.get_chunks(f"{path}/{rel}"))
    )
    entry = cache.get(f"s3://{bucket.name}/{bucket.key(path)}", version, files, source)
    return entry / next(iter(files)) if single else entry
