"""What the training child runs on: the device, its precision, its RNG state, and the line that says so.

The worker hands the child its device through ``CUDA_VISIBLE_DEVICES``; the child trains on the first
visible CUDA device, or on the CPU when there is none (or ``spec.extra["device"] == "cpu"``). Everything
that differs between the two is decided here, once, so the recipe reads the same on both:

| | CPU | CUDA |
|---|---|---|
| base weights | fp32; LoRA under bf16: adapted linears bf16 | LoRA: bf16; QLoRA: NF4 (bitsandbytes); full: fp32 master weights |
| trained weights, gradients, AdamW state | fp32 | fp32 |
| compute | bf16 autocast on CPUs with native bf16, else fp32 | bf16 autocast, TF32 for fp32 matmuls |
| packed rows | per-sequence causal SDPA | varlen flash attention (both ``training/attention.py``) |

Why: fp32 master weights and optimizer state keep small updates (lr x gradient is often below bf16's
resolution near 1.0) from being rounded away; a frozen base loses nothing in bf16 and halves its memory.
On the CPU only the linear weights LoRA adapts are stored in bf16: autocast would cast them at every use
anyway, so the bits are those of the fp32 base, while embeddings, norms and the residual stream stay fp32.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from openft.training.hardware import cpu_has_native_bf16, cpu_name, host_memory_bytes
from openft.training.launch import launched_ranks
from openft.training.memory import GIB, DeviceMemory, Setup, gib
from openft.training.spec import TrainingSpec


def resolve_autocast(setting: str) -> Literal["bf16", "fp32"]:
    """``spec.extra["autocast"]`` on the CPU: "bf16", "fp32" or "auto" (the default).

    bf16 autocast (fp32 master weights) is ~2.6x faster than fp32 on CPUs with native bf16
    (AVX512-BF16, AMX) but ~5x slower on AVX2-only CPUs, where it is emulated; "auto" picks by CPU.
    """
    if setting in ("bf16", "fp32"):
        return setting
    return "bf16" if cpu_has_native_bf16() else "fp32"


@dataclass(frozen=True)
class Device:
    """Where and how one training child computes."""

    torch_device: torch.device
    compute: Literal["bf16", "fp32"]
    memory: DeviceMemory
    description: str  # the "Training on ..." event
    varlen: Any = None  # CUDA: the varlen attention kernel that passed its probe, if any

    @property
    def kind(self) -> Literal["cpu", "cuda"]:
        return "cuda" if self.torch_device.type == "cuda" else "cpu"

    def precision(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """The autocast context every forward runs under. ``cache=False`` casts each weight again
        when it is used instead of keeping every cast until the forward ends: under FSDP2 the
        cached bf16 copies would be a whole unsharded model per rank."""
        return torch.autocast(
            self.torch_device.type, dtype=torch.bfloat16, enabled=self.compute == "bf16", cache_enabled=cache
        )

    def base_dtype(self, fine_tuning_type: str) -> torch.dtype:
        """The dtype the base model loads in: bf16 only for a frozen base on CUDA."""
        return (
            torch.bfloat16 if self.kind == "cuda" and fine_tuning_type in ("lora", "qlora") else torch.float32
        )

    def reference_dtype(self) -> torch.dtype:
        """DPO's frozen reference copy (full fine-tuning): never trained, so bf16 on CUDA."""
        return torch.bfloat16 if self.kind == "cuda" else torch.float32

    @property
    def attention(self) -> str:
        """The attention implementation the model loads with (see ``training/attention.py``)."""
        from openft.training.attention import PACKED_ATTENTION, register

        register()
        return PACKED_ATTENTION

    def memory_setup(self, spec: TrainingSpec) -> Setup:
        return Setup(
            device=self.kind,
            method=spec.method,
            fine_tuning_type=spec.fine_tuning_type,
            lora_rank=spec.lora_rank,
            lora_targets=spec.lora_target_modules,
            bf16=self.compute == "bf16",
        )

    def rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
        if self.kind == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.torch_device)
        return state

    def restore_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what ``rng_state`` saved. A checkpoint from the other device kind restores the
        CPU-side generators; the CUDA generator then keeps the run's seed (resume stays valid,
        dropout masks differ from an uninterrupted run)."""
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if self.kind == "cuda" and state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], self.torch_device)

    def release_memory(self) -> None:
        """Give cached device memory back (after an out-of-memory error, before reporting it)."""
        gc.collect()
        if self.kind == "cuda":
            torch.cuda.empty_cache()

    def peak_memory_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.torch_device) if self.kind == "cuda" else None


def select(spec: TrainingSpec) -> Device:
    """The device this child trains on, set up (threads, TF32) and described."""
    wanted = spec.extra.get("device", "auto")
    if wanted != "cpu" and torch.cuda.is_available():
        return _cuda(spec)
    if wanted == "cuda":
        raise RuntimeError("spec.extra['device'] is 'cuda' but PyTorch sees no CUDA device.")
    return _cpu(spec)


def _cpu(spec: TrainingSpec) -> Device:
    ranks = launched_ranks()
    processes = ranks.local_world_size if ranks else 1
    # Several ranks on one CPU (gloo) split its cores and its RAM between them.
    threads = int(spec.extra.get("num_threads") or max(1, len(os.sched_getaffinity(0)) // processes))
    torch.set_num_threads(threads)
    compute = resolve_autocast(spec.extra.get("autocast", "auto"))
    memory = DeviceMemory("cpu", "CPU RAM", host_memory_bytes() // processes)
    if processes > 1:
        description = (
            f"Training on {processes} CPU processes: {cpu_name()}, {threads} thread(s) each, {compute} "
            "(master weights fp32)"
        )
    else:
        description = f"Training on CPU: {cpu_name()}, {threads} threads, {compute} (master weights fp32)"
    return Device(torch.device("cpu"), compute, memory, description)


def _cuda(spec: TrainingSpec) -> Device:
    # The worker makes the job's GPUs the only ones visible; torchrun's rank N trains on the Nth.
    ranks = launched_ranks()
    devices = ranks.local_world_size if ranks else 1
    device = torch.device("cuda", ranks.local_rank if ranks else 0)
    torch.cuda.set_device(device)
    if spec.extra.get("cuda_memory_fraction"):
        # A share of the GPU (another process uses the rest); past it the allocator raises OutOfMemoryError.
        torch.cuda.set_per_process_memory_fraction(float(spec.extra["cuda_memory_fraction"]), device)
    # TF32 for any matmul left in fp32 (optimizer-side math, fp32 modules); bf16 work is unaffected.
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    props = torch.cuda.get_device_properties(device)
    memory = DeviceMemory("cuda", props.name, props.total_memory)
    from openft.training.attention import probe_varlen

    kernel, attention = probe_varlen(device)
    held = {
        "lora": "base weights bf16, LoRA weights and optimizer fp32",
        "qlora": "base weights 4-bit NF4, LoRA weights and optimizer fp32",
        "full": "master weights and optimizer fp32",
    }[spec.fine_tuning_type]
    description = f"Training on {devices} x {props.name} ({props.total_memory / GIB:.0f} GiB), bf16 ({held}; {attention})"
    return Device(device, "bf16", memory, description, varlen=kernel)


def out_of_memory_message(spec: TrainingSpec, device: Device, step: int) -> str:
    """What to tell the user when the device ran out of memory mid-run: the model, what the plan
    expected, what the device has, and what would fit."""
    from openft.training.memory import DoesNotFit, ModelShape, UnknownArchitecture, estimate, plan

    where = f"at step {step}" if step else "before the first step"
    try:
        shape = ModelShape.from_dir(spec.base_model_path)
    except UnknownArchitecture:
        return f"Ran out of memory {where} on {device.memory.describe()}. Lower max_seq_length or batch_size."
    setup = device.memory_setup(spec)
    expected = estimate(shape, setup, spec.micro_batch_tokens, spec.gradient_checkpointing)
    peak = device.peak_memory_bytes()
    seen = f"; {gib(peak)} GiB were allocated at the peak" if peak else ""
    # What would fit with the memory really there, leaving a quarter of it for what the estimate missed.
    tighter = DeviceMemory(device.kind, device.memory.name, int(device.memory.total_bytes * 0.75))
    try:
        plan(shape, setup, tighter, spec.max_seq_length, True, spec.micro_batch_tokens // 2)
        advice = (
            "What would fit: gradient_checkpointing true, or a shorter max_seq_length"
            if not spec.gradient_checkpointing
            else "What would fit: a shorter max_seq_length"
        )
    except DoesNotFit as exc:
        advice = exc.message.rsplit("What would fit: ", 1)[-1]
        advice = f"What would fit: {advice.rstrip('.')}"
    return (
        f"{shape.name} ran out of memory {where}: fine_tuning_type={spec.fine_tuning_type} with "
        f"max_seq_length={spec.max_seq_length} was estimated at {gib(expected.total)} GiB "
        f"({expected.describe()}){seen}, and the device has {device.memory.describe()}. {advice}."
    )
