"""Probing: vendor libraries through injected stand-ins with their real function names, sysfs on a fake tree,
and the real psutil path."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pytest

from autoctx.probe.devices import AmdSmiBackend, CpuBackend, NvmlBackend, SysfsAmdBackend, probe

GiB = 1024**3


class FakeNVML:
    """The subset of pynvml (nvidia-ml-py) that autoctx calls, with two GPUs."""

    nvmlMemory_v2 = 0x02000028

    def __init__(self, fail_init=False):
        self.fail_init = fail_init
        self.calls: list[str] = []
        self.gpus = [
            dict(name="NVIDIA GeForce RTX 4090", uuid="GPU-aaaa1111", total=24 * GiB, used=3 * GiB,
                 procs=[SimpleNamespace(pid=4242, usedGpuMemory=2 * GiB)]),
            dict(name=b"NVIDIA RTX A6000", uuid="GPU-bbbb2222", total=48 * GiB, used=1 * GiB,
                 procs=[SimpleNamespace(pid=7, usedGpuMemory=None)]),
        ]

    def nvmlInit(self):
        self.calls.append("init")
        if self.fail_init:
            raise RuntimeError("Driver/library version mismatch")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self):
        return "550.54.14"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"]

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        assert version == self.nvmlMemory_v2
        g = self.gpus[h]
        return SimpleNamespace(total=g["total"], used=g["used"], free=g["total"] - g["used"])

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return self.gpus[h]["procs"]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


def names(pid):
    return {4242: "llama-server", 7: "Xorg"}.get(pid, "")


def test_nvml_devices_memory_processes_versions():
    fake = FakeNVML()
    devs = NvmlBackend(fake, env={}, process_name=names).devices()
    assert [(d.name, d.description, d.total_bytes, d.free_bytes, d.used_bytes) for d in devs] == [
        ("CUDA0", "NVIDIA GeForce RTX 4090", 24 * GiB, 21 * GiB, 3 * GiB),
        ("CUDA1", "NVIDIA RTX A6000", 48 * GiB, 47 * GiB, 1 * GiB),
    ]
    assert (devs[0].driver, devs[0].runtime) == ("550.54.14", "CUDA 12.4")
    assert [(p.pid, p.name, p.used_bytes) for p in devs[0].processes] == [(4242, "llama-server", 2 * GiB)]
    assert [(p.pid, p.name, p.used_bytes) for p in devs[1].processes] == [(7, "Xorg", None)]
    assert fake.calls == ["init", "shutdown"]


@pytest.mark.parametrize("visible,expected", [
    ("1", [("CUDA0", "NVIDIA RTX A6000")]),
    ("1,0", [("CUDA0", "NVIDIA RTX A6000"), ("CUDA1", "NVIDIA GeForce RTX 4090")]),
    ("GPU-aaaa1111", [("CUDA0", "NVIDIA GeForce RTX 4090")]),
    ("", []),
])
def test_cuda_visible_devices_filters_and_renumbers(visible, expected):
    devs = NvmlBackend(FakeNVML(), env={"CUDA_VISIBLE_DEVICES": visible}, process_name=names).devices()
    assert [(d.name, d.description) for d in devs] == expected


class FakeAmdSmi:
    """The subset of amdsmi that autoctx calls, with one GPU."""

    AmdSmiMemoryType = SimpleNamespace(VRAM="VRAM")

    def amdsmi_init(self):
        pass

    def amdsmi_shut_down(self):
        pass

    def amdsmi_get_processor_handles(self):
        return ["h0"]

    def amdsmi_get_gpu_memory_total(self, h, kind):
        assert kind == "VRAM"
        return 64 * GiB

    def amdsmi_get_gpu_memory_usage(self, h, kind):
        return 10 * GiB

    def amdsmi_get_gpu_asic_info(self, h):
        return {"market_name": "AMD Instinct MI210"}

    def amdsmi_get_gpu_driver_info(self, h):
        return {"driver_version": "6.7.0"}

    def amdsmi_get_gpu_device_uuid(self, h):
        return "1fff74a1-0000-1000-80a0-e9b1a9b7c1f2"

    def amdsmi_get_gpu_process_list(self, h):
        return [{"pid": 99, "name": "ollama", "memory_usage": {"vram_mem": 9 * GiB}}]


def test_amdsmi_devices():
    (d,) = AmdSmiBackend(FakeAmdSmi(), env={}).devices()
    assert (d.name, d.kind, d.description, d.total_bytes, d.free_bytes, d.driver) == (
        "ROCm0", "rocm", "AMD Instinct MI210", 64 * GiB, 54 * GiB, "6.7.0")
    assert [(p.pid, p.name, p.used_bytes) for p in d.processes] == [(99, "ollama", 9 * GiB)]
    assert AmdSmiBackend(FakeAmdSmi(), env={"HIP_VISIBLE_DEVICES": "1"}).devices() == []


def _card(root, n, vendor, total=None, used=None, product=None):
    dev = root / f"card{n}" / "device"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    if total is not None:
        (dev / "mem_info_vram_total").write_text(f"{total}\n")
        (dev / "mem_info_vram_used").write_text(f"{used}\n")
    if product:
        (dev / "product_name").write_text(product + "\n")


def test_sysfs_amd_counters(tmp_path):
    _card(tmp_path, 0, "0x8086")  # an Intel iGPU: no VRAM counters
    _card(tmp_path, 1, "0x1002", 16 * GiB, 5 * GiB, "Radeon RX 7800 XT")
    _card(tmp_path, 2, "0x1002", 24 * GiB, 1 * GiB)
    (tmp_path / "card1-DP-1").mkdir()  # connectors are not cards
    devs = SysfsAmdBackend(tmp_path, env={}).devices()
    assert [(d.name, d.description, d.total_bytes, d.free_bytes) for d in devs] == [
        ("ROCm0", "Radeon RX 7800 XT", 16 * GiB, 11 * GiB),
        ("ROCm1", "AMD GPU", 24 * GiB, 23 * GiB),
    ]
    only = SysfsAmdBackend(tmp_path, env={"HIP_VISIBLE_DEVICES": "1"}).devices()
    assert [(d.name, d.total_bytes) for d in only] == [("ROCm0", 24 * GiB)]


def test_real_psutil_is_the_cpu_device():
    (d,) = CpuBackend().devices()
    vm = psutil.virtual_memory()
    assert (d.name, d.kind, d.total_bytes) == ("CPU", "cpu", vm.total)
    assert 0 < d.free_bytes <= vm.total


class Broken:
    name = "nvml"

    def devices(self):
        raise RuntimeError("Driver/library version mismatch")


class Absent:
    name = "amdsmi"

    def devices(self):
        raise ImportError("amdsmi unavailable; libamd_smi not found")


def test_failures_warn_and_the_next_backend_answers(tmp_path):
    _card(tmp_path, 0, "0x1002", 8 * GiB, 2 * GiB)
    r = probe([Broken(), Absent(), SysfsAmdBackend(tmp_path, env={})],
              cpu=CpuBackend(SimpleNamespace(virtual_memory=lambda: SimpleNamespace(total=32 * GiB,
                                                                                     available=20 * GiB))))
    assert r.warnings == ["nvml: Driver/library version mismatch"]
    assert r.skipped == ["amdsmi: amdsmi unavailable; libamd_smi not found"]
    assert [(d.name, d.free_bytes) for d in r.devices] == [("ROCm0", 6 * GiB), ("CPU", 20 * GiB)]


def test_nvml_init_failure_is_a_warning():
    r = probe([NvmlBackend(FakeNVML(fail_init=True), env={})])
    assert r.warnings == ["nvml: Driver/library version mismatch"]
    assert [d.name for d in r.devices] == ["CPU"]


def test_probe_command_on_this_machine():
    out = subprocess.run([sys.executable, "-m", "autoctx.cli", "probe", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr
    d = json.loads(out.stdout)
    cpu = [x for x in d["devices"] if x["name"] == "CPU"]
    assert len(cpu) == 1 and cpu[0]["total_bytes"] == psutil.virtual_memory().total
