"""Fine-tuning jobs as the API sees them: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from openft import ids
from openft.domain import hyperparameters as hp_rules
from openft.domain.lifecycle import TERMINAL, JobStatus, can_transition
from openft.domain.scope import Owner, Scope
from openft.errors import InvalidRequestError, NotFoundError
from openft.services.accelerators import cuda_available
from openft.store import jobs as store
from openft.store.tables import JobCheckpointRow, JobEventRow, JobRow

if TYPE_CHECKING:
    from openft.services.context import Services

T = TypeVar("T")

MAX_SEED = 2_147_483_647
MAX_SUFFIX = 64
# The suffix becomes one ':'-separated segment of the model name and part of a directory name.
SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_INTEGRATIONS = 5
MAX_WANDB_TAGS = 50
MAX_WANDB_TAG = 64
MAX_LIMIT = 1000
FILE_PURPOSE = "fine-tune"


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: list[T]
    has_more: bool


def job_not_found(job_id: str) -> NotFoundError:
    return NotFoundError(
        f"Could not find fine-tune: {job_id}. Check the id; GET /v1/fine_tuning/jobs lists your jobs.",
        param="id",
    )


def check_limit(limit: int | None, default: int) -> int:
    """A page size from 1 to MAX_LIMIT; anything else (0 included) is a 400 naming ``limit``."""
    if limit is None:
        return default
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid value for 'limit': {limit}. It must be between 1 and {MAX_LIMIT}.", param="limit"
        )
    return limit


class FineTuningService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.db = services.db

    # -- create ----------------------------------------------------------------------------

    def create(
        self,
        owner: Owner,
        *,
        model: Any,
        training_file: Any,
        validation_file: Any = None,
        suffix: Any = None,
        seed: Any = None,
        method: Any = None,
        hyperparameters: Any = None,
        integrations: Any = None,
        metadata: Any = None,
    ) -> JobRow:
        """Check everything that can be checked now (400 with ``param`` otherwise), then create the
        job in ``validating_files`` with its first two events, in one transaction."""
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model must be a non-empty string naming a base model.", param="model")
        scope = Scope.of(owner)
        target = self.services.models.resolve_for_fine_tuning(scope, model)
        self._check_file(scope, training_file, "training_file")
        if validation_file is not None:
            self._check_file(scope, validation_file, "validation_file")
        suffix = _check_suffix(suffix)
        seed = _check_seed(seed)
        metadata = _check_metadata(metadata)
        integrations = _check_integrations(integrations)
        method_type, hp = _check_method(method, hyperparameters)
        if hp["fine_tuning_type"] == "qlora" and not cuda_available(
            self.services.settings, self.services.workers
        ):
            raise InvalidRequestError(
                "fine_tuning_type 'qlora' loads the base model in 4-bit NF4 with bitsandbytes, which needs a "
                "CUDA GPU, and this server has no worker with one. Use 'lora' (the same adapter over an "
                "unquantised base) or 'full'.",
                param=_hyperparameter_param(method, method_type, "fine_tuning_type"),
            )
        grader = None
        if method_type == "reinforcement":
            # _check_method made sure method.reinforcement is an object with a grader
            grader = self.services.graders.validate(
                scope, method["reinforcement"]["grader"], "method.reinforcement.grader"
            ).wire

        job_id = ids.job_id()
        row = JobRow(
            id=job_id,
            organization_id=scope.organization_id,
            project_id=scope.project_id,
            created_at=store.now(),
            status=JobStatus.VALIDATING_FILES.value,
            model=target.model,
            base_model=target.base_model,
            parent_model=target.parent_model,
            training_file=training_file,
            validation_file=validation_file,
            suffix=suffix,
            seed=seed,
            method_type=method_type,
            hyperparameters=hp,
            grader=grader,
            integrations=integrations,
            job_metadata=metadata,
            result_files=[],
            lease_generation=0,
            attempts=0,
        )
        validating = f"Validating training file: {training_file}"
        if validation_file is not None:
            validating += f" and validation file: {validation_file}"
        with self.db.transaction() as session:
            session.add(row)
            session.flush()
            store.add_event(session, job_id, f"Created fine-tuning job: {job_id}", data={})
            if target.is_alias:
                store.add_event(
                    session,
                    job_id,
                    f"Model {target.model} is an alias on this server: training the open model "
                    f"{target.base_model}",
                    data={"model": target.model, "base_model": target.base_model},
                )
            store.add_event(session, job_id, validating, data={})
        return row

    def _check_file(self, owner: Scope, file_id: Any, param: str) -> None:
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequestError(
                f"invalid {param}: {file_id!r}. Pass the id of an uploaded file.", param=param
            )
        try:
            file = self.services.files.get(owner, file_id)
        except NotFoundError:
            raise InvalidRequestError(f"invalid {param}: {file_id}", param=param) from None
        if file.purpose != FILE_PURPOSE:
            raise InvalidRequestError(
                f"invalid {param}: {file_id}. The file has purpose '{file.purpose}'; fine-tuning needs a file "
                f"uploaded with purpose '{FILE_PURPOSE}'.",
                param=param,
            )

    # -- read ------------------------------------------------------------------------------

    def retrieve(self, owner: Owner, job_id: str) -> JobRow:
        with self.db.read() as session:
            row = store.get_job(session, job_id, Scope.of(owner))
        if row is None:
            raise job_not_found(job_id)
        return row

    def list(
        self,
        owner: Owner,
        *,
        after: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[JobRow]:
        scope = Scope.of(owner)
        with self.db.read() as session:
            after_pk = None
            if after:
                after_pk = store.job_pk(session, scope, after)
                if after_pk is None:
                    raise InvalidRequestError(
                        f"after={after} is not one of your fine-tuning jobs; pass the id of the last job of "
                        "the previous page.",
                        param="after",
                    )
            rows, has_more = store.list_jobs(
                session,
                scope,
                after_pk=after_pk,
                limit=check_limit(limit, 20),
                metadata=dict(metadata or {}),
            )
        return Page(rows, has_more)

    def list_events(
        self, owner: Owner, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[JobEventRow]:
        with self.db.read() as session:
            if store.get_job(session, job_id, Scope.of(owner)) is None:
                raise job_not_found(job_id)
            after_pk = _cursor(
                store.event_pk(session, job_id, after) if after else None, after, job_id, "event"
            )
            rows, has_more = store.list_events(
                session, job_id, after_pk=after_pk, limit=check_limit(limit, 20)
            )
        return Page(rows, has_more)

    def list_checkpoints(
        self, owner: Owner, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[JobCheckpointRow]:
        with self.db.read() as session:
            if store.get_job(session, job_id, Scope.of(owner)) is None:
                raise job_not_found(job_id)
            after_pk = _cursor(
                store.checkpoint_pk(session, job_id, after) if after else None, after, job_id, "checkpoint"
            )
            rows, has_more = store.list_checkpoints(
                session, job_id, after_pk=after_pk, limit=check_limit(limit, 10)
            )
        return Page(rows, has_more)

    # -- status changes --------------------------------------------------------------------

    def cancel(self, owner: Owner, job_id: str) -> JobRow:
        return self._move(owner, job_id, "cancel", JobStatus.CANCELLED)

    def pause(self, owner: Owner, job_id: str) -> JobRow:
        return self._move(owner, job_id, "pause", JobStatus.PAUSED)

    def resume(self, owner: Owner, job_id: str) -> JobRow:
        return self._move(owner, job_id, "resume", JobStatus.QUEUED)

    def _move(self, owner: Owner, job_id: str, action: str, target: JobStatus) -> JobRow:
        sources = ACTION_SOURCES[action]
        # Compare-and-set: a worker may move the job between our read and our write (on
        # PostgreSQL); then re-read and answer from the state the job is really in.
        while True:
            with self.db.transaction() as session:
                row = store.get_job(session, job_id, Scope.of(owner))
                if row is None:
                    raise job_not_found(job_id)
                current = JobStatus(row.status)
                if current not in sources:
                    raise InvalidRequestError(
                        f"Cannot {action} fine-tuning job {job_id}: its status is '{current.value}'. Only jobs "
                        f"that are {', '.join(s.value for s in JobStatus if s in sources)} can be "
                        f"{PAST[action]}.",
                        param="id",
                    )
                values: dict[str, Any] = {}
                if target in TERMINAL:
                    values.update(finished_at=store.now(), estimated_finish=None)
                if not store.compare_and_set(session, job_id, current, target, **values):
                    continue
                store.add_event(session, job_id, _move_message(current, target), data={})
                session.refresh(row)
                return row


# Which statuses each API action accepts; each pair is also checked against the lifecycle table.
# Resume is narrower than the table's moves into queued (validation success, a worker's requeue).
ACTION_SOURCES: dict[str, frozenset[JobStatus]] = {
    "cancel": frozenset(s for s in JobStatus if can_transition(s, JobStatus.CANCELLED)),
    "pause": frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    "resume": frozenset({JobStatus.PAUSED}),
}


PAST = {"cancel": "cancelled", "pause": "paused", "resume": "resumed"}


def _move_message(current: JobStatus, target: JobStatus) -> str:
    if target is JobStatus.CANCELLED:
        return "Fine-tuning job cancelled"
    if target is JobStatus.PAUSED:
        if current is JobStatus.RUNNING:
            return (
                "Fine-tuning job paused; training stops at the next step boundary after saving a checkpoint"
            )
        return "Fine-tuning job paused"
    return "Fine-tuning job resumed; it is queued and continues from its last checkpoint"


# -- request checks (pure; each raises InvalidRequestError naming the field) --------------------


def _check_suffix(suffix: Any) -> str | None:
    if suffix is None:
        return None
    if (
        not isinstance(suffix, str)
        or not (1 <= len(suffix) <= MAX_SUFFIX)
        or not SUFFIX_PATTERN.match(suffix)
    ):
        raise InvalidRequestError(
            f"Invalid suffix {suffix!r}: use 1 to {MAX_SUFFIX} letters, digits, '-', '_' or '.' "
            "(no spaces or ':', the suffix becomes part of the model name).",
            param="suffix",
        )
    return suffix


def _check_seed(seed: Any) -> int:
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequestError(
            f"Invalid seed {seed!r}: expected an integer from 0 to {MAX_SEED}.", param="seed"
        )
    return seed


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidRequestError(
            "metadata must be an object of string keys and string values.", param="metadata"
        )
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed.", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"metadata key {key[:20]!r}... is {len(key)} characters; keys may have at most {MAX_METADATA_KEY}.",
                param="metadata",
            )
        if not isinstance(value, str):
            raise InvalidRequestError(
                f"metadata[{key!r}] must be a string, got {type(value).__name__}.", param="metadata"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"metadata[{key!r}] is {len(value)} characters; values may have at most {MAX_METADATA_VALUE}.",
                param="metadata",
            )
    return dict(metadata)


def _check_integrations(integrations: Any) -> list[dict[str, Any]]:
    if integrations is None:
        return []
    if not isinstance(integrations, list):
        raise InvalidRequestError("integrations must be a list of integration objects.", param="integrations")
    if len(integrations) > MAX_INTEGRATIONS:
        raise InvalidRequestError(
            f"{len(integrations)} integrations given; at most {MAX_INTEGRATIONS} are allowed.",
            param="integrations",
        )
    out = []
    for i, item in enumerate(integrations):
        param = f"integrations[{i}]"
        if isinstance(item, dict) and item.get("type") == "mlflow":
            out.append(_check_mlflow(item.get("mlflow"), param))
            continue
        if not isinstance(item, dict) or item.get("type") != "wandb":
            raise InvalidRequestError(
                f"{param}.type must be 'wandb' (Weights & Biases) or 'mlflow' (an openft extension).",
                param=f"{param}.type",
            )
        wandb = item.get("wandb")
        if not isinstance(wandb, dict):
            raise InvalidRequestError(
                f"{param}.wandb must be an object with a 'project'.", param=f"{param}.wandb"
            )
        project = wandb.get("project")
        if not isinstance(project, str) or not project:
            raise InvalidRequestError(
                f"{param}.wandb.project is required: the W&B project to log to.",
                param=f"{param}.wandb.project",
            )
        for key in ("name", "entity"):
            if wandb.get(key) is not None and not isinstance(wandb[key], str):
                raise InvalidRequestError(
                    f"{param}.wandb.{key} must be a string or null.", param=f"{param}.wandb.{key}"
                )
        tags = wandb.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequestError(
                f"{param}.wandb.tags must be a list of strings.", param=f"{param}.wandb.tags"
            )
        if len(tags) > MAX_WANDB_TAGS or any(len(t) > MAX_WANDB_TAG for t in tags):
            raise InvalidRequestError(
                f"{param}.wandb.tags: at most {MAX_WANDB_TAGS} tags of at most {MAX_WANDB_TAG} characters each.",
                param=f"{param}.wandb.tags",
            )
        out.append(
            {
                "type": "wandb",
                "wandb": {
                    "project": project,
                    "name": wandb.get("name"),
                    "entity": wandb.get("entity"),
                    "tags": tags,
                },
            }
        )
    return out


def _check_mlflow(mlflow: Any, param: str) -> dict[str, Any]:
    """openft's extension ``{"type": "mlflow", "mlflow": {"experiment", "run_name", "tags"}}``: the
    run goes to the operator's tracking server, in ``experiment`` (created if new)."""
    if not isinstance(mlflow, dict):
        raise InvalidRequestError(
            f"{param}.mlflow must be an object with an 'experiment'.", param=f"{param}.mlflow"
        )
    experiment = mlflow.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        raise InvalidRequestError(
            f"{param}.mlflow.experiment is required: the MLflow experiment to log to.",
            param=f"{param}.mlflow.experiment",
        )
    run_name = mlflow.get("run_name")
    if run_name is not None and not isinstance(run_name, str):
        raise InvalidRequestError(
            f"{param}.mlflow.run_name must be a string or null.", param=f"{param}.mlflow.run_name"
        )
    tags = mlflow.get("tags") or {}
    if (
        not isinstance(tags, dict)
        or len(tags) > MAX_WANDB_TAGS
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    ):
        raise InvalidRequestError(
            f"{param}.mlflow.tags must be an object of at most {MAX_WANDB_TAGS} string keys and string values.",
            param=f"{param}.mlflow.tags",
        )
    return {"type": "mlflow", "mlflow": {"experiment": experiment, "run_name": run_name, "tags": dict(tags)}}


def _check_method(method: Any, top_level: Any) -> tuple[str, dict[str, Any]]:
    """Return (method type, every hyperparameter of that method, ``"auto"`` where not given).

    The deprecated top-level ``hyperparameters`` apply to the method; given in both places a key
    must agree (``"auto"`` agrees with anything).
    """
    if top_level is not None and not isinstance(top_level, dict):
        raise InvalidRequestError("hyperparameters must be an object.", param="hyperparameters")
    if method is None:
        return "supervised", _check_hp("supervised", top_level or {}, "hyperparameters")
    if not isinstance(method, dict):
        raise InvalidRequestError("method must be an object with a 'type'.", param="method")
    method_type = method.get("type")
    if method_type not in hp_rules.METHOD_KEYS:
        raise InvalidRequestError(
            f"Invalid method.type {method_type!r}: expected 'supervised', 'dpo' or 'reinforcement'.",
            param="method.type",
        )
    prefix = f"method.{method_type}"
    config = method.get(method_type) or {}
    if not isinstance(config, dict):
        raise InvalidRequestError(f"{prefix} must be an object.", param=prefix)
    if method_type == "reinforcement" and config.get("grader") is None:
        raise InvalidRequestError(
            "method.reinforcement.grader is required: the grader that scores each sampled answer "
            "(string_check, text_similarity, python, score_model or multi).",
            param="method.reinforcement.grader",
        )
    given = config.get("hyperparameters") or {}
    if not isinstance(given, dict):
        raise InvalidRequestError(
            f"{prefix}.hyperparameters must be an object.", param=f"{prefix}.hyperparameters"
        )
    hp = _check_hp(method_type, given, f"{prefix}.hyperparameters")
    if top_level:
        legacy = _check_hp(method_type, top_level, "hyperparameters")
        for key, value in legacy.items():
            if value == hp_rules.AUTO:
                continue
            if hp[key] == hp_rules.AUTO:
                hp[key] = value
            elif hp[key] != value:
                raise InvalidRequestError(
                    f"hyperparameters.{key}={value!r} disagrees with {prefix}.hyperparameters.{key}={hp[key]!r}. "
                    f"Set it in one place: {prefix}.hyperparameters (top-level hyperparameters are deprecated).",
                    param="hyperparameters",
                )
    return method_type, hp


def _hyperparameter_param(method: Any, method_type: str, key: str) -> str:
    """Where the caller set hyperparameter ``key``: under ``method`` if there, else top level."""
    config = method.get(method_type) if isinstance(method, dict) else None
    given = (config or {}).get("hyperparameters") if isinstance(config, dict) else None
    if isinstance(given, dict) and given.get(key, hp_rules.AUTO) != hp_rules.AUTO:
        return f"method.{method_type}.hyperparameters.{key}"
    return f"hyperparameters.{key}"


def _check_hp(method: str, given: dict[str, Any], prefix: str) -> dict[str, Any]:
    try:
        return hp_rules.check(method, given, prefix)
    except hp_rules.HyperparameterError as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from None


def _cursor(pk: int | None, after: str | None, job_id: str, noun: str) -> int | None:
    """The pk behind an ``after`` cursor; an id that is not one of the job's ``noun``s is a 400."""
    if after and pk is None:
        raise InvalidRequestError(
            f"after={after} is not a {noun} of job {job_id}; pass the id of the last {noun} of the previous page.",
            param="after",
        )
    return pk
