"""The worker's GPU inventory without a GPU: nvidia-smi's output, the driver's /proc entries, --gpus,
the worker's own CUDA_VISIBLE_DEVICES, and which job holds which GPU."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from openft.worker.gpus import (
    DevicePool,
    Gpu,
    GpuOptionError,
    NvidiaInventory,
    owned,
    parse_nvidia_smi,
    parse_option,
    read_driver_proc,
)

GIB = 1024**3
# What `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits` prints.
SMI_OUTPUT = """\
0, GPU-11111111-aaaa-bbbb-cccc-000000000000, NVIDIA H100 80GB HBM3, 81559
1, GPU-22222222-aaaa-bbbb-cccc-000000000000, NVIDIA H100 80GB HBM3, 81559
2, GPU-33333333-aaaa-bbbb-cccc-000000000000, NVIDIA A10, 23028
"""
THREE = parse_nvidia_smi(SMI_OUTPUT)


def test_nvidia_smi_lines_become_gpus_with_index_name_memory_and_uuid():
    assert THREE[0] == Gpu(
        0, "NVIDIA H100 80GB HBM3", 81559 * 1024 * 1024, "GPU-11111111-aaaa-bbbb-cccc-000000000000"
    )
    assert [g.index for g in THREE] == [0, 1, 2]
    assert THREE[2].name == "NVIDIA A10" and THREE[2].memory_bytes == 23028 * 1024 * 1024


def test_inventory_runs_nvidia_smi_and_falls_back_to_the_driver_proc_entries(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SMI_OUTPUT}EOF\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    assert NvidiaInventory(str(smi), proc_dir=tmp_path / "absent").detect() == THREE

    proc = tmp_path / "gpus"
    for bus, model in (("0000:41:00.0", "NVIDIA A100-SXM4-40GB"), ("0000:01:00.0", "NVIDIA L4")):
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 140\nGPU UUID: \t GPU-{bus}\nBus Location: \t {bus}\n"
        )
    failing = tmp_path / "failing-smi"
    failing.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
    gpus = NvidiaInventory(str(failing), proc_dir=proc).detect()
    # PCI bus order, as nvidia-smi numbers them; the driver does not say how much memory they have
    assert gpus == [
        Gpu(0, "NVIDIA L4", None, "GPU-0000:01:00.0"),
        Gpu(1, "NVIDIA A100-SXM4-40GB", None, "GPU-0000:41:00.0"),
    ]


def test_a_machine_without_nvidia_has_no_gpus(tmp_path):
    assert read_driver_proc(tmp_path / "absent") == []
    assert NvidiaInventory("", proc_dir=tmp_path / "absent").detect() == []


@pytest.mark.parametrize(
    ("option", "environ", "expected"),
    [
        ("all", {}, [0, 1, 2]),
        ("none", {}, []),
        ("2,0", {}, [2, 0]),
        ("all", {"CUDA_VISIBLE_DEVICES": "1,2"}, [1, 2]),
        ("all", {"CUDA_VISIBLE_DEVICES": "GPU-33333333-aaaa-bbbb-cccc-000000000000"}, [2]),
        ("all", {"CUDA_VISIBLE_DEVICES": ""}, []),
        ("all", {"CUDA_VISIBLE_DEVICES": "-1"}, []),
        ("1", {"CUDA_VISIBLE_DEVICES": "1,2"}, [1]),
    ],
)
def test_gpus_option_picks_among_the_visible_gpus(option, environ, expected):
    assert [g.index for g in owned(option, THREE, environ)] == expected


@pytest.mark.parametrize(
    ("option", "environ", "message"),
    [
        ("3", {}, "no visible GPU with index 3"),
        ("0", {"CUDA_VISIBLE_DEVICES": "1"}, "no visible GPU with index 0"),
        ("0,0", {}, "repeated"),
        ("first", {}, "'all', 'none' or GPU indices"),
        ("all", {"CUDA_VISIBLE_DEVICES": "MIG-1234"}, "not a GPU of this machine"),
    ],
)
def test_gpus_option_naming_what_is_not_there_is_refused(option, environ, message):
    with pytest.raises(GpuOptionError, match=message):
        owned(option, THREE, environ)


def test_all_on_a_cpu_machine_is_no_gpu():
    assert owned("all", [], {}) == []
    assert parse_option(" ALL ") == "all" and parse_option("0,3") == (0, 3)


def test_pool_hands_out_the_lowest_free_gpus_and_takes_them_back():
    pool = DevicePool(THREE)
    assert (pool.cuda, pool.slots, pool.free()) == (True, 3, 3)
    assert pool.take("a", 1) == (0,)
    assert pool.take("b", 2) == (1, 2)
    assert pool.free() == 0
    with pytest.raises(RuntimeError, match="needs 1 GPUs; 0 are free"):
        pool.take("c", 1)
    pool.give_back("a")
    assert pool.take("c", 1) == (0,)
    assert pool.held() == {"b": (1, 2), "c": (0,)}
    assert pool.cuda_visible_devices((1, 2)) == "1,2"


def test_a_cpu_pool_is_one_slot_and_leaves_the_environment_alone():
    pool = DevicePool([])
    assert (pool.cuda, pool.slots, pool.free()) == (False, 1, 1)
    assert pool.take("a", 0) == ()
    assert pool.free() == 0
    assert pool.cuda_visible_devices(()) is None
    pool.give_back("a")
    assert pool.free() == 1


def test_a_worker_that_owns_no_gpu_on_a_gpu_machine_hides_them_from_its_children():
    pool = DevicePool([], machine_has_gpus=True)
    assert pool.cuda_visible_devices(pool.take("a", 0)) == ""


def test_detection_needs_no_torch(tmp_path):
    code = (
        "import sys; from openft.worker.gpus import NvidiaInventory; "
        f"NvidiaInventory(proc_dir=__import__('pathlib').Path({str(tmp_path)!r})).detect(); "
        "from openft.worker import loop; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
