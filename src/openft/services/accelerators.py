"""The seam between jobs and the devices that train them: can a worker run CUDA, how much memory does
one training device have, and what is a job's memory plan there. Torch-free: the API process asks at
create time, the worker before it starts a training child.

Today the answers come from this machine (``training/hardware.py``) unless settings override them;
once workers register their devices in the database, these two functions read that instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openft.domain.hyperparameters import AUTO
from openft.settings import Settings
from openft.training.hardware import cpu_has_native_bf16, cuda_devices, host_memory_bytes
from openft.training.memory import GIB, DeviceMemory, ModelShape, Plan, Setup, UnknownArchitecture, plan


def cuda_available(settings: Settings) -> bool:
    """Whether a worker can train on CUDA (``OPENFT_CUDA``, else CUDA devices visible here)."""
    if settings.cuda_available is not None:
        return settings.cuda_available
    return bool(cuda_devices())


def device_memory(settings: Settings) -> DeviceMemory | None:
    """The memory one training device has: ``OPENFT_DEVICE_MEMORY_GIB``, else the first visible
    CUDA device's, else this machine's RAM (a CPU worker trains in RAM). None when CUDA workers are
    declared (``OPENFT_CUDA=true``) but none is visible here: then nothing is planned."""
    devices = cuda_devices() if settings.cuda_available is not False else []
    kind = "cuda" if devices or settings.cuda_available else "cpu"
    name = devices[0].name if devices else ("CUDA device" if kind == "cuda" else "CPU RAM")
    if settings.device_memory_gib is not None:
        return DeviceMemory(kind, name, int(settings.device_memory_gib * GIB), "OPENFT_DEVICE_MEMORY_GIB")
    if devices:
        return DeviceMemory(kind, name, devices[0].memory_bytes)
    if kind == "cuda":
        return None
    return DeviceMemory("cpu", name, host_memory_bytes())


def memory_plan(
    settings: Settings, model_dir: Path, model_name: str, method: str, hp: dict[str, Any]
) -> Plan | None:
    """The memory plan for a job's resolved hyperparameters on this deployment's training device.

    Raises ``DoesNotFit`` when even gradient checkpointing and one example per micro-batch do not fit.
    None when nothing can be planned: an architecture the estimate cannot size, or unknown memory.
    """
    device = device_memory(settings)
    if device is None:
        return None
    try:
        shape = ModelShape.from_dir(model_dir, model_name)
    except UnknownArchitecture:
        return None
    setup = Setup(
        device=device.kind,
        method=method,
        fine_tuning_type=hp["fine_tuning_type"],
        lora_rank=int(hp["lora_rank"]),
        lora_targets=hp["lora_target_modules"],
        bf16=device.kind == "cuda" or cpu_has_native_bf16(),
    )
    return plan(shape, setup, device, int(hp["max_seq_length"]), hp.get("gradient_checkpointing", AUTO))
