"""Hyperparameter ranges and the rules that resolve ``"auto"``.

OpenAI's three knobs (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``, plus ``beta``
for DPO) keep their meaning and ranges. openft's extensions live beside them in
``method.<type>.hyperparameters`` and also default to ``"auto"``.

Resolution rules (documented in the README):

- ``n_epochs``: OpenAI's published cookbook rule: 3 epochs, raised so that small files see
  at least 100 examples (at most 25 epochs), lowered so that large files see at most 25,000.
- ``batch_size``: ``clamp(ceil(0.002 * n_examples), 1, 256)``, the legacy API's "about 0.2%".
- ``learning_rate_multiplier``: 1.0; the learning rate is ``base_learning_rate`` of the method and
  fine-tuning type times the multiplier (see ``base_learning_rate``).
- ``beta`` (DPO): 0.1.
- ``fine_tuning_type``: ``"lora"``; ``lora_rank`` 16; ``lora_alpha`` 2 x rank; ``lora_dropout`` 0.0;
  ``lora_target_modules`` ``"all-linear"``; ``max_seq_length``: the base model's context, at most 2048.
  ``"qlora"`` is LoRA over a base loaded in 4-bit NF4; it needs a CUDA worker.
- ``gradient_checkpointing``: decided by the memory plan (``training/memory.py``), not here: off
  when the device holds a micro-batch of the longest example without it, on otherwise. See
  ``resolve_gradient_checkpointing``.
- ``n_devices``: how many devices (GPUs on a GPU worker, processes on a CPU worker) one job trains on;
  ``auto`` is decided by the memory plan, like ``gradient_checkpointing``: the fewest devices whose
  memory holds the job (see ``resolve_n_devices``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AUTO = "auto"

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
DEFAULT_MAX_SEQ_LENGTH = 2048
# Upper bounds for the real-valued knobs: past them training can only diverge (and an infinite or
# NaN value would fail the job as nan_loss long after create said yes). Comparisons refuse NaN.
MAX_LEARNING_RATE_MULTIPLIER = 100
MAX_LORA_ALPHA = 65536

OPENAI_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
EXTENSION_KEYS = (
    "fine_tuning_type",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "max_seq_length",
    "n_devices",
    "gradient_checkpointing",
)
MAX_DEVICES = 64
FINE_TUNING_TYPES = ("lora", "qlora", "full")
# The types whose trained weights are a LoRA adapter over an unchanged base.
ADAPTER_TYPES = ("lora", "qlora")
# Reinforcement: OpenAI's RFT keys, then openft's rollout extensions (see domain/reinforcement.py).
RFT_OPENAI_KEYS = ("reasoning_effort", "compute_multiplier", "eval_interval", "eval_samples")
RFT_EXTENSION_KEYS = ("group_size", "max_completion_tokens", "temperature", "beta")
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "supervised": OPENAI_KEYS + EXTENSION_KEYS,
    "dpo": OPENAI_KEYS + ("beta",) + EXTENSION_KEYS,
    "reinforcement": OPENAI_KEYS + RFT_OPENAI_KEYS + RFT_EXTENSION_KEYS + EXTENSION_KEYS,
}


class HyperparameterError(ValueError):
    """A hyperparameter value is out of range; ``param`` names it as the API should report it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_in(name: str, value: Any, low: int, high: int, param: str) -> None:
    if value == AUTO:
        return
    if not (_is_number(value) and float(value).is_integer() and low <= value <= high):
        raise HyperparameterError(
            f"Invalid value for {name}: {value!r}. Expected 'auto' or an integer from {low} to {high}.", param
        )


def check(method: str, hyperparameters: dict[str, Any], param_prefix: str) -> dict[str, Any]:
    """Validate a method's hyperparameters; return them with every known key present (``"auto"``
    where absent). Raises ``HyperparameterError`` naming the first bad field."""
    allowed = METHOD_KEYS[method]
    for key in hyperparameters:
        if key not in allowed:
            raise HyperparameterError(
                f"Unknown hyperparameter {key!r} for method {method!r}. Known: {', '.join(allowed)}.",
                f"{param_prefix}.{key}",
            )
    hp = {key: hyperparameters.get(key, AUTO) for key in allowed}
    hp = {key: (AUTO if value is None else value) for key, value in hp.items()}

    def p(key: str) -> str:
        return f"{param_prefix}.{key}"

    _int_in("n_epochs", hp["n_epochs"], 1, 50, p("n_epochs"))
    _int_in("batch_size", hp["batch_size"], 1, 256, p("batch_size"))
    lrm = hp["learning_rate_multiplier"]
    if lrm != AUTO and not (_is_number(lrm) and 0 < lrm <= MAX_LEARNING_RATE_MULTIPLIER):
        raise HyperparameterError(
            f"Invalid value for learning_rate_multiplier: {lrm!r}. Expected 'auto' or a number > 0 and at "
            f"most {MAX_LEARNING_RATE_MULTIPLIER} (it multiplies a base rate of about 2e-4).",
            p("learning_rate_multiplier"),
        )
    if method == "reinforcement":
        from openft.domain.reinforcement import check_reinforcement

        check_reinforcement(hp, p)
    elif "beta" in hp:
        beta = hp["beta"]
        if beta != AUTO and not (_is_number(beta) and 0 < beta <= 2):
            raise HyperparameterError(
                f"Invalid value for beta: {beta!r}. Expected 'auto' or a number in (0, 2].", p("beta")
            )
    ftt = hp["fine_tuning_type"]
    if ftt != AUTO and ftt not in FINE_TUNING_TYPES:
        raise HyperparameterError(
            f"Invalid value for fine_tuning_type: {ftt!r}. Expected 'auto', 'lora', 'qlora' or 'full'.",
            p("fine_tuning_type"),
        )
    _int_in("lora_rank", hp["lora_rank"], 1, 1024, p("lora_rank"))
    alpha = hp["lora_alpha"]
    if alpha != AUTO and not (_is_number(alpha) and 0 < alpha <= MAX_LORA_ALPHA):
        raise HyperparameterError(
            f"Invalid value for lora_alpha: {alpha!r}. Expected 'auto' or a number > 0 and at most "
            f"{MAX_LORA_ALPHA}.",
            p("lora_alpha"),
        )
    dropout = hp["lora_dropout"]
    if dropout != AUTO and not (_is_number(dropout) and 0 <= dropout < 1):
        raise HyperparameterError(
            f"Invalid value for lora_dropout: {dropout!r}. Expected 'auto' or a number in [0, 1).",
            p("lora_dropout"),
        )
    targets = hp["lora_target_modules"]
    if targets not in (AUTO, "all-linear") and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
    ):
        raise HyperparameterError(
            "Invalid value for lora_target_modules: expected 'auto', 'all-linear' or a list of module names.",
            p("lora_target_modules"),
        )
    _int_in("max_seq_length", hp["max_seq_length"], 16, 1_048_576, p("max_seq_length"))
    _int_in("n_devices", hp["n_devices"], 1, MAX_DEVICES, p("n_devices"))
    if method == "reinforcement" and hp["n_devices"] not in (AUTO, 1):
        raise HyperparameterError(
            f"Invalid value for n_devices: {hp['n_devices']}. Reinforcement jobs train on one device for now "
            "(sampling, grading and the policy update are not split across devices); use 1 or 'auto'.",
            p("n_devices"),
        )
    checkpointing = hp["gradient_checkpointing"]
    if checkpointing != AUTO and not isinstance(checkpointing, bool):
        raise HyperparameterError(
            f"Invalid value for gradient_checkpointing: {checkpointing!r}. Expected 'auto', true or false.",
            p("gradient_checkpointing"),
        )
    return hp


def resolve_n_epochs(n_examples: int) -> int:
    n = max(n_examples, 1)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def resolve_batch_size(n_examples: int) -> int:
    return min(256, max(1, math.ceil(0.002 * n_examples)))


@dataclass(frozen=True)
class ModelFacts:
    """What resolution needs to know about the base model."""

    context_length: int


def resolve(
    method: str, hp: dict[str, Any], n_examples: int, model: ModelFacts, n_validation: int | None = None
) -> dict[str, Any]:
    """Replace every ``"auto"`` with a concrete value, except ``gradient_checkpointing`` and
    ``n_devices``, which the memory plan decides once the rest is known
    (``resolve_gradient_checkpointing``, ``resolve_n_devices``). ``hp`` must have passed ``check``."""
    out = dict(hp)

    def pick(key: str, value: Any) -> None:
        if out.get(key, AUTO) == AUTO:
            out[key] = value

    pick("n_epochs", resolve_n_epochs(n_examples))
    pick("batch_size", resolve_batch_size(n_examples))
    pick("learning_rate_multiplier", 1.0)
    if method == "dpo":
        pick("beta", 0.1)
    pick("fine_tuning_type", "lora")
    pick("lora_rank", 16)
    pick("lora_alpha", 2 * int(out["lora_rank"]))
    pick("lora_dropout", 0.0)
    pick("lora_target_modules", "all-linear")
    pick("max_seq_length", min(model.context_length, DEFAULT_MAX_SEQ_LENGTH))
    for key in ("n_epochs", "batch_size", "lora_rank", "max_seq_length"):
        out[key] = int(out[key])
    if method == "reinforcement":
        from openft.domain.reinforcement import resolve_reinforcement

        resolve_reinforcement(out, total_steps(n_examples, out["batch_size"], out["n_epochs"]), n_validation)
    if out.get("n_devices", AUTO) != AUTO:
        out["n_devices"] = int(out["n_devices"])
    return out


def resolve_n_devices(hp: dict[str, Any], planned: int) -> dict[str, Any]:
    """``hp`` with ``n_devices`` resolved: ``planned`` is the memory plan's fewest devices that hold
    the job on the deployment's GPUs (1 on a CPU, or where nothing could be planned). A GPU worker
    claims the job only when this many of its GPUs are free (``JobRuntime.claim_training``)."""
    out = dict(hp)
    if out.get("n_devices", AUTO) == AUTO:
        out["n_devices"] = int(planned)
    return out


def resolve_gradient_checkpointing(hp: dict[str, Any], needed: bool) -> dict[str, Any]:
    """``hp`` with ``gradient_checkpointing`` resolved: ``needed`` is the memory plan's answer."""
    out = dict(hp)
    if out.get("gradient_checkpointing", AUTO) == AUTO:
        out["gradient_checkpointing"] = needed
    return out


def base_learning_rate(method: str, fine_tuning_type: str) -> float:
    """The rate that ``learning_rate_multiplier`` scales: LoRA tolerates (and needs) a far higher
    rate than updating every weight; DPO moves more gently than SFT."""
    if method == "reinforcement":
        return 2e-5 if fine_tuning_type in ADAPTER_TYPES else 1e-6
    if fine_tuning_type in ADAPTER_TYPES:
        return 2e-4 if method == "supervised" else 5e-5
    return 2e-5 if method == "supervised" else 5e-6


def total_steps(n_examples: int, batch_size: int, n_epochs: int) -> int:
    return n_epochs * math.ceil(n_examples / batch_size)


def openai_view(hp: dict[str, Any]) -> dict[str, Any]:
    """The top-level ``hyperparameters`` object: OpenAI's three keys only."""
    return {key: hp.get(key, AUTO) for key in OPENAI_KEYS}
