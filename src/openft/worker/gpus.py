"""The worker's GPUs: which the machine has, which the worker owns (``--gpus``), which job holds which.

Detection never imports torch (the worker's own process stays light; only training children load
it): ``nvidia-smi`` when present, else the NVIDIA driver's ``/proc/driver/nvidia/gpus``. GPUs are
numbered as nvidia-smi numbers them (PCI bus order), and a training child is started with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that ``CUDA_VISIBLE_DEVICES`` means the same numbers to CUDA
(its default order, fastest first, may differ).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
QUERY = ("index", "uuid", "name", "memory.total")


class GpuOptionError(ValueError):
    """``--gpus`` / ``OPENFT_GPUS`` names GPUs this machine does not have, or is malformed."""


@dataclass(frozen=True)
class Gpu:
    index: int  # nvidia-smi's index: what CUDA_VISIBLE_DEVICES names under CUDA_DEVICE_ORDER=PCI_BUS_ID
    name: str
    memory_bytes: int | None = None
    uuid: str | None = None


class GpuInventory(Protocol):
    """The seam: every GPU of this machine, whoever uses it. Tests pass a fixed list."""

    def detect(self) -> list[Gpu]: ...


class FixedInventory:
    """An inventory given in advance (tests, or a machine whose GPUs cannot be probed)."""

    def __init__(self, gpus: Sequence[Gpu]) -> None:
        self.gpus = list(gpus)

    def detect(self) -> list[Gpu]:
        return list(self.gpus)


class NvidiaInventory:
    """Asks ``nvidia-smi``; without it, reads the driver's ``/proc`` entries (no memory sizes there)."""

    def __init__(self, nvidia_smi: str | None = None, proc_dir: Path = NVIDIA_PROC) -> None:
        self.nvidia_smi = nvidia_smi or shutil.which("nvidia-smi")
        self.proc_dir = proc_dir

    def detect(self) -> list[Gpu]:
        if self.nvidia_smi:
            try:
                out = subprocess.run(
                    [self.nvidia_smi, f"--query-gpu={','.join(QUERY)}", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                ).stdout
                return parse_nvidia_smi(out)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                log.warning("nvidia-smi failed (%s); reading %s instead", exc, self.proc_dir)
        return read_driver_proc(self.proc_dir)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """``index, uuid, name, memory.total [MiB]`` lines, as ``--format=csv,noheader,nounits`` prints them."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        index, uuid, *name, memory = (part.strip() for part in line.split(","))
        mib = memory.strip()
        gpus.append(
            Gpu(
                index=int(index),
                name=",".join(name).strip(),
                memory_bytes=int(float(mib)) * 1024 * 1024 if mib.replace(".", "", 1).isdigit() else None,
                uuid=uuid or None,
            )
        )
    return sorted(gpus, key=lambda g: g.index)


def read_driver_proc(proc_dir: Path) -> list[Gpu]:
    """One directory per GPU named by its PCI address; sorted, their positions are nvidia-smi's indices."""
    if not proc_dir.is_dir():
        return []
    gpus = []
    for index, entry in enumerate(sorted(p for p in proc_dir.iterdir() if p.is_dir())):
        fields = {}
        info = entry / "information"
        if info.is_file():
            for line in info.read_text(errors="replace").splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    fields[key.strip()] = value.strip()
        gpus.append(Gpu(index=index, name=fields.get("Model", "NVIDIA GPU"), uuid=fields.get("GPU UUID")))
    return gpus


def parse_option(value: str) -> str | tuple[int, ...]:
    """``all``, ``none`` or a comma-separated list of GPU indices such as ``0,1,3``."""
    text = value.strip().lower()
    if text in ("all", "none"):
        return text
    try:
        indices = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise GpuOptionError(
            f"--gpus / OPENFT_GPUS must be 'all', 'none' or GPU indices such as '0,1,3'; got {value!r}."
        ) from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise GpuOptionError(f"--gpus / OPENFT_GPUS lists a negative or repeated index: {value!r}.")
    return indices


def visible(detected: Sequence[Gpu], environ: Mapping[str, str]) -> list[Gpu]:
    """The detected GPUs that the worker's own ``CUDA_VISIBLE_DEVICES`` (if set) leaves visible: by
    index (nvidia-smi's numbering) or by UUID (``GPU-...``); empty or ``-1`` hides them all. An entry
    that names no detected GPU (a MIG instance, a typo) is refused rather than guessed at."""
    mask = environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return list(detected)
    kept: list[Gpu] = []
    for part in (p.strip() for p in mask.split(",")):
        if not part or part.startswith("-"):
            break  # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU
        match = [g for g in detected if (str(g.index) if part.isdigit() else g.uuid) == part]
        if not match:
            have = ", ".join(f"{g.index} ({g.uuid})" for g in detected) or "none"
            raise GpuOptionError(
                f"CUDA_VISIBLE_DEVICES={mask!r} names {part!r}, which is not a GPU of this machine "
                f"(detected: {have}). Unset it and choose with --gpus / OPENFT_GPUS instead."
            )
        kept.extend(g for g in match if g not in kept)
    return kept


def owned(option: str, detected: Sequence[Gpu], environ: Mapping[str, str] | None = None) -> list[Gpu]:
    """The GPUs a worker started with ``--gpus option`` owns. Raises ``GpuOptionError`` for an index
    that is not a visible GPU of this machine."""
    choice = parse_option(option)
    available = visible(detected, os.environ if environ is None else environ)
    if choice == "none":
        return []
    if choice == "all":
        return available
    by_index = {g.index: g for g in available}
    missing = [i for i in choice if i not in by_index]
    if missing:
        have = ", ".join(str(g.index) for g in available) or "none"
        raise GpuOptionError(
            f"--gpus {option}: no visible GPU with index {', '.join(map(str, missing))} on this machine "
            f"(visible: {have})."
        )
    return [by_index[i] for i in choice]


class DevicePool:
    """Which of the worker's devices each running job holds.

    A GPU worker has one slot per GPU and hands a job the lowest-numbered free GPUs it needs. A CPU
    worker (no GPUs) has one slot: one job at a time, as before.
    """

    def __init__(self, gpus: Sequence[Gpu], *, machine_has_gpus: bool | None = None) -> None:
        self.gpus = sorted(gpus, key=lambda g: g.index)
        # On a machine with GPUs the worker does not own (--gpus none, or a subset), each child is
        # told which to use, an empty list included; elsewhere the environment is left alone.
        self.machine_has_gpus = bool(self.gpus) if machine_has_gpus is None else machine_has_gpus
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, ...]] = {}

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    @property
    def slots(self) -> int:
        return len(self.gpus) if self.gpus else 1

    def free(self) -> int:
        """Free GPUs on a GPU worker; free slots (0 or 1) on a CPU worker."""
        with self._lock:
            if not self.gpus:
                return 0 if self._held else 1
            return len(self.gpus) - sum(len(d) for d in self._held.values())

    def take(self, job_id: str, n_devices: int) -> tuple[int, ...]:
        """Reserve ``n_devices`` GPUs for ``job_id`` (the whole CPU on a CPU worker)."""
        with self._lock:
            if not self.gpus:
                if self._held:
                    raise RuntimeError("the CPU slot is taken")
                self._held[job_id] = ()
                return ()
            busy = {i for held in self._held.values() for i in held}
            free = [g.index for g in self.gpus if g.index not in busy]
            if n_devices > len(free):
                raise RuntimeError(f"job {job_id} needs {n_devices} GPUs; {len(free)} are free")
            self._held[job_id] = tuple(free[:n_devices])
            return self._held[job_id]

    def give_back(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def held(self) -> dict[str, tuple[int, ...]]:
        with self._lock:
            return dict(self._held)

    def cuda_visible_devices(self, devices: Sequence[int]) -> str | None:
        """The child's ``CUDA_VISIBLE_DEVICES``, or None to leave the environment as it is."""
        if not self.machine_has_gpus:
            return None
        return ",".join(str(i) for i in devices)
