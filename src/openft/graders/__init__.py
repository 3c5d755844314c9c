"""OpenAI's graders, shared by the API (``/fine_tuning/alpha/graders``) and reinforcement training.

torch-free. ``parse_grader`` checks a grader object; ``Grading.grade`` runs it on one sample;
the ``python`` grader runs in the sandbox of ``graders.sandbox``.
"""

from openft.graders.definitions import Grader, parse_grader
from openft.graders.runner import GradeResult, Grading

__all__ = ["GradeResult", "Grader", "Grading", "parse_grader"]
