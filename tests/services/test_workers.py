"""The workers registry on SQLite and PostgreSQL: register, heartbeat, live, capacity, gone workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from openft.services.context import Services
from openft.services.workers import (
    CPU,
    CUDA,
    FORGET_AFTER_SECONDS,
    Device,
    RunningJob,
    WorkerInfo,
    WorkerRegistry,
)
from openft.settings import Settings

LEASE = 30.0
H200 = 141 * 1024**3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def services(tmp_path, database_url) -> Iterator[Services]:
    services = Services.build(
        Settings(home=tmp_path / "home", database_url=database_url, lease_seconds=LEASE)
    )
    yield services
    services.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(services, clock) -> WorkerRegistry:
    return WorkerRegistry(services, clock=clock)


def gpu_worker(worker_id: str, n: int, running: tuple[RunningJob, ...] = ()) -> WorkerInfo:
    devices = tuple(Device(CUDA, "NVIDIA H200", index=i, memory_bytes=H200) for i in range(n))
    return WorkerInfo(worker_id, "gpu-host", 42, devices=devices, slots=n, running=running)


def cpu_worker(worker_id: str) -> WorkerInfo:
    return WorkerInfo(worker_id, "cpu-host", 7, devices=(Device(CPU, "Xeon (2 cores)"),), slots=1)


def test_registered_workers_are_listed_with_their_devices_and_running_jobs(registry):
    registry.register(gpu_worker("g", 2, running=(RunningJob("ftjob-a", (1,)),)))
    registry.register(cpu_worker("c"))
    registry.register(WorkerInfo("v", "api-host", 9, devices=(), slots=0))

    g, c, v = registry.live()
    assert (g.id, g.host, g.pid, g.slots) == ("g", "gpu-host", 42, 2)
    assert g.devices[1] == Device(CUDA, "NVIDIA H200", index=1, memory_bytes=H200)
    assert g.running == (RunningJob("ftjob-a", (1,)),)
    assert [d.index for d in g.free_gpus] == [0]
    assert c.devices[0].kind == CPU and c.gpus == () and v.slots == 0
    assert g.started_at == 1_000_000 and g.last_seen == 1_000_000.0

    capacity = registry.capacity()
    assert (capacity.workers, capacity.training_workers, capacity.gpus, capacity.free_gpus) == (3, 2, 2, 1)
    assert capacity.running_jobs == 1 and capacity.can_run_cuda


def test_a_worker_not_seen_for_a_lease_is_not_live_and_a_heartbeat_brings_it_back(registry, clock):
    registry.register(gpu_worker("g", 1))
    registry.register(cpu_worker("c"))
    clock.now += LEASE - 1
    registry.heartbeat(cpu_worker("c"))
    clock.now += 2  # "g" last seen LEASE + 1 seconds ago: it died without deregistering
    assert [w.id for w in registry.live()] == ["c"]
    assert not registry.capacity().can_run_cuda

    registry.heartbeat(gpu_worker("g", 1, running=(RunningJob("ftjob-b", (0,)),)))
    (g,) = [w for w in registry.live() if w.id == "g"]
    assert g.last_seen == clock.now and g.running == (RunningJob("ftjob-b", (0,)),)
    assert registry.capacity().free_gpus == 0


def test_deregistered_workers_are_gone_and_a_heartbeat_after_that_registers_again(registry):
    registry.register(gpu_worker("g", 2))
    registry.deregister("g")
    assert registry.live() == [] and registry.capacity().workers == 0
    registry.heartbeat(gpu_worker("g", 2))  # a worker whose row was swept while it was cut off
    assert [w.id for w in registry.live()] == ["g"]


def test_a_restarted_worker_replaces_its_row_and_long_dead_rows_are_forgotten(registry, services, clock):
    from sqlalchemy import select

    from openft.store.tables import WorkerRow

    registry.register(cpu_worker("dead"))
    clock.now += FORGET_AFTER_SECONDS + 1
    registry.register(gpu_worker("g", 1))
    registry.register(gpu_worker("g", 2))
    with services.db.transaction() as session:
        rows = session.execute(select(WorkerRow.id, WorkerRow.slots)).all()
    assert rows == [("g", 2)]


def test_services_expose_the_registry(services):
    assert isinstance(services.workers, WorkerRegistry)
    capacity = services.workers.capacity()
    assert (capacity.workers, capacity.gpus, capacity.can_run_cuda) == (0, 0, False)
