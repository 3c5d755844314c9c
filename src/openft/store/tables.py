"""SQLAlchemy tables. Rows are never wire models: services map them to the API's schemas.

Every table has an integer ``pk`` that only grows: lists order by it (newest first) because
OpenAI's string ids are random and ``created_at`` has one-second resolution.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BigInteger autoincrement is not an alias of ROWID on SQLite; this variant is.
PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class OrganizationRow(Base):
    __tablename__ = "organizations"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)  # the slug used in ft: model names
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(
        String(64), unique=True
    )  # sha256 hex; the key itself is never stored
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)
    # A project-scoped key acts in that project only; null: organization-wide (OpenAI-Project header)
    project_id: Mapped[str | None] = mapped_column(String(64))


class FileRow(Base):
    __tablename__ = "files"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))  # null: the default project
    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), default="processed")
    status_details: Mapped[str | None] = mapped_column(Text)
    blob_key: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str | None] = mapped_column(String(64))


class UploadRow(Base):
    __tablename__ = "uploads"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))  # null: the default project
    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32))  # pending | completed | cancelled | expired
    file_id: Mapped[str | None] = mapped_column(String(64))


class UploadPartRow(Base):
    __tablename__ = "upload_parts"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(256))


class JobRow(Base):
    __tablename__ = "fine_tuning_jobs"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))  # null: the default project
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(512))  # as reported: the resolved base name or the ft: parent
    base_model: Mapped[str] = mapped_column(String(512))  # registry name of the base the weights come from
    parent_model: Mapped[str | None] = mapped_column(String(512))  # ft: model this job continues, if any
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    method_type: Mapped[str] = mapped_column(String(32))
    # method hyperparameters including openft's extensions; "auto" until validation resolves them
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # reinforcement jobs: the grader object as validated at create (OpenAI's shape, known fields only)
    grader: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    integrations: Mapped[list[Any]] = mapped_column(JSON, default=list)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_param: Mapped[str | None] = mapped_column(String(128))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    # what validation learnt: n_examples, billable_tokens, n_over_limit, total_steps, ...
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The worker lease. Every write a worker makes checks lease_generation (fencing): a worker
    # whose lease was taken over can no longer change the job.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # For operators' metrics (/metrics): when validation queued the job, when a worker first
    # started it, and the training throughput of its latest step.
    queued_at: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    # Devices the job trains on (``n_devices`` resolved by validation): a GPU worker claims it only
    # with that many GPUs free. NULL until validated, and on jobs validated before the column: 1.
    n_devices: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_jobs_claim", "status", "lease_expires_at"),)


class JobEventRow(Base):
    __tablename__ = "fine_tuning_job_events"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # (job_id, dedup_key) is unique: a resumed run that repeats a step does not repeat its event
    dedup_key: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ux_events_dedup", "job_id", "dedup_key", unique=True),)


class JobCheckpointRow(Base):
    __tablename__ = "fine_tuning_job_checkpoints"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512), unique=True)
    path: Mapped[str] = mapped_column(String(1024))  # artifact directory, relative to the models dir


class ModelRow(Base):
    """A fine-tuned model or checkpoint that can be listed, served and deleted by name."""

    __tablename__ = "models"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(512), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64))  # null: the default project
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # fine_tune | checkpoint
    base_model: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(1024))  # artifact directory, relative to the models dir
    created_at: Mapped[int] = mapped_column(BigInteger)


class ProjectRow(Base):
    """A project inside an organization: objects belong to the project of the key that made them.

    Every organization has a project named ``default``; rows whose ``project_id`` is null belong to it
    (everything created before projects existed, and everything an organization-wide key creates
    without an ``OpenAI-Project`` header)."""

    __tablename__ = "projects"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("organization_id", "name", name="ux_projects_org_name"),)


class CheckpointPermissionRow(Base):
    """A fine-tuned model or checkpoint (``models.id``) shared with a project, of any organization."""

    __tablename__ = "checkpoint_permissions"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[str] = mapped_column(String(512), index=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("model_id", "project_id", name="ux_permissions_model_project"),)


class WebhookEndpointRow(Base):
    """Where an organization's job events are POSTed, signed with ``secret`` (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))  # whsec_<base64 key>
    events: Mapped[list[Any]] = mapped_column(JSON)  # event types it receives
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDeliveryRow(Base):
    """The outbox: one event for one endpoint, written in the transaction of the job's status change.

    ``event_id`` is the ``webhook-id`` of every attempt, so a receiver can deduplicate; a delivery is
    leased while an attempt is in flight, and retried with backoff until it succeeds or gives up."""

    __tablename__ = "webhook_deliveries"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    endpoint_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the event body, as sent
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        UniqueConstraint("event_id", "endpoint_id", name="ux_webhook_deliveries_event_endpoint"),
    )


class WebhookAttemptRow(Base):
    """One HTTP attempt at a delivery: what the receiver answered, or why nothing was answered."""

    __tablename__ = "webhook_attempts"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    delivery_pk: Mapped[int] = mapped_column(BigInteger, index=True)
    endpoint_id: Mapped[str] = mapped_column(String(64), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    attempted_at: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class WorkerRow(Base):
    """A running worker, as it last reported itself: what it owns and what it runs.

    A worker inserts its row when it starts, refreshes ``last_seen`` with each heartbeat and deletes
    the row when it stops; a row not seen for a lease is a worker that died (see ``WorkerRegistry``).
    """

    __tablename__ = "workers"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(128), unique=True)  # the lease owner it writes on jobs
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # [{"kind": "cuda"|"cpu", "index": int|null, "name": str, "memory_bytes": int|null}]
    devices: Mapped[list[Any]] = mapped_column(JSON)
    slots: Mapped[int] = mapped_column(Integer)  # training jobs at once; 0 runs validation only
    # [{"job_id": str, "devices": [int, ...]}]: the jobs it trains and the GPUs each holds
    running: Mapped[list[Any]] = mapped_column(JSON)
    started_at: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
