"""What this machine has, read without torch: the CPU's name and bf16 support, RAM, visible CUDA devices.

Standard library only, so the API process and the worker can ask before any training child starts.
CUDA devices come from ``nvidia-smi`` (name and memory), filtered by ``CUDA_VISIBLE_DEVICES`` as the
CUDA runtime filters them (indices or UUIDs; an empty value hides every device).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NVIDIA_SMI_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CudaDevice:
    index: int
    uuid: str
    name: str
    memory_bytes: int


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def host_memory_bytes() -> int:
    total = _meminfo_bytes("MemTotal")
    return total if total is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory_bytes() -> int:
    """Memory the kernel says a new allocation can have without swapping (0 where it does not say)."""
    return _meminfo_bytes("MemAvailable") or 0


def _meminfo_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cuda_devices(environ: Mapping[str, str] | None = None) -> list[CudaDevice]:
    """The CUDA devices a process started with ``environ`` would see, in its own order."""
    env = os.environ if environ is None else environ
    found = _query_nvidia_smi()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    chosen: list[CudaDevice] = []
    for item in (part.strip() for part in visible.split(",")):
        # The CUDA runtime stops at the first entry it cannot match ("-1" hides everything after).
        match = [
            d
            for d in found
            if (item.isdigit() and d.index == int(item)) or (item and d.uuid.startswith(item))
        ]
        if not match:
            break
        chosen.append(match[0])
    return chosen


def _query_nvidia_smi() -> list[CudaDevice]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        done = subprocess.run(
            [binary, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> list[CudaDevice]:
    """Rows of ``index, uuid, name, memory.total`` (MiB); lines that do not parse are skipped."""
    devices = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            devices.append(CudaDevice(int(parts[0]), parts[1], parts[2], int(float(parts[3])) * 1024**2))
        except ValueError:
            continue
    return devices
