"""Models: the configured base models and aliases, each project's fine-tuned models, and those shared
with it (usable, never deletable, by the projects they are shared with)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from openft.domain.scope import Owner, Scope
from openft.errors import InvalidRequestError, NotFoundError, PermissionDeniedError, ServerError
from openft.store import jobs as store
from openft.store import projects as project_store
from openft.store.tables import JobCheckpointRow, ModelRow

if TYPE_CHECKING:
    from openft.services.context import Services

log = logging.getLogger(__name__)

SYSTEM_OWNER = "system"


@dataclass(frozen=True)
class ModelInfo:
    """What ``/v1/models`` reports about one model."""

    id: str
    created: int
    owned_by: str


@dataclass(frozen=True)
class FineTuningTarget:
    """What a new job trains: ``model`` as the job reports it, the base weights, and the parent
    ``ft:`` model whose weights it continues from (if any)."""

    model: str
    base_model: str
    parent_model: str | None = None

    @property
    def is_alias(self) -> bool:
        return self.parent_model is None and self.model != self.base_model


def model_not_found(name: str) -> NotFoundError:
    return NotFoundError(f"The model '{name}' does not exist", param="model", code="model_not_found")


class ModelService:
    def __init__(self, services: Services) -> None:
        self.settings = services.settings
        self.db = services.db
        self.artifacts = services.artifacts

    # -- names -----------------------------------------------------------------------------

    def base_name(self, name: str) -> str | None:
        """The configured base model behind ``name`` (itself or an alias), or None."""
        if name in self.settings.base_models:
            return name
        return self.settings.model_aliases.get(name)

    def resolve_for_fine_tuning(self, owner: Owner, name: str) -> FineTuningTarget:
        """A base name or alias trains that base; an ``ft:`` model of the caller's project, or one
        shared with it, continues it.

        An alias keeps the caller's name in ``model`` (and so in the ``ft:`` name), as OpenAI
        reports the model that was asked for; ``base_model`` is the open model that trains."""
        base = self.base_name(name)
        if base is not None:
            return FineTuningTarget(model=name, base_model=base)
        with self.db.read() as session:
            row = self._usable(session, Scope.of(owner), name)
        if row is not None:
            return FineTuningTarget(model=name, base_model=row.base_model, parent_model=name)
        raise InvalidRequestError(
            f"Model {name} is not available for fine-tuning or does not exist. Available base models: "
            f"{', '.join(self._public_base_names()) or 'none'}; or pass one of your ft: models.",
            param="model",
            code="model_not_available",
        )

    def resolve_for_inference(self, owner: Owner, name: str) -> tuple[str, Path | None]:
        """``(base model name, artifact directory)``; the directory is None for a base model or alias.

        Raises ``NotFoundError`` (code ``model_not_found``) for unknown or foreign names, and for
        shared ones whose permission was revoked: access is checked on every call.
        """
        base = self.base_name(name)
        if base is not None:
            return base, None
        with self.db.read() as session:
            row = self._usable(session, Scope.of(owner), name)
        if row is None:
            raise model_not_found(name)
        return row.base_model, self.artifact_dir(row.path)

    def artifact_dir(self, path: str) -> Path:
        """The local directory of a model row's artifacts. Rows store keys relative to the models
        directory (absolute paths of older rows pass); with object storage the tree is fetched
        into this machine's cache, checked file by file."""
        try:
            return self.artifacts.local_dir(path)
        except FileNotFoundError:
            raise ServerError(
                f"The weights of this model ({path}) are missing from storage; they may have been deleted "
                "while it was in use. Try again, or fine-tune it again if it persists."
            ) from None

    # -- the Models API --------------------------------------------------------------------

    def list(self, owner: Owner) -> list[ModelInfo]:
        """Base models and aliases first (owned by ``system``), then the project's models, oldest
        first, then the models shared with it (``owned_by`` their owner's organization)."""
        scope = Scope.of(owner)
        out = [ModelInfo(name, self._base_created(name), SYSTEM_OWNER) for name in self._public_base_names()]
        with self.db.read() as session:
            rows = store.list_models(session, scope) + project_store.shared_models(session, scope)
            out.extend(
                ModelInfo(row.id, row.created_at, store.org_slug(session, row.organization_id))
                for row in rows
            )
        return out

    def retrieve(self, owner: Owner, name: str) -> ModelInfo:
        base = self.base_name(name)
        if base is not None:
            return ModelInfo(name, self._base_created(base), SYSTEM_OWNER)
        with self.db.read() as session:
            row = self._usable(session, Scope.of(owner), name)
            if row is None:
                raise model_not_found(name)
            return ModelInfo(row.id, row.created_at, store.org_slug(session, row.organization_id))

    def delete(self, owner: Owner, name: str) -> str:
        """Delete one of the caller's ``ft:`` models (with its checkpoints) or one checkpoint; the
        projects it was shared with lose it at once, and cannot delete it themselves.

        Rows go first, in one transaction; the artifact trees (directories, or objects in the bucket)
        after it commits, so a failure to remove files never leaves a listed model without weights.
        """
        if self.base_name(name) is not None:
            raise InvalidRequestError(
                f"The model '{name}' is a base model configured on this server and cannot be deleted. "
                "Only fine-tuned models (ft:...) can be deleted; remove base models from OPENFT_BASE_MODELS.",
                param="model",
                code="model_not_deletable",
            )
        paths: list[str] = []
        scope = Scope.of(owner)
        with self.db.transaction() as session:
            row = store.get_model(session, name)
            if row is None:
                raise model_not_found(name)
            if not scope.owns(row.organization_id, row.project_id):
                if project_store.is_shared_with(session, row.id, scope):
                    raise PermissionDeniedError(
                        f"The model '{name}' is shared with your project by its owner; you can use it for chat "
                        "completions and fine-tuning, but only the project that owns it can delete it.",
                        param="model",
                        code="model_not_deletable",
                    )
                raise model_not_found(name)
            paths.append(row.path)
            if row.kind == "fine_tune":
                # Its checkpoints are snapshots of the same run: they go with it.
                checkpoints = session.scalars(
                    select(ModelRow).where(ModelRow.job_id == row.job_id, ModelRow.kind == "checkpoint")
                ).all()
                paths.extend(c.path for c in checkpoints)
                store.delete_permissions(session, [c.id for c in checkpoints])
                session.execute(
                    delete(ModelRow).where(ModelRow.job_id == row.job_id, ModelRow.kind == "checkpoint")
                )
                session.execute(delete(JobCheckpointRow).where(JobCheckpointRow.job_id == row.job_id))
            else:
                session.execute(
                    delete(JobCheckpointRow).where(JobCheckpointRow.fine_tuned_model_checkpoint == row.id)
                )
            store.delete_permissions(session, [row.id])
            session.execute(delete(ModelRow).where(ModelRow.pk == row.pk))
        for path in paths:
            try:
                self.artifacts.delete(path)
            except Exception:  # the orphan sweep removes what is left
                log.exception("could not remove the artifacts %s of deleted model %s", path, name)
        return name

    # -- internals -------------------------------------------------------------------------

    def _usable(self, session, scope: Scope, name: str) -> ModelRow | None:
        """The model, if the scope's project owns it or it is shared with that project."""
        row = store.get_model(session, name)
        if row is None:
            return None
        if scope.owns(row.organization_id, row.project_id) or project_store.is_shared_with(
            session, row.id, scope
        ):
            return row
        return None

    def _public_base_names(self) -> list[str]:
        return [*self.settings.base_models, *self.settings.model_aliases]

    def _base_created(self, base: str) -> int:
        # Base models have no creation record; the source's mtime is stable and meaningful.
        source = self.settings.base_models.get(base) or self.settings.base_models.get(
            self.settings.model_aliases.get(base, ""), ""
        )
        try:
            return int(Path(source).stat().st_mtime) if source else 0
        except OSError:
            return 0
