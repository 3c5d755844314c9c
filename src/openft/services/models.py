"""Models: the configured base models and aliases, plus each organization's fine-tuned models."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from openft.errors import InvalidRequestError, NotFoundError
from openft.store import jobs as store
from openft.store.tables import JobCheckpointRow, ModelRow

if TYPE_CHECKING:
    from openft.services.context import Services

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

    # -- names -----------------------------------------------------------------------------

    def base_name(self, name: str) -> str | None:
        """The configured base model behind ``name`` (itself or an alias), or None."""
        if name in self.settings.base_models:
            return name
        return self.settings.model_aliases.get(name)

    def resolve_for_fine_tuning(self, organization_id: str, name: str) -> FineTuningTarget:
        """A base name or alias trains that base; an ``ft:`` model of the caller continues it.

        An alias keeps the caller's name in ``model`` (and so in the ``ft:`` name), as OpenAI
        reports the model that was asked for; ``base_model`` is the open model that trains."""
        base = self.base_name(name)
        if base is not None:
            return FineTuningTarget(model=name, base_model=base)
        with self.db.read() as session:
            row = store.get_model(session, name)
        if row is not None and row.organization_id == organization_id:
            return FineTuningTarget(model=name, base_model=row.base_model, parent_model=name)
        raise InvalidRequestError(
            f"Model {name} is not available for fine-tuning or does not exist. Available base models: "
            f"{', '.join(self._public_base_names()) or 'none'}; or pass one of your ft: models.",
            param="model",
            code="model_not_available",
        )

    def resolve_for_inference(self, organization_id: str, name: str) -> tuple[str, Path | None]:
        """``(base model name, artifact directory)``; the directory is None for a base model or alias.

        Raises ``NotFoundError`` (code ``model_not_found``) for unknown or foreign names.
        """
        base = self.base_name(name)
        if base is not None:
            return base, None
        with self.db.read() as session:
            row = store.get_model(session, name)
        if row is None or row.organization_id != organization_id:
            raise model_not_found(name)
        return row.base_model, self.artifact_dir(row.path)

    def artifact_dir(self, path: str) -> Path:
        """Model rows store artifact directories relative to the models dir (absolute ones pass)."""
        return self.settings.models_dir / path

    # -- the Models API --------------------------------------------------------------------

    def list(self, organization_id: str) -> list[ModelInfo]:
        """Base models and aliases first (owned by ``system``), then the caller's models, oldest first."""
        out = [ModelInfo(name, self._base_created(name), SYSTEM_OWNER) for name in self._public_base_names()]
        with self.db.read() as session:
            owner = store.org_slug(session, organization_id)
            rows = store.list_models(session, organization_id)
        out.extend(ModelInfo(row.id, row.created_at, owner) for row in rows)
        return out

    def retrieve(self, organization_id: str, name: str) -> ModelInfo:
        base = self.base_name(name)
        if base is not None:
            return ModelInfo(name, self._base_created(base), SYSTEM_OWNER)
        with self.db.read() as session:
            row = store.get_model(session, name)
            if row is None or row.organization_id != organization_id:
                raise model_not_found(name)
            return ModelInfo(row.id, row.created_at, store.org_slug(session, organization_id))

    def delete(self, organization_id: str, name: str) -> str:
        """Delete one of the caller's ``ft:`` models (with its checkpoints) or one checkpoint.

        Rows go first, in one transaction; the artifact directories after it commits, so a failure
        to remove files never leaves a listed model without weights.
        """
        if self.base_name(name) is not None:
            raise InvalidRequestError(
                f"The model '{name}' is a base model configured on this server and cannot be deleted. "
                "Only fine-tuned models (ft:...) can be deleted; remove base models from OPENFT_BASE_MODELS.",
                param="model",
                code="model_not_deletable",
            )
        paths: list[str] = []
        with self.db.transaction() as session:
            row = store.get_model(session, name)
            if row is None or row.organization_id != organization_id:
                raise model_not_found(name)
            paths.append(row.path)
            if row.kind == "fine_tune":
                # Its checkpoints are snapshots of the same run: they go with it.
                checkpoints = session.scalars(
                    select(ModelRow).where(ModelRow.job_id == row.job_id, ModelRow.kind == "checkpoint")
                ).all()
                paths.extend(c.path for c in checkpoints)
                session.execute(
                    delete(ModelRow).where(ModelRow.job_id == row.job_id, ModelRow.kind == "checkpoint")
                )
                session.execute(delete(JobCheckpointRow).where(JobCheckpointRow.job_id == row.job_id))
            else:
                session.execute(
                    delete(JobCheckpointRow).where(JobCheckpointRow.fine_tuned_model_checkpoint == row.id)
                )
            session.execute(delete(ModelRow).where(ModelRow.pk == row.pk))
        for path in paths:
            self._remove_artifacts(path)
        return name

    # -- internals -------------------------------------------------------------------------

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

    def _remove_artifacts(self, path: str) -> None:
        models_dir = self.settings.models_dir.resolve()
        target = self.artifact_dir(path).resolve()
        # Never follow a stored path outside the models directory (or onto the directory itself).
        if target == models_dir or models_dir not in target.parents:
            return
        shutil.rmtree(target, ignore_errors=True)
