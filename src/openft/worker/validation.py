"""The ``validating_files`` phase: stream-check the files, count tokens, resolve ``auto``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from openft.datasets import ValidationStopped, validate_file
from openft.domain import hyperparameters as hp_rules
from openft.domain.lifecycle import JobStatus
from openft.errors import NotFoundError
from openft.services.accelerators import memory_plan
from openft.training.memory import DoesNotFit
from openft.training.spec import ERROR_OUT_OF_MEMORY

log = logging.getLogger(__name__)


class TokenizerSeam(Protocol):
    """What validation needs from the base model; the real one loads its tokenizer lazily."""

    def preparation_notice(self, base_model: str) -> str | None: ...

    def base_model_dir(self, base_model: str) -> Path: ...

    def facts(self, model_dir: Path) -> hp_rules.ModelFacts: ...

    def counter(self, model_dir: Path, method: str): ...


class TransformersTokenizerSeam:
    """Materializes base models (GGUF → safetensors, once) and counts tokens with their tokenizer."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def preparation_notice(self, base_model: str) -> str | None:
        """What to tell the job when ``base_model_dir`` will first convert a GGUF (a minute or more)."""
        from openft.training.base_models import BaseModelRegistry, conversion_notice

        gguf = BaseModelRegistry.from_settings(self.settings).pending_conversion(base_model)
        return None if gguf is None else conversion_notice(base_model, gguf)

    def base_model_dir(self, base_model: str) -> Path:
        from openft.training.base_models import BaseModelRegistry

        return BaseModelRegistry.from_settings(self.settings).materialize(base_model)

    def facts(self, model_dir: Path) -> hp_rules.ModelFacts:
        from openft.training.base_models import model_facts

        return model_facts(model_dir)

    def counter(self, model_dir: Path, method: str):
        from openft.training.models import load_tokenizer
        from openft.training.token_counts import TemplateTokenCounter

        return TemplateTokenCounter(load_tokenizer(str(model_dir)), method)


class ValidationStopper:
    """``should_stop`` for a validation under a ``LeaseKeeper``: the API cancelled the job, or
    another worker took it over."""

    def __init__(self, keeper) -> None:
        self.keeper = keeper

    def __call__(self) -> bool:
        status = self.keeper.status
        return self.keeper.lost.is_set() or (status is not None and status != JobStatus.VALIDATING_FILES)


@dataclass(frozen=True)
class FileCheck:
    path: Path | None
    missing: str | None = None


def _file_path(services, owner, file_id: str) -> FileCheck:
    try:
        row = services.files.get(owner, file_id)
    except NotFoundError:
        return FileCheck(None, f"File {file_id} no longer exists; it was deleted after the job was created.")
    return FileCheck(services.files.local_path(row))


def validate_job(
    services, claim, seam: TokenizerSeam, *, runtime=None, should_stop: Callable[[], bool] | None = None
) -> None:
    """Validate a claimed job's files; move it to ``queued`` with resolved hyperparameters, or to
    ``failed`` with OpenAI's error codes. All writes are fenced by the claim's lease generation.

    ``should_stop`` is asked every few hundred lines; when it says so (the job was cancelled, or
    the lease lost) validation ends at once, writes nothing about the files and gives the lease back.
    """
    runtime = runtime or services.runtime
    job = claim.job
    method = job.method_type

    try:
        notice = seam.preparation_notice(job.base_model)
        if notice is not None:
            runtime.add_event(job.id, claim.generation, notice, dedup_key="base-model-conversion")
        model_dir = seam.base_model_dir(job.base_model)
        facts = seam.facts(model_dir)
        counter = seam.counter(model_dir, method)
    except Exception as exc:
        log.exception("base model %s could not be prepared", job.base_model)
        runtime.fail(
            job.id,
            claim.generation,
            code="model_load_failed",
            message=f"The base model {job.base_model} could not be loaded for tokenization: {exc}",
            param="model",
        )
        return

    max_seq = job.hyperparameters.get("max_seq_length", hp_rules.AUTO)
    max_tokens = (
        min(facts.context_length, hp_rules.DEFAULT_MAX_SEQ_LENGTH)
        if max_seq == hp_rules.AUTO
        else int(max_seq)
    )

    reports = {}
    for which, file_id, param in (
        ("training", job.training_file, "training_file"),
        ("validation", job.validation_file, "validation_file"),
    ):
        if file_id is None:
            continue
        check = _file_path(services, job.owner, file_id)
        if check.path is None:
            code = "invalid_training_file" if which == "training" else "invalid_validation_file"
            runtime.fail(job.id, claim.generation, code=code, message=check.missing, param=param)
            return
        try:
            with open(check.path, "rb") as stream:
                report = validate_file(
                    stream,
                    method=method,
                    count_tokens=counter,
                    max_tokens=max_tokens,
                    min_examples=10 if which == "training" else 1,
                    should_stop=should_stop,
                )
        except ValidationStopped as stopped:
            log.info("job %s: %s of the %s file", job.id, stopped, which)
            runtime.release(job.id, claim.generation)
            return
        if not report.ok:
            runtime.fail(
                job.id,
                claim.generation,
                code=report.error_code(param),
                message=report.error_message(which, file_id),
                param=param,
            )
            return
        reports[which] = report

    train = reports["training"]
    n_validation = reports["validation"].n_examples if "validation" in reports else None
    resolved = hp_rules.resolve(method, job.hyperparameters, train.n_examples, facts, n_validation)
    try:
        planned = memory_plan(
            services.settings, model_dir, job.base_model, method, resolved, registry=services.workers
        )
    except DoesNotFit as exc:
        runtime.fail(job.id, claim.generation, code=ERROR_OUT_OF_MEMORY, message=exc.message)
        return
    resolved = hp_rules.resolve_gradient_checkpointing(
        resolved, bool(planned and planned.gradient_checkpointing)
    )
    devices = planned.n_devices if planned else 1
    if method == "reinforcement" and devices > 1:
        # The reinforcement recipe runs on one device: a job that needs more cannot run at all.
        runtime.fail(
            job.id,
            claim.generation,
            code=ERROR_OUT_OF_MEMORY,
            message=f"This reinforcement job needs {devices} devices' memory for {job.base_model} with "
            f"fine_tuning_type={resolved['fine_tuning_type']}, and reinforcement jobs train on one device. "
            "Use fine_tuning_type 'lora' or 'qlora', or a smaller base model.",
        )
        return
    resolved = hp_rules.resolve_n_devices(resolved, devices)
    steps = hp_rules.total_steps(train.n_examples, resolved["batch_size"], resolved["n_epochs"])
    stats = {
        "n_examples": train.n_examples,
        "billable_tokens": train.billable_tokens,
        "n_over_limit": train.n_over_limit,
        "max_tokens": max_tokens,
        "total_steps": steps,
        "validation_examples": reports["validation"].n_examples if "validation" in reports else None,
    }
    events: list[tuple[str, str]] = []
    for which, report in reports.items():
        if report.n_over_limit:
            events.append(
                (
                    "warn",
                    f"{report.n_over_limit} example(s) in the {which} file are longer than {max_tokens} tokens; "
                    + (
                        "their prompts will lose their start (the end, with the question, is kept)."
                        if method == "reinforcement"
                        else "they will be truncated (tokens are removed from the end)."
                    ),
                )
            )
        for warning in report.warnings[:3]:
            events.append(("warn", f"{which.capitalize()} file: {warning.describe()}"))
    runtime.mark_validated(job.id, claim.generation, hyperparameters=resolved, stats=stats, events=events)
