"""OpenAI's grader objects, checked field by field and turned into frozen definitions.

``parse_grader(obj, param)`` accepts what OpenAI's API accepts (``string_check``,
``text_similarity``, ``python``, ``score_model``, ``label_model`` inside a ``multi``, and ``multi``)
and raises ``InvalidRequestError`` naming the offending field (``param`` is its path, e.g.
``method.reinforcement.grader.operation``). ``Grader.wire`` is the grader as it is stored and
echoed: the known fields only.

What cannot be checked without running (a model that openft must serve, an optional metric
library) is checked by ``graders.checks`` against the server's capabilities.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from openft.errors import InvalidRequestError
from openft.graders import formula as formulas
from openft.graders.templates import check_template

STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
SIMILARITY_METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
TOP_LEVEL_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
SUB_GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")
MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source
MAX_SUB_GRADERS = 16


@dataclass(frozen=True)
class Grader:
    type: str
    name: str
    wire: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class StringCheck(Grader):
    input: str = ""
    reference: str = ""
    operation: str = "eq"


@dataclass(frozen=True)
class TextSimilarity(Grader):
    input: str = ""
    reference: str = ""
    evaluation_metric: str = "fuzzy_match"


@dataclass(frozen=True)
class PythonGrader(Grader):
    source: str = ""
    image_tag: str | None = None


@dataclass(frozen=True)
class ScoreModel(Grader):
    model: str = ""
    input: tuple[dict[str, Any], ...] = ()
    sampling_params: dict[str, Any] = field(default_factory=dict, compare=False)
    range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class LabelModel(Grader):
    model: str = ""
    input: tuple[dict[str, Any], ...] = ()
    labels: tuple[str, ...] = ()
    passing_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Multi(Grader):
    graders: dict[str, Grader] = field(default_factory=dict, compare=False)
    calculate_output: str = ""
    formula: formulas.Formula | None = field(default=None, compare=False)


def parse_grader(obj: Any, param: str = "grader", *, nested: bool = False) -> Grader:
    """Check one grader object; ``nested`` allows ``label_model`` (only a multi grader's sub-graders may be one)."""
    if not isinstance(obj, dict):
        raise InvalidRequestError(f"{param} must be a grader object with a 'type'.", param=param)
    kind = obj.get("type")
    allowed = SUB_GRADER_TYPES if nested else TOP_LEVEL_TYPES
    if kind == "label_model" and not nested:
        raise InvalidRequestError(
            "A label_model grader can only be used inside a multi grader (as one of its graders); for a "
            "single model-based reward use score_model.",
            param=f"{param}.type",
        )
    if kind == "multi" and nested:
        raise InvalidRequestError(
            "A multi grader cannot contain another multi grader.", param=f"{param}.type"
        )
    if kind not in allowed:
        raise InvalidRequestError(
            f"Invalid grader type {kind!r}: expected one of {', '.join(allowed)}.", param=f"{param}.type"
        )
    name = obj.get("name", kind)
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"{param}.name must be a non-empty string.", param=f"{param}.name")
    return _PARSERS[kind](obj, param, name)


def _string(obj: dict, key: str, param: str, *, template: bool = False, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        what = "is required" if value is None else f"must be a string, got {type(value).__name__}"
        raise InvalidRequestError(f"{param}.{key} {what}.", param=f"{param}.{key}")
    if template:
        problem = check_template(value)
        if problem:
            raise InvalidRequestError(
                f"{param}.{key} is not a valid template: {problem}.", param=f"{param}.{key}"
            )
    return value


def _choice(obj: dict, key: str, choices: tuple[str, ...], param: str) -> str:
    value = obj.get(key)
    if value not in choices:
        raise InvalidRequestError(
            f"Invalid {param}.{key} {value!r}: expected one of {', '.join(choices)}.", param=f"{param}.{key}"
        )
    return value


def _string_check(obj: dict, param: str, name: str) -> StringCheck:
    wire = {
        "type": "string_check",
        "name": name,
        "input": _string(obj, "input", param, template=True),
        "reference": _string(obj, "reference", param, template=True),
        "operation": _choice(obj, "operation", STRING_OPERATIONS, param),
    }
    return StringCheck(
        type="string_check", name=name, wire=wire, **{k: wire[k] for k in ("input", "reference", "operation")}
    )


def _text_similarity(obj: dict, param: str, name: str) -> TextSimilarity:
    wire = {
        "type": "text_similarity",
        "name": name,
        "input": _string(obj, "input", param, template=True),
        "reference": _string(obj, "reference", param, template=True),
        "evaluation_metric": _choice(obj, "evaluation_metric", SIMILARITY_METRICS, param),
    }
    return TextSimilarity(
        type="text_similarity",
        name=name,
        wire=wire,
        **{k: wire[k] for k in ("input", "reference", "evaluation_metric")},
    )


def _python(obj: dict, param: str, name: str) -> PythonGrader:
    source = _string(obj, "source", param)
    assert source is not None
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise InvalidRequestError(
            f"{param}.source is {len(source.encode('utf-8')):,} bytes; at most {MAX_SOURCE_BYTES:,} are allowed.",
            param=f"{param}.source",
        )
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise InvalidRequestError(
            f"{param}.source does not compile: {exc.msg} (line {exc.lineno}).", param=f"{param}.source"
        ) from None
    defines_grade = any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade"
        for node in tree.body
    )
    if not defines_grade:
        raise InvalidRequestError(
            f"{param}.source must define a top-level function grade(sample, item) that returns a number.",
            param=f"{param}.source",
        )
    image_tag = _string(obj, "image_tag", param, required=False)
    wire = {"type": "python", "name": name, "source": source}
    if image_tag is not None:
        wire["image_tag"] = image_tag
    return PythonGrader(type="python", name=name, wire=wire, source=source, image_tag=image_tag)


def _messages(obj: dict, param: str) -> tuple[dict[str, Any], ...]:
    raw = obj.get("input")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError(
            f"{param}.input must be a non-empty list of messages ({{'role', 'content'}}).",
            param=f"{param}.input",
        )
    out = []
    for i, message in enumerate(raw):
        where = f"{param}.input[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be a message object.", param=where)
        role = _choice(message, "role", MESSAGE_ROLES, where)
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        for j, part in enumerate(parts):
            part_param = f"{where}.content" + (f"[{j}]" if isinstance(content, list) else "")
            text = _content_text(part, part_param)
            problem = check_template(text)
            if problem:
                raise InvalidRequestError(
                    f"{part_param} is not a valid template: {problem}.", param=part_param
                )
        out.append({"type": "message", "role": role, "content": content})
    return tuple(out)


def _content_text(part: Any, param: str) -> str:
    if isinstance(part, str):
        return part
    if (
        isinstance(part, dict)
        and part.get("type") in ("input_text", "output_text")
        and isinstance(part.get("text"), str)
    ):
        return part["text"]
    if isinstance(part, dict) and part.get("type") in ("input_image", "input_audio"):
        raise InvalidRequestError(
            f"{param}: {part['type']} content is not supported; openft's grader models read text only.",
            param=param,
        )
    raise InvalidRequestError(
        f"{param} must be a string or a {{'type': 'input_text', 'text': ...}} part.", param=param
    )


def _model(obj: dict, param: str) -> str:
    model = _string(obj, "model", param)
    assert model is not None
    if not model:
        raise InvalidRequestError(f"{param}.model must name a model.", param=f"{param}.model")
    return model


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sampling_params(obj: dict, param: str) -> dict[str, Any]:
    raw = obj.get("sampling_params")
    if raw is None:
        return {}
    where = f"{param}.sampling_params"
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{where} must be an object.", param=where)
    out: dict[str, Any] = {}
    checks = {
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "top_p": lambda v: _number(v) and 0 < v <= 1,
        "temperature": lambda v: _number(v) and 0 <= v <= 2,
        "max_completions_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "max_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "reasoning_effort": lambda v: v in ("none", "minimal", "low", "medium", "high", "xhigh"),
    }
    expected = {
        "seed": "an integer",
        "top_p": "a number in (0, 1]",
        "temperature": "a number from 0 to 2",
        "max_completions_tokens": "an integer >= 1",
        "max_tokens": "an integer >= 1",
        "reasoning_effort": "one of none, minimal, low, medium, high, xhigh",
    }
    for key, value in raw.items():
        if value is None:
            continue
        if key not in checks:
            raise InvalidRequestError(
                f"Unknown sampling parameter {key!r}; known: {', '.join(checks)}.", param=f"{where}.{key}"
            )
        if not checks[key](value):
            raise InvalidRequestError(
                f"Invalid {where}.{key} {value!r}: expected {expected[key]}.", param=f"{where}.{key}"
            )
        out[key] = value
    return out


def _score_model(obj: dict, param: str, name: str) -> ScoreModel:
    model = _model(obj, param)
    messages = _messages(obj, param)
    sampling = _sampling_params(obj, param)
    raw_range = obj.get("range")
    score_range = (0.0, 1.0)
    if raw_range is not None:
        if not (
            isinstance(raw_range, list)
            and len(raw_range) == 2
            and all(_number(v) for v in raw_range)
            and raw_range[0] < raw_range[1]
        ):
            raise InvalidRequestError(
                f"{param}.range must be [min, max] with min < max, got {raw_range!r}.", param=f"{param}.range"
            )
        score_range = (float(raw_range[0]), float(raw_range[1]))
    wire: dict[str, Any] = {"type": "score_model", "name": name, "model": model, "input": list(messages)}
    if sampling:
        wire["sampling_params"] = sampling
    if raw_range is not None:
        wire["range"] = list(raw_range)
    return ScoreModel(
        type="score_model",
        name=name,
        wire=wire,
        model=model,
        input=messages,
        sampling_params=sampling,
        range=score_range,
    )


def _label_model(obj: dict, param: str, name: str) -> LabelModel:
    model = _model(obj, param)
    messages = _messages(obj, param)
    lists = {}
    for key in ("labels", "passing_labels"):
        value = obj.get(key)
        if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
            raise InvalidRequestError(
                f"{param}.{key} must be a non-empty list of strings.", param=f"{param}.{key}"
            )
        lists[key] = tuple(value)
    stray = [label for label in lists["passing_labels"] if label not in lists["labels"]]
    if stray:
        raise InvalidRequestError(
            f"{param}.passing_labels must be a subset of labels; {stray[0]!r} is not a label.",
            param=f"{param}.passing_labels",
        )
    wire = {
        "type": "label_model",
        "name": name,
        "model": model,
        "input": list(messages),
        "labels": list(lists["labels"]),
        "passing_labels": list(lists["passing_labels"]),
    }
    return LabelModel(type="label_model", name=name, wire=wire, model=model, input=messages, **lists)


def _multi(obj: dict, param: str, name: str) -> Multi:
    raw = obj.get("graders")
    where = f"{param}.graders"
    # OpenAI's guide and real jobs send a map of variable name -> grader; the API reference shows a
    # list (or one grader): there each grader's own name is its variable.
    shape = "map"
    if isinstance(raw, dict) and "type" in raw and not isinstance(raw.get("type"), dict):
        raw, shape = [raw], "single"
    if isinstance(raw, list):
        shape = "list" if shape == "map" else shape
        entries = [
            (g.get("name") if isinstance(g, dict) else None, g, f"{where}[{i}]") for i, g in enumerate(raw)
        ]
    elif isinstance(raw, dict):
        entries = [(key, g, f"{where}.{key}") for key, g in raw.items()]
    else:
        raise InvalidRequestError(
            f"{where} must be an object mapping a variable name to a grader, e.g. "
            '{"exact": {"type": "string_check", ...}}.',
            param=where,
        )
    if not entries or len(entries) > MAX_SUB_GRADERS:
        raise InvalidRequestError(f"{where} must hold 1 to {MAX_SUB_GRADERS} graders.", param=where)
    graders: dict[str, Grader] = {}
    for key, sub, sub_param in entries:
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidRequestError(
                f"{sub_param}: the sub-grader's variable name {key!r} must be an identifier (letters, digits, "
                "underscores) so that calculate_output can use it.",
                param=sub_param,
            )
        if key in graders:
            raise InvalidRequestError(f"{sub_param}: the name {key!r} is used twice.", param=sub_param)
        graders[key] = parse_grader(sub, sub_param, nested=True)
    calculate_output = obj.get("calculate_output")
    try:
        formula = formulas.parse(calculate_output, graders)
    except formulas.FormulaError as exc:
        raise InvalidRequestError(f"{exc}.", param=f"{param}.calculate_output") from None
    wire_graders: Any = {
        "map": lambda: {key: g.wire for key, g in graders.items()},
        "list": lambda: [g.wire for g in graders.values()],
        "single": lambda: next(iter(graders.values())).wire,
    }[shape]()
    wire = {"type": "multi", "name": name, "graders": wire_graders, "calculate_output": calculate_output}
    return Multi(
        type="multi",
        name=name,
        wire=wire,
        graders=graders,
        calculate_output=calculate_output,
        formula=formula,
    )


_PARSERS = {
    "string_check": _string_check,
    "text_similarity": _text_similarity,
    "python": _python,
    "score_model": _score_model,
    "label_model": _label_model,
    "multi": _multi,
}


def walk(grader: Grader):
    """The grader and, for a multi grader, each of its sub-graders with its parameter path suffix."""
    yield "", grader
    if isinstance(grader, Multi):
        for key, sub in grader.graders.items():
            yield f".graders.{key}", sub
