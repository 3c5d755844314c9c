"""Checkpoint permissions: the owning project shares a fine-tuned model or checkpoint with others.

A project it is shared with (of any organization) may use it in chat completions and as the
``model`` of its own fine-tunes; it can never delete it, nor see the job or files that made it.
Access is checked on every use, so deleting a permission takes effect at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, select

from openft import ids
from openft.domain.scope import Owner, Scope
from openft.errors import InvalidRequestError, NotFoundError
from openft.services.fine_tuning import MAX_LIMIT
from openft.store import jobs as job_store
from openft.store import projects as project_store
from openft.store.tables import CheckpointPermissionRow, ModelRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from openft.services.context import Services

PARAM = "fine_tuned_model_checkpoint"
MAX_PROJECTS = 100


@dataclass(frozen=True)
class PermissionPage:
    rows: list[CheckpointPermissionRow]
    has_more: bool


def checkpoint_not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"The fine-tuned model checkpoint '{name}' does not exist, or your project does not own it. Only "
        "the project that created a checkpoint can share it.",
        param=PARAM,
        code="model_not_found",
    )


class CheckpointPermissionService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.db = services.db

    def create(self, owner: Owner, checkpoint: str, project_ids: Any) -> list[CheckpointPermissionRow]:
        """Share ``checkpoint`` with each project; a project it is already shared with keeps its
        permission (same id). Returns one permission per requested project, in request order."""
        scope = Scope.of(owner)
        wanted = _check_project_ids(project_ids)
        own_project = self.services.projects.id_of(scope)
        with self.db.transaction() as session:
            model = self._owned(session, scope, checkpoint)
            out = []
            for i, project_id in enumerate(wanted):
                if project_id == own_project:
                    raise InvalidRequestError(
                        f"project_ids[{i}] is {project_id}, the project that owns '{checkpoint}'; share it "
                        "with other projects only.",
                        param="project_ids",
                    )
                if project_store.get(session, project_id) is None:
                    raise InvalidRequestError(
                        f"project_ids[{i}]: no project has the id {project_id!r}. Project ids look like "
                        "proj_...; `openft projects list` shows them.",
                        param="project_ids",
                    )
                row = session.scalar(
                    select(CheckpointPermissionRow).where(
                        CheckpointPermissionRow.model_id == model.id,
                        CheckpointPermissionRow.project_id == project_id,
                    )
                )
                if row is None:
                    row = CheckpointPermissionRow(
                        id=ids.checkpoint_permission_id(),
                        model_id=model.id,
                        project_id=project_id,
                        created_at=int(time.time()),
                    )
                    session.add(row)
                    session.flush()
                out.append(row)
            return out

    def list(
        self,
        owner: Owner,
        checkpoint: str,
        *,
        project_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: Literal["ascending", "descending"] | None = None,
    ) -> PermissionPage:
        scope = Scope.of(owner)
        order = order or "descending"
        if order not in ("ascending", "descending"):
            raise InvalidRequestError(
                f"Invalid value for 'order': {order!r}. Use 'ascending' or 'descending'.", param="order"
            )
        limit = 10 if limit is None else max(1, min(int(limit), MAX_LIMIT))
        table = CheckpointPermissionRow
        with self.db.transaction() as session:
            model = self._owned(session, scope, checkpoint)
            query = select(table).where(table.model_id == model.id)
            if project_id:
                query = query.where(table.project_id == project_id)
            if after:
                after_pk = session.scalar(
                    select(table.pk).where(table.model_id == model.id, table.id == after)
                )
                if after_pk is None:
                    raise InvalidRequestError(
                        f"after={after} is not a permission of '{checkpoint}'; pass the last_id of the previous "
                        "page.",
                        param="after",
                    )
                query = query.where(table.pk > after_pk if order == "ascending" else table.pk < after_pk)
            query = query.order_by(table.pk.asc() if order == "ascending" else table.pk.desc())
            rows = list(session.scalars(query.limit(limit + 1)))
        return PermissionPage(rows[:limit], len(rows) > limit)

    def delete(self, owner: Owner, checkpoint: str, permission_id: str) -> str:
        """Revoke one permission: from the next request on, the project can no longer use the model."""
        scope = Scope.of(owner)
        with self.db.transaction() as session:
            model = self._owned(session, scope, checkpoint)
            result = session.execute(
                delete(CheckpointPermissionRow).where(
                    CheckpointPermissionRow.model_id == model.id, CheckpointPermissionRow.id == permission_id
                )
            )
            if result.rowcount != 1:
                raise NotFoundError(
                    f"No permission {permission_id} on '{checkpoint}'. List them with GET "
                    f"/v1/fine_tuning/checkpoints/{checkpoint}/permissions.",
                    param="permission_id",
                )
        return permission_id

    def _owned(self, session: Session, scope: Scope, checkpoint: str) -> ModelRow:
        row = job_store.get_model(session, checkpoint)
        if row is None or not scope.owns(row.organization_id, row.project_id):
            raise checkpoint_not_found(checkpoint)
        return row


def _check_project_ids(project_ids: Any) -> list[str]:
    if not isinstance(project_ids, list) or not project_ids:
        raise InvalidRequestError(
            "project_ids must be a non-empty list of project ids (proj_...).", param="project_ids"
        )
    if len(project_ids) > MAX_PROJECTS:
        raise InvalidRequestError(
            f"{len(project_ids)} project ids given; share with at most {MAX_PROJECTS} at once.",
            param="project_ids",
        )
    for i, value in enumerate(project_ids):
        if not isinstance(value, str) or not value:
            raise InvalidRequestError(
                f"project_ids[{i}] must be a project id string, got {value!r}.", param="project_ids"
            )
    return list(dict.fromkeys(project_ids))
