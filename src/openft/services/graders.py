"""Graders as the API and job creation see them: validate a grader object, run it on one sample.

Beyond the grader's own fields (``graders.parse_grader``) this checks what the server can do: a
similarity metric whose library is installed, the python sandbox, and that a model grader's
``model`` is one the caller may use (a base model, an ``ft:`` model or checkpoint of theirs) or
that an external grader endpoint is configured. Every problem is a 400 naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openft.errors import InvalidRequestError, NotFoundError
from openft.graders import definitions as d
from openft.graders import sandbox, similarity
from openft.graders.model_graders import ChatClient, OpenAICompatibleClient
from openft.graders.runner import Grading
from openft.graders.sandbox import SandboxLimits

if TYPE_CHECKING:
    from openft.services.context import Services


class GraderService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    def validate(self, organization_id: str, obj: Any, param: str = "grader") -> d.Grader:
        grader = d.parse_grader(obj, param)
        for suffix, sub in d.walk(grader):
            where = param + suffix
            if isinstance(sub, d.TextSimilarity):
                reason = similarity.unavailable_reason(sub.evaluation_metric)
                if reason:
                    raise InvalidRequestError(
                        f"{where}.evaluation_metric {sub.evaluation_metric!r} is not configured on this server: "
                        f"{reason}.",
                        param=f"{where}.evaluation_metric",
                    )
            elif isinstance(sub, d.PythonGrader):
                reason = sandbox.unavailable_reason()
                if reason:
                    raise InvalidRequestError(
                        f"python graders cannot run on this server: {reason}.", param=f"{where}.type"
                    )
            elif isinstance(sub, d.ScoreModel | d.LabelModel):
                self._check_model(organization_id, sub.model, f"{where}.model")
        return grader

    def _check_model(self, organization_id: str, model: str, param: str) -> None:
        try:
            self.services.models.resolve_for_inference(organization_id, model)
        except NotFoundError:
            if self.settings.grader_base_url:
                return  # the external endpoint decides
            raise InvalidRequestError(
                f"The grader model {model!r} is not a model this server serves: use a base model (GET /v1/models), "
                "one of your ft: models or checkpoints, or ask the operator to configure an OpenAI-compatible "
                "grader endpoint (OPENFT_GRADER_BASE_URL).",
                param=param,
            ) from None

    def external_chat(self) -> ChatClient | None:
        if not self.settings.grader_base_url:
            return None
        return OpenAICompatibleClient(self.settings.grader_base_url, self.settings.grader_api_key)

    def grading(self, chat: ChatClient | None) -> Grading:
        return Grading(chat=chat, sandbox=self.limits(), concurrency=self.settings.grader_concurrency)

    def limits(self) -> SandboxLimits:
        return SandboxLimits(
            timeout_seconds=self.settings.python_grader_timeout_seconds,
            memory_bytes=self.settings.python_grader_memory_mb * 1024 * 1024,
            protected_paths=(str(self.settings.home),),
        )

    def run(
        self, organization_id: str, grader_obj: Any, model_sample: Any, item: Any, *, chat: ChatClient | None
    ) -> dict[str, Any]:
        """OpenAI's ``RunGraderResponse`` for one sample."""
        grader = self.validate(organization_id, grader_obj)
        if not isinstance(model_sample, str):
            raise InvalidRequestError(
                "model_sample is required: the model's answer to grade, as a string.", param="model_sample"
            )
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise InvalidRequestError(
                "item must be an object: the dataset row the grader's {{item.*}} templates read.",
                param="item",
            )
        return self.grading(chat).grade(grader, model_sample, item).to_wire(grader)
