"""The device seam: settings override what this machine reports; the environment spells them."""

from __future__ import annotations

import pytest

from openft.services import accelerators
from openft.settings import Settings, SettingsError
from openft.training import hardware
from openft.training.hardware import CudaDevice
from openft.training.memory import GIB

H200 = CudaDevice(0, "GPU-aaaa", "NVIDIA H200", 143771 * 2**20)


def settings(tmp_path, **overrides) -> Settings:
    return Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'db'}", **overrides)


def test_cuda_available_and_memory_follow_the_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "_query_nvidia_smi", lambda: [H200])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert accelerators.cuda_available(settings(tmp_path))
    memory = accelerators.device_memory(settings(tmp_path))
    assert (memory.kind, memory.name, memory.total_bytes, memory.source) == (
        "cuda",
        "NVIDIA H200",
        H200.memory_bytes,
        "",
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not accelerators.cuda_available(settings(tmp_path))
    assert accelerators.device_memory(settings(tmp_path)).kind == "cpu"


def test_settings_override_what_the_machine_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "_query_nvidia_smi", lambda: [])
    assert accelerators.cuda_available(settings(tmp_path, cuda_available=True))
    assert accelerators.device_memory(settings(tmp_path, cuda_available=True)) is None  # nothing to plan with
    budget = accelerators.device_memory(settings(tmp_path, device_memory_gib=2.5))
    assert (budget.kind, budget.total_bytes, budget.source) == (
        "cpu",
        int(2.5 * GIB),
        "OPENFT_DEVICE_MEMORY_GIB",
    )
    monkeypatch.setattr(hardware, "_query_nvidia_smi", lambda: [H200])
    assert not accelerators.cuda_available(settings(tmp_path, cuda_available=False))
    assert accelerators.device_memory(settings(tmp_path, cuda_available=False)).kind == "cpu"


def test_environment_spells_the_settings(tmp_path):
    env = {"OPENFT_HOME": str(tmp_path), "OPENFT_DEVICE_MEMORY_GIB": "24", "OPENFT_CUDA": "false"}
    built = Settings.from_env(env)
    assert (built.device_memory_gib, built.cuda_available) == (24.0, False)
    auto = Settings.from_env(
        {"OPENFT_HOME": str(tmp_path), "OPENFT_DEVICE_MEMORY_GIB": "auto", "OPENFT_CUDA": "auto"}
    )
    assert (auto.device_memory_gib, auto.cuda_available) == (None, None)
    with pytest.raises(SettingsError, match="OPENFT_CUDA"):
        Settings.from_env({"OPENFT_HOME": str(tmp_path), "OPENFT_CUDA": "maybe"})
    with pytest.raises(SettingsError, match="OPENFT_DEVICE_MEMORY_GIB"):
        Settings.from_env({"OPENFT_HOME": str(tmp_path), "OPENFT_DEVICE_MEMORY_GIB": "-1"})


def test_cpu_autocast_is_spelled_by_the_environment_and_checked(tmp_path):
    assert Settings.from_env({"OPENFT_HOME": str(tmp_path)}).cpu_autocast == "auto"
    assert (
        Settings.from_env({"OPENFT_HOME": str(tmp_path), "OPENFT_CPU_AUTOCAST": "FP32"}).cpu_autocast
        == "fp32"
    )
    with pytest.raises(SettingsError, match="OPENFT_CPU_AUTOCAST must be 'auto', 'bf16' or 'fp32'"):
        Settings.from_env({"OPENFT_HOME": str(tmp_path), "OPENFT_CPU_AUTOCAST": "fp16"})


def test_devices_per_worker_counts_this_machine_then_the_largest_live_worker(tmp_path, monkeypatch):
    from openft.services.workers import CUDA, Device, WorkerInfo

    class Registry:
        def __init__(self, *gpu_counts: int) -> None:
            self.workers = [
                WorkerInfo(
                    f"w{i}", "host", i, tuple(Device(CUDA, "GPU", g, 80 * GIB) for g in range(n)), slots=n
                )
                for i, n in enumerate(gpu_counts)
            ]

        def live(self):
            return self.workers

    monkeypatch.setattr(hardware, "_query_nvidia_smi", lambda: [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert accelerators.devices_per_worker(settings(tmp_path)) == 1  # a CPU worker: one
    assert accelerators.devices_per_worker(settings(tmp_path), Registry(2, 8, 4)) == 8
    assert accelerators.devices_per_worker(settings(tmp_path, cuda_available=False), Registry(8)) == 1
    monkeypatch.setattr(hardware, "_query_nvidia_smi", lambda: [H200, H200])
    assert accelerators.devices_per_worker(settings(tmp_path), Registry(8)) == 2  # the GPUs here
