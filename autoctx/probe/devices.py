"""Free memory per device: NVIDIA through NVML, AMD through amdsmi (or the kernel's sysfs counters), else system RAM.

Each backend wraps a vendor library object that can be injected (tests pass a stand-in with the same functions),
so the real code path runs in tests. A vendor library that is missing or fails is a warning, and the next backend
is tried; probing never raises. Devices are named the way llama.cpp names them (CUDA0, ROCm0 — counted among the
devices visible to the process, i.e. after CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES), and never summed.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Protocol


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_bytes: int | None  # None when the driver does not tell (e.g. inside containers)


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # llama.cpp's name: CUDA0, ROCm0, CPU
    kind: str  # cuda | rocm | cpu
    description: str  # marketing name, e.g. "NVIDIA GeForce RTX 4090"
    total_bytes: int
    free_bytes: int
    used_bytes: int
    index: int = 0  # vendor index (NVML / amdsmi / DRM card), before visibility filtering
    uuid: str = ""
    driver: str = ""
    runtime: str = ""  # CUDA driver API version, ROCm version
    processes: tuple[GpuProcess, ...] = ()
    source: str = ""  # nvml | amdsmi | sysfs | psutil | llama-server (a device only the binary lists)
    pci_bus_id: str = ""  # "0000:01:00.0", as llama.cpp prints it: the join key to llama-server's devices
    order_known: bool = True  # False: mixed GPUs numbered fastest-first by CUDA, an order NVML cannot tell

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["processes"] = [asdict(p) for p in self.processes]
        return d


@dataclass
class ProbeResult:
    devices: list[DeviceInfo]
    warnings: list[str] = field(default_factory=list)  # a vendor library that is there but failed
    skipped: list[str] = field(default_factory=list)  # a vendor library that is not installed (normal)

    @property
    def gpus(self) -> list[DeviceInfo]:
        return [d for d in self.devices if d.kind != "cpu"]

    def device(self, name: str) -> DeviceInfo | None:
        return next((d for d in self.devices if d.name.lower() == name.lower()), None)


class Backend(Protocol):
    name: str

    def devices(self) -> list[DeviceInfo]: ...


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


_BDF = re.compile(r"^([0-9a-f]{1,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


def pci_bus_id(value: Any) -> str:
    """NVML's '00000000:01:00.0', amdsmi's or sysfs' '0000:01:00.0' → '0000:01:00.0' (as CUDA and llama.cpp print
    it); '' for anything else."""
    m = _BDF.match(_text(value).strip().lower())
    return f"{int(m[1], 16):04x}:{m[2]}:{m[3]}.{m[4]}" if m else ""


def _visible(env: dict[str, str], var: str, index: int, uuid: str, position: int) -> int | None:
    """Position of a device among the visible ones, or None if the variable hides it."""
    spec = env.get(var)
    if spec is None:
        return position
    items = [s.strip() for s in spec.split(",") if s.strip()]
    for pos, item in enumerate(items):
        if item.isdigit() and int(item) == index:
            return pos
        if uuid and item.lower() in (uuid.lower(), uuid.lower().removeprefix("gpu-")):
            return pos
        if uuid and uuid.lower().startswith(item.lower()) and len(item) > 4:  # UUID prefixes are accepted
            return pos
    return None


def _renumber(devs: list[DeviceInfo], env: dict[str, str], var: str, prefix: str) -> list[DeviceInfo]:
    placed = []
    for pos, d in enumerate(devs):
        vis = _visible(env, var, d.index, d.uuid, pos)
        if vis is not None:
            placed.append((vis, d))
    placed.sort(key=lambda x: x[0])
    out = []
    for i, (_, d) in enumerate(placed):
        out.append(DeviceInfo(**{**d.__dict__, "name": f"{prefix}{i}"}))
    return out


def cuda_order(devs: list[DeviceInfo], env: dict[str, str]) -> list[DeviceInfo]:
    """The order CUDA numbers the GPUs in (what CUDA_VISIBLE_DEVICES indices and llama.cpp's CUDA<n> refer to).

    CUDA_DEVICE_ORDER=PCI_BUS_ID: PCI bus order, NVML's own. The default, FASTEST_FIRST, puts "the fastest" first by
    a heuristic CUDA does not document: identical cards keep PCI order, but for mixed cards NVML cannot tell the
    order, so they are kept in PCI order and marked `order_known=False` (llama-server's own device list, or its
    load log's PCI bus ids, then settle it: `join_listed`, `name_map`)."""
    ordered = sorted(devs, key=lambda d: (d.pci_bus_id or "~", d.index))
    ordered = [replace(d, index=i) for i, d in enumerate(ordered)]
    mixed = len({(d.description, d.total_bytes // 2**30) for d in ordered}) > 1
    if mixed and env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST").upper() != "PCI_BUS_ID":
        ordered = [replace(d, order_known=False) for d in ordered]
    return ordered


def _kind_of(name: str) -> str:
    prefix = name.rstrip("0123456789").lower()
    return {"cuda": "cuda", "rocm": "rocm"}.get(prefix, prefix or "gpu")


def _same_card(d: DeviceInfo, description: str, total_bytes: int) -> bool:
    a, b = " ".join(d.description.lower().split()), " ".join(description.lower().split())
    same_name = bool(a) and bool(b) and (a in b or b in a)  # Vulkan adds the driver: "... (RADV NAVI31)"
    return same_name and abs(d.total_bytes - total_bytes) <= 0.1 * max(d.total_bytes, total_bytes, 1)


def join_listed(devices: list[DeviceInfo], listed: Iterable[Any]) -> tuple[list[DeviceInfo], list[str]]:
    """The probed GPUs named and ordered as a llama-server binary lists them (`--list-devices`: objects with
    name, description, total_bytes, free_bytes), so that a CUDA build's CUDA1 or a Vulkan build's Vulkan0 is the
    card it means. Cards match by name and total memory, in PCI order among equals; a listed device no vendor
    library saw is kept with the binary's own memory view; a probed GPU the binary does not list is left out
    (and said). System RAM is kept as it is."""
    gpus = [d for d in devices if d.kind != "cpu"]
    taken: set[int] = set()
    out, notes = [], []
    for item in listed:
        match = next((i for i, d in enumerate(gpus) if i not in taken and
                      _same_card(d, item.description, item.total_bytes)), None)
        if match is None:
            out.append(DeviceInfo(name=item.name, kind=_kind_of(item.name), description=item.description,
                                  total_bytes=item.total_bytes, free_bytes=item.free_bytes,
                                  used_bytes=max(0, item.total_bytes - item.free_bytes), source="llama-server"))
            continue
        taken.add(match)
        out.append(replace(gpus[match], name=item.name, order_known=True))
    for i, d in enumerate(gpus):
        if i not in taken:
            notes.append(f"{d.name} ({d.description}) is not among the devices llama-server lists: not planned for")
    return out + [d for d in devices if d.kind == "cpu"], notes


def name_map(devices: list[DeviceInfo], used: Iterable[Any]) -> dict[str, str]:
    """probe name -> llama.cpp name, from the devices a loaded llama-server printed with their PCI bus ids (objects
    with name and pci_bus_id): the exact join, whatever order CUDA chose."""
    by_bus = {d.pci_bus_id: d.name for d in devices if d.pci_bus_id}
    return {by_bus[u.pci_bus_id]: u.name for u in used if u.pci_bus_id in by_bus}


class NvmlBackend:
    """NVIDIA GPUs through NVML (`nvidia-ml-py`, imported as `pynvml`)."""

    name = "nvml"

    def __init__(self, nvml: Any = None, env: dict[str, str] | None = None, process_name=None):
        self._nvml = nvml
        self._env = dict(os.environ) if env is None else env
        self._process_name = process_name or _process_name

    def devices(self) -> list[DeviceInfo]:
        nv = self._nvml
        if nv is None:
            import pynvml as nv  # nvidia-ml-py
        nv.nvmlInit()
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
            try:
                cuda = int(nv.nvmlSystemGetCudaDriverVersion())
                runtime = f"CUDA {cuda // 1000}.{cuda % 1000 // 10}"
            except Exception:  # old drivers
                runtime = ""
            found = []
            for i in range(int(nv.nvmlDeviceGetCount())):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = self._memory(nv, h)
                try:
                    uuid = _text(nv.nvmlDeviceGetUUID(h))
                except Exception:
                    uuid = ""
                try:
                    bus = pci_bus_id(nv.nvmlDeviceGetPciInfo(h).busId)
                except Exception:
                    bus = ""
                found.append(DeviceInfo(
                    name=f"CUDA{i}", kind="cuda", description=_text(nv.nvmlDeviceGetName(h)),
                    total_bytes=int(mem.total), free_bytes=int(mem.free), used_bytes=int(mem.used), index=i,
                    uuid=uuid, driver=driver, runtime=runtime, processes=tuple(self._processes(nv, h)),
                    source="nvml", pci_bus_id=bus))
        finally:
            try:
                nv.nvmlShutdown()
            except Exception:
                pass
        return _renumber(cuda_order(found, self._env), self._env, "CUDA_VISIBLE_DEVICES", "CUDA")

    @staticmethod
    def _memory(nv: Any, h: Any) -> Any:
        v2 = getattr(nv, "nvmlMemory_v2", None)
        if v2 is not None:
            try:
                return nv.nvmlDeviceGetMemoryInfo(h, version=v2)  # v2: `used` excludes driver-reserved memory
            except Exception:
                pass
        return nv.nvmlDeviceGetMemoryInfo(h)

    def _processes(self, nv: Any, h: Any) -> list[GpuProcess]:
        procs: dict[int, GpuProcess] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                items = getattr(nv, fn)(h)
            except Exception:
                continue
            for p in items or []:
                used = getattr(p, "usedGpuMemory", None)
                procs.setdefault(int(p.pid), GpuProcess(int(p.pid), self._process_name(int(p.pid)),
                                                        int(used) if used is not None else None))
        return list(procs.values())


class AmdSmiBackend:
    """AMD GPUs through `amdsmi` (its import raises without libamd_smi: guarded here)."""

    name = "amdsmi"

    def __init__(self, amdsmi: Any = None, env: dict[str, str] | None = None):
        self._amdsmi = amdsmi
        self._env = dict(os.environ) if env is None else env

    def devices(self) -> list[DeviceInfo]:
        a = self._amdsmi if self._amdsmi is not None else _import_amdsmi()
        a.amdsmi_init()
        try:
            vram = a.AmdSmiMemoryType.VRAM
            found = []
            for i, h in enumerate(a.amdsmi_get_processor_handles()):
                total = int(a.amdsmi_get_gpu_memory_total(h, vram))
                used = int(a.amdsmi_get_gpu_memory_usage(h, vram))
                try:
                    desc = _text(a.amdsmi_get_gpu_asic_info(h).get("market_name", "AMD GPU"))
                except Exception:
                    desc = "AMD GPU"
                try:
                    driver = _text(a.amdsmi_get_gpu_driver_info(h).get("driver_version", ""))
                except Exception:
                    driver = ""
                try:
                    uuid = _text(a.amdsmi_get_gpu_device_uuid(h))
                except Exception:
                    uuid = ""
                try:
                    bus = pci_bus_id(a.amdsmi_get_gpu_device_bdf(h))
                except Exception:
                    bus = ""
                found.append(DeviceInfo(
                    name=f"ROCm{i}", kind="rocm", description=desc, total_bytes=total, free_bytes=max(total - used, 0),
                    used_bytes=used, index=i, uuid=uuid, driver=driver, processes=tuple(self._processes(a, h)),
                    source="amdsmi", pci_bus_id=bus))
        finally:
            try:
                a.amdsmi_shut_down()
            except Exception:
                pass
        return _renumber(found, self._env, _hip_var(self._env), "ROCm")

    @staticmethod
    def _processes(a: Any, h: Any) -> list[GpuProcess]:
        out = []
        try:
            items = a.amdsmi_get_gpu_process_list(h)
        except Exception:
            return out
        for p in items or []:
            if not isinstance(p, dict):  # older amdsmi returns handles
                try:
                    p = a.amdsmi_get_gpu_process_info(h, p)
                except Exception:
                    continue
            mem = p.get("memory_usage") or {}
            used = mem.get("vram_mem") if isinstance(mem, dict) else None
            out.append(GpuProcess(int(p.get("pid", 0)), _text(p.get("name", "")),
                                  int(used) if used is not None else None))
        return out


class SysfsAmdBackend:
    """AMD GPUs from the amdgpu driver's counters: /sys/class/drm/card*/device/mem_info_vram_{total,used}."""

    name = "sysfs"

    def __init__(self, root: str | Path = "/sys/class/drm", env: dict[str, str] | None = None):
        self._root = Path(root)
        self._env = dict(os.environ) if env is None else env

    def devices(self) -> list[DeviceInfo]:
        found = []
        cards = sorted((p for p in self._root.glob("card*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
        for card in cards:
            dev = card / "device"
            total_f, used_f = dev / "mem_info_vram_total", dev / "mem_info_vram_used"
            if not (total_f.is_file() and used_f.is_file()):
                continue
            if (dev / "vendor").is_file() and (dev / "vendor").read_text().strip().lower() != "0x1002":
                continue
            total, used = int(total_f.read_text().strip()), int(used_f.read_text().strip())
            desc = (dev / "product_name").read_text().strip() if (dev / "product_name").is_file() else ""
            if not desc and (dev / "device").is_file():
                desc = f"AMD GPU {(dev / 'device').read_text().strip()}"
            uuid = (dev / "unique_id").read_text().strip() if (dev / "unique_id").is_file() else ""
            found.append(DeviceInfo(name=f"ROCm{len(found)}", kind="rocm", description=desc or "AMD GPU",
                                    total_bytes=total, free_bytes=max(total - used, 0), used_bytes=used,
                                    index=len(found), uuid=uuid, source="sysfs",
                                    pci_bus_id=pci_bus_id(dev.resolve().name)))
        return _renumber(found, self._env, _hip_var(self._env), "ROCm")


class CpuBackend:
    """System RAM (psutil): `available` is what a new process can use without swapping."""

    name = "psutil"

    def __init__(self, psutil_mod: Any = None):
        self._psutil = psutil_mod

    def devices(self) -> list[DeviceInfo]:
        ps = self._psutil
        if ps is None:
            import psutil as ps
        vm = ps.virtual_memory()
        return [DeviceInfo(name="CPU", kind="cpu", description=_cpu_model(), total_bytes=int(vm.total),
                           free_bytes=int(vm.available), used_bytes=int(vm.total - vm.available), source="psutil")]


def _import_amdsmi() -> Any:
    """`import amdsmi`, quietly: without libamd_smi it prints to stdout and raises KeyError/OSError."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import amdsmi
    except Exception as e:
        raise ImportError(f"amdsmi unavailable ({type(e).__name__}: {e}); libamd_smi not found") from None
    return amdsmi


def _hip_var(env: dict[str, str]) -> str:
    for var in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if var in env:
            return var
    return "HIP_VISIBLE_DEVICES"


def _process_name(pid: int) -> str:
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def default_backends() -> list[Backend]:
    return [NvmlBackend(), AmdSmiBackend(), SysfsAmdBackend()]


def probe(backends: Iterable[Backend] | None = None, cpu: Backend | None = None) -> ProbeResult:
    """GPUs from the first vendor backends that answer (NVIDIA and AMD may both be present), plus system RAM."""
    result = ProbeResult([])
    have_rocm = False
    for b in default_backends() if backends is None else backends:
        if b.name == "sysfs" and have_rocm:
            continue  # amdsmi already answered for the AMD cards
        try:
            devs = b.devices()
        except Exception as e:  # a missing or failing vendor library: say so, try the next
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            absent = isinstance(e, ImportError) or "NotFound" in type(e).__name__ or "not found" in msg.lower()
            (result.skipped if absent else result.warnings).append(f"{b.name}: {msg}")
            continue
        have_rocm = have_rocm or any(d.kind == "rocm" for d in devs)
        result.devices += devs
    try:
        result.devices += (cpu or CpuBackend()).devices()
    except Exception as e:
        result.warnings.append(f"psutil: {e}")
    return result
