"""Memory planning without torch: what a fine-tune needs on its device, read from the model's config.json.

Standard library only: the worker's validation and ``build_spec`` call it before any child starts, so a
job that cannot fit fails fast with ``out_of_memory`` and a message that says what would fit.

The estimate has four parts, each from the architecture (a dense decoder: Llama, Mistral, Qwen2,
SmolLM2...) and how ``training/devices.py`` keeps tensors on each device kind:

- **weights**: the frozen or trained base. CUDA: bf16 for LoRA, NF4 (about 0.52 byte per linear
  weight, embeddings and head in bf16) for QLoRA, fp32 master weights for full fine-tuning. CPU:
  fp32 for every type. Under bf16 autocast an fp32 base also holds a bf16 copy of each linear
  weight for the step (autocast caches the casts), counted here; except LoRA's adapted linear weights,
  frozen and so stored in bf16 alone (``training/models.py``).
- **adapters**: LoRA's A and B (fp32), ``r x (in + out)`` per adapted linear.
- **optimizer**: what is trained, in fp32, again as its gradient and twice for AdamW's moments:
  12 bytes per trained parameter (the 4 of the weight itself are counted above).
- **activations**: bytes per token saved for backward, per layer (counted tensor by tensor from
  what transformers' Llama layers save, and checked against measured saved tensors in
  tests/training/test_memory.py), times layers, plus the logits of the trained tokens (chunked, see
  ``LOGITS_CHUNK_ELEMENTS``). With gradient checkpointing a layer keeps only its input and one layer
  at a time is recomputed. Packed rows need no L x L mask: attention runs per sequence (CPU) or
  varlen (CUDA), linear in L (``training/attention.py``).

On ``n_devices`` ranks (``training/distributed.py``) the estimate is per device. Full fine-tuning
shards (FSDP2): each rank holds 1/N of the fp32 weights, gradients and AdamW state, plus the
unsharded fp32 weights of the two layers in flight (one computing, one prefetched) and autocast's
bf16 copies of every linear weight, which backward keeps until it reaches their layer. LoRA and
QLoRA replicate (DDP): every rank holds everything, plus DDP's fp32 gradient buckets. CPU ranks
share one machine's RAM.

``plan`` turns the estimate into decisions: gradient checkpointing (only when the longest example
does not fit without it) and the packed tokens per micro-batch; or ``DoesNotFit`` naming the model,
what it needs, what there is and what would fit. ``plan_devices`` also picks ``n_devices`` for
``auto``: the fewest devices the estimate allows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

GIB = 1024**3
MAX_DEVICES = 64  # the most n_devices a job may ask for (domain/hyperparameters.py)
DeviceKind = Literal["cpu", "cuda"]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The loss never materialises logits for more than this many (token x vocabulary) elements at once:
# 2^28 fp32 elements is 1 GiB. Shared with training/objectives.py, which chunks by it.
LOGITS_CHUNK_ELEMENTS = 2**28
# Bytes per (trained token x vocabulary entry) while the loss runs: bf16 logits, their fp32 copy,
# the saved log-softmax and, in backward, the fp32 and bf16 gradients.
_LOGIT_BYTES = 16
# Packed tokens per micro-batch the planner aims for when memory allows: the CPU keeps the engine's
# long-standing default (its runs stay bit for bit what they were); a GPU wants longer rows.
PREFERRED_MICRO_BATCH_TOKENS: dict[str, int] = {"cpu": 4096, "cuda": 16384}
# Never planned: the allocator's fragmentation, the CUDA context and cuBLAS workspaces, or the
# interpreter, libraries, tokenizer and dataset in RAM.
_USABLE_FRACTION = 0.92
_RESERVED_BYTES: dict[str, int] = {"cpu": int(1.5 * GIB), "cuda": 1 * GIB}


class UnknownArchitecture(ValueError):
    """The config.json does not describe a dense decoder this module can size."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder-only transformer, as its config.json gives them."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str) -> ModelShape:
        section = config.get("text_config") or config
        try:
            hidden = int(section["hidden_size"])
            heads = int(section["num_attention_heads"])
            return cls(
                name=name,
                vocab_size=int(section["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(section["intermediate_size"]),
                num_layers=int(section["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(section.get("num_key_value_heads") or heads),
                head_dim=int(section.get("head_dim") or hidden // heads),
                tie_word_embeddings=bool(
                    config.get("tie_word_embeddings", section.get("tie_word_embeddings"))
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnknownArchitecture(
                f"config.json of {name} lacks a dense decoder's sizes ({exc})"
            ) from None

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> ModelShape:
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise UnknownArchitecture(f"cannot read {path / 'config.json'}: {exc}") from None
        return cls.from_config(config, name or config.get("_name_or_path") or path.name)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of one layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def parameters(self) -> int:
        """Stored parameters (a tied head counted once), as ``parameter_count`` sums them from files."""
        norms = self.num_layers * 2 * self.hidden_size + self.hidden_size
        head = 0 if self.tie_word_embeddings else self.embedding_parameters
        return self.num_layers * self.layer_linear_parameters + norms + self.embedding_parameters + head

    def lora_parameters(self, rank: int, targets: str | list[str]) -> int:
        shapes = self.linear_shapes()
        return self.num_layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in _adapted(targets))

    def adapted_linear_parameters(self, targets: str | list[str]) -> int:
        """Base weights of the linear layers LoRA adapts (all of a layer's with ``all-linear``)."""
        shapes = self.linear_shapes()
        return self.num_layers * sum(shapes[n][0] * shapes[n][1] for n in _adapted(targets))


def _adapted(targets: str | list[str]) -> list[str]:
    return ALL_LINEAR if targets in ("all-linear", "auto") else [t for t in targets if t in ALL_LINEAR]


@dataclass(frozen=True)
class Setup:
    """What a job trains and how, as far as memory is concerned."""

    device: DeviceKind
    method: str = "supervised"  # "supervised" | "dpo" | "reinforcement"
    fine_tuning_type: str = "lora"  # "lora" | "qlora" | "full"
    lora_rank: int = 16
    lora_targets: str | list[str] = "all-linear"
    bf16: bool = True  # bf16 compute (autocast); False on CPUs without native bf16
    n_devices: int = 1  # ranks the job trains on: FSDP2 shards full fine-tuning over them

    @property
    def adapters(self) -> bool:
        return self.fine_tuning_type in ("lora", "qlora")

    @property
    def sharded(self) -> bool:
        return self.n_devices > 1 and not self.adapters


@dataclass(frozen=True)
class Estimate:
    """Bytes, by part, for one micro-batch of ``tokens`` packed tokens."""

    weights: int
    adapters: int
    optimizer: int
    activations: int
    tokens: int
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return self.weights + self.adapters + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"weights {gib(self.weights)}, adapters {gib(self.adapters)}, gradients and optimizer state "
            f"{gib(self.optimizer)}, activations for {self.tokens} tokens {gib(self.activations)} GiB"
        )


def gib(n: int | float) -> str:
    """Bytes as GiB: one decimal from 10 GiB, two below."""
    return f"{n / GIB:.1f}" if n >= 10 * GIB else f"{n / GIB:.2f}"


def weight_bytes(shape: ModelShape, setup: Setup) -> int:
    linear = shape.num_layers * shape.layer_linear_parameters
    other = shape.parameters - linear
    if setup.sharded:
        # FSDP2: a 1/N shard of the fp32 master weights, two layers gathered whole at a time, and
        # autocast's bf16 copies of every linear weight, saved for backward (not sharded; with
        # gradient checkpointing ``estimate`` keeps one layer's: the recipe disables autocast's cache).
        n = setup.n_devices
        layer = shape.layer_linear_parameters + 2 * shape.hidden_size
        weights = math.ceil(4 * shape.parameters / n) + 2 * 4 * layer + (2 * linear if setup.bf16 else 0)
        if setup.method == "dpo":
            weights += math.ceil((2 if setup.device == "cuda" else 4) * shape.parameters / n)
        return weights
    if setup.device == "cuda" and setup.fine_tuning_type == "qlora":
        # NF4 with double-quantised block constants; embeddings, head and norms stay bf16. The
        # largest linear is dequantised to bf16 (and its input gradient computed) one at a time.
        largest = max(a * b for a, b in shape.linear_shapes().values())
        return int(linear * 0.516) + 2 * other + 4 * largest
    if setup.device == "cuda" and setup.fine_tuning_type == "lora":
        weights = 2 * shape.parameters
    else:
        weights = 4 * shape.parameters  # fp32: every CPU run, and full fine-tuning's master weights
        if setup.bf16:
            # CPU LoRA keeps the adapted (frozen) linear weights in bf16 alone (``training/models.py``);
            # autocast holds a cached bf16 copy of every other linear weight for the step
            adapted = shape.adapted_linear_parameters(setup.lora_targets) if setup.adapters else 0
            weights += 2 * (linear - adapted) - 2 * adapted
    if setup.method in ("dpo", "reinforcement") and setup.fine_tuning_type == "full":
        # a frozen reference copy of the base (LoRA's reference is the base with adapters off)
        weights += (2 if setup.device == "cuda" else 4) * shape.parameters
    return weights


def activation_bytes_per_token(shape: ModelShape, setup: Setup) -> dict[str, int]:
    """Bytes saved for backward per token: ``layer`` (one layer, no checkpointing), ``checkpointed``
    (one layer's input), ``fixed`` (outside the layers, per token)."""
    h, i, q, r = shape.hidden_size, shape.intermediate_size, shape.q_dim, setup.lora_rank
    a = 2 if setup.bf16 else 4  # compute dtype of matmul inputs and outputs
    # the residual stream: bf16 when the base is bf16 (CUDA LoRA/QLoRA), else fp32
    rb = 2 if setup.device == "cuda" and setup.adapters else 4
    kv = q  # keys and values as attention saves them (expanded to every query head, to be safe)
    linear_inputs = a * (3 * h + q + 2 * h + i)  # q,k,v | o | gate,up | down
    attention = a * (q + 2 * kv + q) + 4 * shape.num_heads  # q, k, v, output; log-sum-exp
    mlp = a * 3 * i  # gate, up, act(gate)
    norms = 2 * rb * h * (2 if setup.fine_tuning_type == "full" else 1)  # inputs (+ outputs for weight grads)
    lora = a * r * 7 if setup.adapters else 0
    return {
        "layer": linear_inputs + attention + mlp + norms + lora,
        "checkpointed": rb * h,
        "fixed": 3 * rb * h,  # embeddings' output, final norm
    }


def estimate(shape: ModelShape, setup: Setup, tokens: int, gradient_checkpointing: bool) -> Estimate:
    """Peak bytes to train one micro-batch of ``tokens`` packed tokens (at most one row of ``tokens``)."""
    per = activation_bytes_per_token(shape, setup)
    if gradient_checkpointing:
        per_token = shape.num_layers * per["checkpointed"] + per["layer"]  # one layer recomputed at a time
    else:
        per_token = shape.num_layers * per["layer"] + per["layer"]  # and one layer's gradients in flight
    logits_tokens = min(tokens, max(1, LOGITS_CHUNK_ELEMENTS // shape.vocab_size))
    activations = tokens * (per_token + per["fixed"]) + _LOGIT_BYTES * logits_tokens * shape.vocab_size
    if setup.adapters:
        adapters = 4 * shape.lora_parameters(setup.lora_rank, setup.lora_targets)
        trained = adapters // 4
        # DDP reduces gradients through fp32 buckets of their own
        optimizer = 12 * trained + (4 * trained if setup.n_devices > 1 else 0)
    else:
        adapters, trained = 0, shape.parameters
        optimizer = math.ceil(12 * trained / setup.n_devices)  # sharded by FSDP2 (1 device: all)
    weights = weight_bytes(shape, setup)
    if setup.sharded and setup.bf16 and gradient_checkpointing:
        # recomputed layer by layer in backward: one layer's bf16 copies at a time, not every layer's
        weights -= 2 * (shape.num_layers - 1) * shape.layer_linear_parameters
    return Estimate(
        weights=weights,
        adapters=adapters,
        optimizer=optimizer,
        activations=int(activations),
        tokens=tokens,
        gradient_checkpointing=gradient_checkpointing,
    )


@dataclass(frozen=True)
class DeviceMemory:
    """The memory a job may use on one device, and where that figure came from."""

    kind: DeviceKind
    name: str  # "NVIDIA H200", "CPU", ...
    total_bytes: int
    source: str = ""  # e.g. "OPENFT_DEVICE_MEMORY_GIB"; empty when measured

    @property
    def usable_bytes(self) -> int:
        return max(0, int(self.total_bytes * _USABLE_FRACTION) - _RESERVED_BYTES[self.kind])

    def shared_by(self, processes: int) -> DeviceMemory:
        """Each of ``processes`` CPU ranks' part of this machine's RAM (a GPU is one rank's own)."""
        if self.kind != "cpu" or processes <= 1:
            return self
        return replace(self, total_bytes=self.total_bytes // processes)

    def describe(self) -> str:
        where = f"{self.name}, set by {self.source}" if self.source else self.name
        return f"{gib(self.total_bytes)} GiB ({where})"


@dataclass(frozen=True)
class Plan:
    gradient_checkpointing: bool
    micro_batch_tokens: int
    estimate: Estimate  # per device
    n_devices: int = 1


class DoesNotFit(Exception):
    """The job cannot train on the device even at its smallest; the message says what would fit."""

    def __init__(self, message: str, needed: Estimate) -> None:
        super().__init__(message)
        self.message = message
        self.needed = needed


def longest_row(setup: Setup, max_seq_length: int) -> int:
    """A row holds whole examples: a DPO pair (chosen and rejected) is two sequences."""
    return max_seq_length * (2 if setup.method == "dpo" else 1)


def _largest_fitting(shape: ModelShape, setup: Setup, low: int, high: int, checkpointing: bool, room: int):
    """The most tokens in [low, high] whose estimate fits in ``room``, or None."""
    if estimate(shape, setup, low, checkpointing).total > room:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if estimate(shape, setup, mid, checkpointing).total <= room:
            low = mid
        else:
            high = mid - 1
    return low


def plan(
    shape: ModelShape,
    setup: Setup,
    device: DeviceMemory,
    max_seq_length: int,
    gradient_checkpointing: bool | str = "auto",
    preferred_tokens: int | None = None,
) -> Plan:
    """Gradient checkpointing and micro-batch tokens for a job, or ``DoesNotFit``.

    ``auto`` checkpointing stays off when a row of the longest example fits without it (recomputing
    every layer costs about a third more compute); the micro-batch is then as long as memory allows,
    up to ``preferred_tokens`` (never shorter than that example).
    """
    device = device.shared_by(setup.n_devices)
    room = device.usable_bytes
    longest = longest_row(setup, max_seq_length)
    preferred = max(longest, preferred_tokens or PREFERRED_MICRO_BATCH_TOKENS[device.kind])
    choices = [False, True] if gradient_checkpointing == "auto" else [bool(gradient_checkpointing)]
    for checkpointing in choices:
        tokens = _largest_fitting(shape, setup, longest, preferred, checkpointing, room)
        if tokens is not None:
            return Plan(checkpointing, tokens, estimate(shape, setup, tokens, checkpointing), setup.n_devices)
    needed = estimate(shape, setup, longest, choices[-1])
    raise DoesNotFit(_does_not_fit_message(shape, setup, device, max_seq_length, needed), needed)


def plan_devices(
    shape: ModelShape,
    setup: Setup,
    device: DeviceMemory,
    max_seq_length: int,
    gradient_checkpointing: bool | str = "auto",
    max_devices: int = 1,
) -> Plan:
    """``n_devices: auto``: the plan on the fewest devices (up to ``max_devices``) that fit. Only
    full fine-tuning on GPUs gains memory from more devices (FSDP2 shards it; DDP replicates LoRA,
    and CPU ranks share one RAM), so anything else is planned on one. Raises the one-device
    ``DoesNotFit`` when none fits."""
    gains = setup.fine_tuning_type == "full" and device.kind == "cuda"
    refused: DoesNotFit | None = None
    for n in range(1, max(1, max_devices) + 1 if gains else 2):
        try:
            return plan(shape, replace(setup, n_devices=n), device, max_seq_length, gradient_checkpointing)
        except DoesNotFit as exc:
            refused = refused or exc
    assert refused is not None
    raise refused


def _fits_on(shape: ModelShape, setup: Setup, device: DeviceMemory, n: int, tokens: int) -> bool:
    sharded = replace(setup, n_devices=n, device="cuda")
    room = DeviceMemory("cuda", device.name, device.total_bytes).usable_bytes
    return estimate(shape, sharded, tokens, True).total <= room


def _does_not_fit_message(
    shape: ModelShape, setup: Setup, device: DeviceMemory, max_seq_length: int, needed: Estimate
) -> str:
    room = device.usable_bytes
    options = []
    shorter = (
        _largest_fitting(shape, setup, 16, max_seq_length - 1, True, room) if max_seq_length > 16 else None
    )
    if shorter is not None:
        per_example = shorter // (2 if setup.method == "dpo" else 1)
        options.append(f"max_seq_length <= {per_example}")
    if setup.fine_tuning_type != "qlora":
        quantised = replace(setup, fine_tuning_type="qlora", device="cuda")
        qlora = estimate(shape, quantised, longest_row(setup, max_seq_length), True)
        where = "" if device.kind == "cuda" else " on a CUDA worker"
        if qlora.total <= DeviceMemory("cuda", device.name, device.total_bytes).usable_bytes:
            options.append(f"fine_tuning_type 'qlora'{where} (about {gib(qlora.total)} GiB)")
    # Full fine-tuning sharded (FSDP2) over more GPUs; activations and bf16 copies stay per device.
    if setup.fine_tuning_type == "full":
        longest = longest_row(setup, max_seq_length)
        more = next(
            (
                n
                for n in range(setup.n_devices + 1, MAX_DEVICES + 1)
                if _fits_on(shape, setup, device, n, longest)
            ),
            None,
        )
        if more is not None:
            where = "" if device.kind == "cuda" else " GPUs (CPU ranks share one RAM)"
            options.append(f"n_devices {more}{where}, sharding the weights and optimizer state")
    what = f"fine_tuning_type={setup.fine_tuning_type}" + (" (DPO)" if setup.method == "dpo" else "")
    fits = "; or ".join(options) if options else "nothing on this device: use a smaller base model"
    checkpointing = "with" if needed.gradient_checkpointing else "without"
    return (
        f"{shape.name} does not fit in memory: {what} with max_seq_length={max_seq_length} needs "
        f"{gib(needed.total)} GiB {checkpointing} gradient checkpointing ({needed.describe()}), but the "
        f"device has {device.describe()}, of which {gib(room)} GiB can be planned. What would fit: {fits}."
    )
