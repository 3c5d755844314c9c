"""The seam between jobs and the devices that train them: can a worker run CUDA, how much memory does
one training device have, and what is a job's memory plan there. Torch-free: the API process asks at
create time, the worker before it starts a training child.

The answers come from settings when they override them (``OPENFT_CUDA``, ``OPENFT_DEVICE_MEMORY_GIB``),
else from this machine's devices (``training/hardware.py``), else from the workers registry (the
devices the live workers reported): an API or validation host without a GPU still knows that the
deployment's GPU workers can run a job.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openft.domain.hyperparameters import AUTO
from openft.settings import Settings
from openft.training.hardware import cpu_has_native_bf16, cuda_devices, host_memory_bytes
from openft.training.memory import (
    GIB,
    DeviceMemory,
    ModelShape,
    Plan,
    Setup,
    UnknownArchitecture,
    plan,
    plan_devices,
)

if TYPE_CHECKING:
    from openft.services.workers import WorkerRegistry


def cuda_available(settings: Settings, registry: WorkerRegistry | None = None) -> bool:
    """Whether a worker can train on CUDA: ``OPENFT_CUDA``, else CUDA devices visible here, else a
    live worker in the registry that owns a GPU."""
    if settings.cuda_available is not None:
        return settings.cuda_available
    if cuda_devices():
        return True
    return registry is not None and registry.capacity().can_run_cuda


def _registered_gpu(registry: WorkerRegistry | None) -> tuple[str, int] | None:
    """The largest GPU (name, bytes) a live worker reported: a job that fits it can run somewhere."""
    if registry is None:
        return None
    gpus = [d for w in registry.live() for d in w.gpus if d.memory_bytes]
    if not gpus:
        return None
    biggest = max(gpus, key=lambda d: d.memory_bytes or 0)
    return biggest.name, int(biggest.memory_bytes or 0)


def device_memory(settings: Settings, registry: WorkerRegistry | None = None) -> DeviceMemory | None:
    """The memory one training device has: ``OPENFT_DEVICE_MEMORY_GIB``, else the first visible
    CUDA device's, else the largest GPU of a live worker in the registry, else this machine's RAM (a
    CPU worker trains in RAM). None when CUDA workers are declared (``OPENFT_CUDA=true``) but none is
    visible here or registered: then nothing is planned."""
    devices = cuda_devices() if settings.cuda_available is not False else []
    registered = None if devices or settings.cuda_available is False else _registered_gpu(registry)
    kind = "cuda" if devices or registered or settings.cuda_available else "cpu"
    if devices:
        name = devices[0].name
    elif registered:
        name = registered[0]
    else:
        name = "CUDA device" if kind == "cuda" else "CPU RAM"
    if settings.device_memory_gib is not None:
        return DeviceMemory(kind, name, int(settings.device_memory_gib * GIB), "OPENFT_DEVICE_MEMORY_GIB")
    if devices:
        return DeviceMemory(kind, name, devices[0].memory_bytes)
    if registered:
        return DeviceMemory(kind, name, registered[1], "the largest GPU of the live workers")
    if kind == "cuda":
        return None
    return DeviceMemory("cpu", name, host_memory_bytes())


def devices_per_worker(settings: Settings, registry: WorkerRegistry | None = None) -> int:
    """The most devices one job can get: the GPUs visible here, else those of the live worker with
    the most; 1 on the CPU (one CPU's RAM is not more for being split among ranks)."""
    if settings.cuda_available is False:
        return 1
    local = len(cuda_devices())
    if local:
        return local
    registered = [len(w.gpus) for w in registry.live()] if registry is not None else []
    return max([1, *registered])


def memory_plan(
    settings: Settings,
    model_dir: Path,
    model_name: str,
    method: str,
    hp: dict[str, Any],
    registry: WorkerRegistry | None = None,
) -> Plan | None:
    """The memory plan for a job's resolved hyperparameters on this deployment's training device,
    on ``n_devices`` of them; for ``n_devices: auto`` on the fewest that fit (``Plan.n_devices``).

    Raises ``DoesNotFit`` when even gradient checkpointing and one example per micro-batch do not fit.
    None when nothing can be planned: an architecture the estimate cannot size, or unknown memory.
    """
    device = device_memory(settings, registry)
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
        bf16=device.kind == "cuda"
        or settings.cpu_autocast == "bf16"
        or (settings.cpu_autocast == "auto" and cpu_has_native_bf16()),
    )
    checkpointing = hp.get("gradient_checkpointing", AUTO)
    n_devices = hp.get("n_devices", 1)
    if n_devices == AUTO:
        most = devices_per_worker(settings, registry)
        return plan_devices(shape, setup, device, int(hp["max_seq_length"]), checkpointing, most)
    setup = replace(setup, n_devices=int(n_devices))
    return plan(shape, setup, device, int(hp["max_seq_length"]), checkpointing)
