"""The Services container: settings, database, storage (blobs, artifacts) and one service object per noun."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from openft.services.auth import AuthService
from openft.services.checkpoint_permissions import CheckpointPermissionService
from openft.services.files import FileService
from openft.services.fine_tuning import FineTuningService
from openft.services.graders import GraderService
from openft.services.job_runtime import JobRuntime
from openft.services.models import ModelService
from openft.services.operator_metrics import OperatorMetricsService
from openft.services.organizations import OrganizationService
from openft.services.projects import ProjectService
from openft.services.storage import StorageService
from openft.services.uploads import UploadService
from openft.services.webhooks import WebhookService
from openft.services.workers import WorkerRegistry
from openft.settings import Settings
from openft.store.artifacts import Artifacts, LocalArtifacts
from openft.store.blobs import Blobs
from openft.store.db import Database
from openft.store.storage import open_storage

T = TypeVar("T")


class service(Generic[T]):  # noqa: N801 - reads as a declaration: ``files = service(FileService)``
    """Builds ``factory(services)`` on first access and caches it on the instance.

    Non-data descriptor: a test may replace a service with ``services.runtime = fake``.
    """

    def __init__(self, factory: type[T]) -> None:
        self.factory = factory

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> service[T]: ...
    @overload
    def __get__(self, obj: Any, owner: type) -> T: ...
    def __get__(self, obj: Any, owner: type) -> T | service[T]:
        if obj is None:
            return self
        value = self.factory(obj)
        obj.__dict__[self.name] = value
        return value


@dataclass
class Services:
    """Everything a route, the worker or the CLI needs; built once per process (or per test)."""

    settings: Settings
    db: Database
    blobs: Blobs
    # None: the local models directory (a Services built by hand, as tests do)
    artifacts: Artifacts = None  # type: ignore[assignment]

    # One line per service. Each factory takes this Services object.
    organizations = service(OrganizationService)
    projects = service(ProjectService)
    auth = service(AuthService)
    files = service(FileService)
    uploads = service(UploadService)
    models = service(ModelService)
    fine_tuning = service(FineTuningService)
    runtime = service(JobRuntime)
    checkpoint_permissions = service(CheckpointPermissionService)
    webhooks = service(WebhookService)
    operator_metrics = service(OperatorMetricsService)
    storage = service(StorageService)
    workers = service(WorkerRegistry)
    graders = service(GraderService)

    def __post_init__(self) -> None:
        if self.artifacts is None:
            self.artifacts = LocalArtifacts(self.settings.models_dir)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Open the database (migrated), the storage (temporaries cleaned) and the default organization."""
        db = Database(settings.database_url)
        db.migrate()
        storage = open_storage(settings)
        storage.blobs.clean_temp()
        services = cls(settings=settings, db=db, blobs=storage.blobs, artifacts=storage.artifacts)
        services.organizations.ensure_default()
        return services

    def close(self) -> None:
        if "webhooks" in self.__dict__:
            self.webhooks.close()
        self.db.dispose()
