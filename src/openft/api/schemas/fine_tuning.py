"""Wire models of the Fine-tuning API: FineTuningJob, its events and checkpoints, and the create request."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from openft.api.schemas.common import CursorPage
from openft.domain.hyperparameters import openai_view
from openft.store.tables import JobCheckpointRow, JobEventRow, JobRow


class CreateFineTuningJobRequest(BaseModel):
    """Loosely typed on purpose: the service checks each field and names it in a 400, in OpenAI's words.

    ``model`` and ``training_file`` are required; every other field accepts ``null``.
    """

    model_config = ConfigDict(extra="ignore")

    model: Any
    training_file: Any
    validation_file: Any = None
    suffix: Any = None
    seed: Any = None
    method: Any = None
    hyperparameters: Any = None
    integrations: Any = None
    metadata: Any = None


class FineTuningJobError(BaseModel):
    """All three null unless the job failed, as the real API sends it (clients test it for truthiness)."""

    code: str | None
    message: str | None
    param: str | None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningJobError
    fine_tuned_model: str | None
    finished_at: int | None
    # OpenAI's three keys. OpenAI sends them for supervised jobs only; openft sends them for DPO
    # too (they apply to both), so code that reads job.hyperparameters.n_epochs works either way.
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]]
    # {"type": t, t: {"hyperparameters": every key of the method, openft's extensions included}}
    method: dict[str, Any]
    metadata: dict[str, str] | None
    user_provided_suffix: str | None

    @classmethod
    def from_row(cls, row: JobRow) -> FineTuningJob:
        return cls(
            id=row.id,
            created_at=row.created_at,
            error=FineTuningJobError(code=row.error_code, message=row.error_message, param=row.error_param),
            fine_tuned_model=row.fine_tuned_model,
            finished_at=row.finished_at,
            hyperparameters=openai_view(row.hyperparameters),
            model=row.model,
            organization_id=row.organization_id,
            result_files=list(row.result_files or []),
            seed=row.seed,
            status=row.status,
            trained_tokens=row.trained_tokens,
            training_file=row.training_file,
            validation_file=row.validation_file,
            estimated_finish=row.estimated_finish,
            integrations=list(row.integrations or []),
            method=_method(row),
            metadata=row.job_metadata,
            user_provided_suffix=row.suffix,
        )


def _method(row: JobRow) -> dict[str, Any]:
    config: dict[str, Any] = {"hyperparameters": dict(row.hyperparameters)}
    if row.method_type == "reinforcement":
        config = {"grader": row.grader, **config, "response_format": None}
    return {"type": row.method_type, row.method_type: config}


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: JobEventRow) -> FineTuningJobEvent:
        return cls(
            id=row.id,
            created_at=row.created_at,
            level=row.level,  # type: ignore[arg-type]
            message=row.message,
            type=row.type,  # type: ignore[arg-type]
            data=row.data if row.data is not None else {},
        )


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def from_row(cls, row: JobCheckpointRow) -> FineTuningJobCheckpoint:
        return cls(
            id=row.id,
            created_at=row.created_at,
            fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
            fine_tuning_job_id=row.job_id,
            step_number=row.step_number,
            metrics=dict(row.metrics),
        )


ListPaginatedFineTuningJobsResponse = CursorPage[FineTuningJob]
ListFineTuningJobEventsResponse = CursorPage[FineTuningJobEvent]
ListFineTuningJobCheckpointsResponse = CursorPage[FineTuningJobCheckpoint]
