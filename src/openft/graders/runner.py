"""Runs a grader on one sample: the reward and OpenAI's ``metadata`` (errors, timing, token usage).

A grader never raises for what a sample or its own code does: a template variable the item lacks,
a python grader that crashes, a grader model that is unreachable or answers nonsense all give a
reward of 0 and set the matching flag of ``metadata.errors``, exactly where OpenAI reports them.
``Grading.grade_many`` runs many samples on a bounded thread pool (python graders are processes).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from openft.graders import definitions as d
from openft.graders import similarity
from openft.graders.formula import FormulaError
from openft.graders.model_graders import (
    ChatClient,
    ChatClientError,
    chat_params,
    parse_label,
    parse_score,
    render_messages,
)
from openft.graders.sandbox import SandboxLimits, run_python
from openft.graders.templates import TemplateVariableError, render, sample_namespace

ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)
ERROR_DETAILS = (
    "python_grader_server_error_type",
    "python_grader_runtime_error_details",
    "model_grader_server_error_details",
)


def no_errors() -> dict[str, Any]:
    return {**dict.fromkeys(ERROR_FLAGS, False), **dict.fromkeys(ERROR_DETAILS)}


@dataclass
class GradeResult:
    reward: float
    errors: dict[str, Any] = field(default_factory=no_errors)
    execution_time: float = 0.0
    sub_rewards: dict[str, float] = field(default_factory=dict)
    token_usage: dict[str, dict[str, int]] = field(default_factory=dict)  # per grader model
    sampled_model_name: str | None = None
    # What went wrong where OpenAI's errors object has only a flag (a missing template variable,
    # a metric that is not installed): for events and logs, not sent on the wire.
    detail: str | None = None

    @property
    def failed(self) -> bool:
        return any(self.errors[flag] for flag in ERROR_FLAGS)

    def error_summary(self) -> str | None:
        """One line saying what went wrong, for logs and events; None when nothing did."""
        if not self.failed:
            return None
        flags = [flag for flag in ERROR_FLAGS if self.errors[flag]]
        details = [str(self.errors[k]).strip().splitlines()[-1] for k in ERROR_DETAILS if self.errors[k]]
        if self.detail:
            details.insert(0, self.detail)
        return ", ".join(flags) + (f": {details[0]}" if details else "")

    def merge(self, other: GradeResult) -> None:
        for flag in ERROR_FLAGS:
            self.errors[flag] = self.errors[flag] or other.errors[flag]
        for key in ERROR_DETAILS:
            self.errors[key] = self.errors[key] or other.errors[key]
        for model, usage in other.token_usage.items():
            mine = self.token_usage.setdefault(model, _usage(0, 0))
            for key, value in usage.items():
                mine[key] += value
        self.sampled_model_name = self.sampled_model_name or other.sampled_model_name
        self.detail = self.detail or other.detail

    def to_wire(self, grader: d.Grader) -> dict[str, Any]:
        """OpenAI's ``RunGraderResponse``."""
        total = sum(u["total_tokens"] for u in self.token_usage.values()) if self.token_usage else None
        return {
            "reward": self.reward,
            "metadata": {
                "name": grader.name,
                "type": grader.type,
                "errors": dict(self.errors),
                "execution_time": self.execution_time,
                "scores": dict(self.sub_rewards),
                "token_usage": total,
                "sampled_model_name": self.sampled_model_name,
            },
            "sub_rewards": dict(self.sub_rewards),
            "model_grader_token_usage_per_model": {m: dict(u) for m, u in self.token_usage.items()},
        }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": 0,
    }


@dataclass(frozen=True)
class Grading:
    """What grading needs besides the grader: a chat client for model graders, the sandbox's limits,
    and how many samples may be graded at once."""

    chat: ChatClient | None = None
    sandbox: SandboxLimits = SandboxLimits()
    concurrency: int = 4

    def grade(
        self, grader: d.Grader, model_sample: str, item: dict[str, Any], output_tools: list | None = None
    ) -> GradeResult:
        started = time.perf_counter()
        namespaces = {"item": item, "sample": sample_namespace(model_sample, output_tools)}
        result = self._grade(grader, namespaces)
        if not math.isfinite(result.reward):
            result.reward = 0.0
            result.errors["other_error"] = True
        result.execution_time = time.perf_counter() - started
        return result

    def grade_many(self, grader: d.Grader, samples: list[tuple[str, dict[str, Any]]]) -> list[GradeResult]:
        """Grade ``(model_sample, item)`` pairs concurrently, in order."""
        if len(samples) <= 1 or self.concurrency <= 1:
            return [self.grade(grader, text, item) for text, item in samples]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(samples))) as pool:
            return list(pool.map(lambda pair: self.grade(grader, pair[0], pair[1]), samples))

    def _grade(self, grader: d.Grader, namespaces: dict[str, Any]) -> GradeResult:
        try:
            if isinstance(grader, d.StringCheck):
                return GradeResult(_string_check(grader, namespaces))
            if isinstance(grader, d.TextSimilarity):
                text, reference = render(grader.input, namespaces), render(grader.reference, namespaces)
                return GradeResult(similarity.score(grader.evaluation_metric, text, reference))
            if isinstance(grader, d.PythonGrader):
                return self._python(grader, namespaces)
            if isinstance(grader, d.ScoreModel | d.LabelModel):
                return self._model(grader, namespaces)
            if isinstance(grader, d.Multi):
                return self._multi(grader, namespaces)
        except TemplateVariableError as exc:
            result = GradeResult(
                0.0, detail=f"the template variable {exc.args[0]!r} is not in the item or sample"
            )
            result.errors["invalid_variable_error"] = True
            return result
        except similarity.MetricUnavailable as exc:
            result = GradeResult(0.0, detail=str(exc))
            result.errors["other_error"] = True
            return result
        raise TypeError(f"unknown grader {grader!r}")

    def _python(self, grader: d.PythonGrader, namespaces: dict[str, Any]) -> GradeResult:
        outcome = run_python(grader.source, namespaces["sample"], namespaces["item"], self.sandbox)
        result = GradeResult(outcome.reward if outcome.reward is not None else 0.0)
        if outcome.server_error:
            result.errors["python_grader_server_error"] = True
            result.errors["python_grader_server_error_type"] = outcome.server_error
        elif outcome.runtime_error:
            result.errors["python_grader_runtime_error"] = True
            result.errors["python_grader_runtime_error_details"] = outcome.runtime_error
        return result

    def _model(self, grader: d.ScoreModel | d.LabelModel, namespaces: dict[str, Any]) -> GradeResult:
        messages = render_messages(grader.input, namespaces)
        result = GradeResult(0.0)
        if self.chat is None:
            result.errors["model_grader_server_error"] = True
            result.errors["model_grader_server_error_details"] = (
                "no grader model is configured on this server"
            )
            return result
        sampling = grader.sampling_params if isinstance(grader, d.ScoreModel) else {}
        try:
            reply = self.chat.complete(grader.model, messages, chat_params(sampling))
        except ChatClientError as exc:
            result.errors["model_grader_server_error"] = True
            result.errors["model_grader_server_error_details"] = str(exc)
            return result
        result.sampled_model_name = reply.model
        result.token_usage[reply.model] = _usage(reply.prompt_tokens, reply.completion_tokens)
        if reply.refusal:
            result.errors["model_grader_refusal_error"] = True
            return result
        if isinstance(grader, d.ScoreModel):
            score = parse_score(reply.text)
            if score is None or not math.isfinite(score):
                result.errors["model_grader_parse_error"] = True
                return result
            low, high = grader.range
            result.reward = min(max(score, low), high)
            return result
        label = parse_label(reply.text, grader.labels)
        if label is None:
            result.errors["model_grader_parse_error"] = True
            return result
        result.reward = 1.0 if label in grader.passing_labels else 0.0
        return result

    def _multi(self, grader: d.Multi, namespaces: dict[str, Any]) -> GradeResult:
        result = GradeResult(0.0)
        for key, sub in grader.graders.items():
            sub_result = self._grade(sub, namespaces)
            result.sub_rewards[key] = sub_result.reward
            result.merge(sub_result)
        assert grader.formula is not None
        try:
            result.reward = grader.formula.evaluate(result.sub_rewards)
        except FormulaError:
            result.errors["formula_parse_error"] = True
            result.reward = 0.0
        return result


def _string_check(grader: d.StringCheck, namespaces: dict[str, Any]) -> float:
    text, reference = render(grader.input, namespaces), render(grader.reference, namespaces)
    if grader.operation == "eq":
        return float(text == reference)
    if grader.operation == "ne":
        return float(text != reference)
    if grader.operation == "like":
        return float(reference in text)
    return float(reference.lower() in text.lower())
