"""What the worker adds for reinforcement jobs: the spec's rollout and grading fields, the result CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from openft.errors import NotFoundError
from openft.graders import definitions as d


def spec_fields(services, job) -> dict[str, Any]:
    """TrainingSpec fields of a reinforcement job; grader models resolved to their weights now."""
    hp = job.hyperparameters
    settings = services.settings
    grader = d.parse_grader(job.grader, "grader")
    models: dict[str, dict[str, str]] = {}
    for _, sub in d.walk(grader):
        if isinstance(sub, d.ScoreModel | d.LabelModel) and sub.model not in models:
            try:
                models[sub.model] = _weights(services, job.owner, sub.model)
            except NotFoundError:
                models[sub.model] = {"external": "true"}
    grading: dict[str, Any] = {
        "models": models,
        "timeout_seconds": settings.python_grader_timeout_seconds,
        "memory_mb": settings.python_grader_memory_mb,
        "concurrency": settings.grader_concurrency,
        "protected_paths": [str(settings.home)],
    }
    if settings.grader_base_url:
        grading["external_base_url"] = settings.grader_base_url
    return {
        "grader": dict(job.grader),
        "group_size": int(hp["group_size"]),
        "max_completion_tokens": int(hp["max_completion_tokens"]),
        "temperature": float(hp["temperature"]),
        "eval_interval_steps": int(hp["eval_interval"]),
        "eval_samples": int(hp["eval_samples"]),
        "grading": grading,
    }


def _weights(services, owner, model: str) -> dict[str, str]:
    from openft.training.base_models import BaseModelRegistry

    base_name, artifact = services.models.resolve_for_inference(owner, model)
    base = str(BaseModelRegistry.from_settings(services.settings).materialize(base_name))
    if artifact is None:
        return {"base_path": base}
    artifact = Path(artifact)
    if (artifact / "adapter").is_dir():
        return {"base_path": base, "adapter_path": str(artifact / "adapter")}
    return {"base_path": base, "full_model_path": str(artifact / "model")}


FIXED_COLUMNS = (
    "step",
    "train_reward_mean",
    "valid_reward_mean",
    "train_reward_std",
    "train_loss",
    "kl",
    "completion_length_mean",
    "grader_error_rate",
)


def result_csv(rows: dict[int, dict]) -> bytes:
    """One row per step, 5 decimals, empty cells where not measured; a column per sub-grader."""
    sub_columns = sorted(
        {
            key
            for data in rows.values()
            for key in data
            if key.startswith(("train_reward_", "valid_reward_")) and key not in FIXED_COLUMNS
        }
    )
    columns = [*FIXED_COLUMNS, *sub_columns]

    def cell(value) -> str:
        return "" if value is None else f"{float(value):.5f}"

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for step in sorted(rows):
        data = rows[step]
        writer.writerow([step, *(cell(data.get(c)) for c in columns[1:])])
    return out.getvalue().encode()
