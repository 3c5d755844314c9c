"""The ``calculate_output`` of a multi grader: a small arithmetic language over sub-grader names.

Parsed with Python's ``ast`` (``mode="eval"``) and interpreted node by node from a whitelist:
numbers, names of sub-graders, ``+ - * / ^ **`` (``^`` is a power, as in OpenAI's examples),
unary ``+``/``-``, parentheses, and the functions ``min max abs floor ceil exp sqrt log``. Nothing
is ever handed to ``eval``; anything else is refused with the reason when the grader is validated.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_ARITY = {"abs": (1, 1), "floor": (1, 1), "ceil": (1, 1), "exp": (1, 1), "sqrt": (1, 1), "log": (1, 2)}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
MAX_LENGTH = 4096
MAX_EXPONENT = 1000.0


class FormulaError(ValueError):
    """The formula cannot be parsed, names an unknown grader, or fails to evaluate."""


@dataclass(frozen=True)
class Formula:
    text: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, float]) -> float:
        try:
            result = float(_evaluate(self.tree.body, values))
        except (ArithmeticError, ValueError) as exc:
            raise FormulaError(f"calculate_output {self.text!r} failed: {exc}") from None
        if not math.isfinite(result):
            raise FormulaError(f"calculate_output {self.text!r} is {result} for these scores")
        return result


def parse(text: str, known: Iterable[str]) -> Formula:
    """Parse and check ``text`` against the sub-grader names ``known``."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("calculate_output must be a non-empty formula over the sub-graders' names")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"calculate_output is {len(text)} characters; at most {MAX_LENGTH} are allowed")
    try:
        # ^ is a power here, binding as tightly as **; Python would read it as XOR, below + and -.
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"calculate_output {text!r} is not a valid formula: {exc.msg}") from None
    known = set(known)
    names: set[str] = set()
    callees = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        _check_node(node, known, names, text, callees)
    return Formula(text, tree, frozenset(names))


def _check_node(node: ast.AST, known: set[str], names: set[str], text: str, callees: set[int]) -> None:
    if isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
        return  # operators are checked with their BinOp or UnaryOp
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"calculate_output {text!r}: only numbers may appear as constants")
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError(f"calculate_output {text!r}: the operator {_operator(node.op)} is not allowed")
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.UAdd | ast.USub):
            raise FormulaError(f"calculate_output {text!r}: the operator {_operator(node.op)} is not allowed")
        return
    if isinstance(node, ast.Name):
        if id(node) in callees:
            return  # checked with its Call
        if node.id not in known:
            raise FormulaError(
                f"calculate_output {text!r} names {node.id!r}, which is not one of the sub-graders "
                f"({', '.join(sorted(known)) or 'none'})"
            )
        names.add(node.id)
        return
    if isinstance(node, ast.Call):
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if callee not in FUNCTIONS or node.keywords:
            raise FormulaError(
                f"calculate_output {text!r}: only the functions {', '.join(FUNCTIONS)} may be called, "
                "with positional arguments"
            )
        low, high = _ARITY.get(callee, (1, 64))
        if not low <= len(node.args) <= high:
            raise FormulaError(f"calculate_output {text!r}: {callee}() takes {low} to {high} arguments")
        return
    raise FormulaError(f"calculate_output {text!r}: {type(node).__name__} is not allowed in a formula")


def _evaluate(node: ast.AST, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"the exponent {right} is too large")
        return float(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return float(FUNCTIONS[node.func.id](*(_evaluate(a, values) for a in node.args)))
    raise ValueError(f"{type(node).__name__} is not allowed")


def _operator(op: ast.AST) -> str:
    return {
        "Mod": "%",
        "FloorDiv": "//",
        "LShift": "<<",
        "RShift": ">>",
        "BitOr": "|",
        "BitAnd": "&",
        "MatMult": "@",
        "Not": "not",
        "Invert": "~",
    }.get(type(op).__name__, type(op).__name__)
