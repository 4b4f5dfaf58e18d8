"""Parse what llama-server says it allocated: buffer lines, KV summaries, offload counts, breakdown tables.

Format strings (pinned build; older builds use the `llama_` prefix where this one says `common_`):
  src/llama-model.cpp        "%s: %12s model buffer size = %8.2f MiB"      (load_tensors)
                             "%s: offloaded %d/%d layers to GPU"
  src/llama-context.cpp      "%s: %10s  output buffer size = %8.2f MiB"    (llama_context)
                             "%s: %10s compute buffer size = %8.2f MiB"    (sched_reserve)
                             "%s: n_ctx = %u" and friends
  src/llama-kv-cache.cpp     "%s: %10s KV buffer size = %8.2f MiB"         (llama_kv_cache)
                             "%s: size = %7.2f MiB (%6u cells, %3d layers, %2u/%u seqs), K (%s): ..., V (%s): ..."
  src/llama-kv-cache-iswa.cpp "creating non-SWA KV cache, size = %u cells" / "creating     SWA KV cache, ..."
  src/llama-memory-recurrent.cpp "%s: %10s RS buffer size = %8.2f MiB"
  src/llama.cpp              "%s: using device %s (%s) (%s) - %zu MiB free"  (name, description, PCI bus id or
                             "unknown id"; builds before mid-2025 print no id)
  common/fit.cpp             "| <dev> | total = free + (self = model + context + compute) + unaccounted |" rows,
                             and with --log-jsonl a {"type": "fit_memory_breakdown"} object per measurement.
Lines may carry a timestamp/level prefix; every pattern is searched anywhere in the line. With --log-jsonl every
message comes wrapped as {"type":"log",...,"msg":...} (common/log.cpp) and is parsed from its "msg"; the breakdown
then comes twice (text rows inside envelopes, and the fit_memory_breakdown object): the object wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MiB = 1024 * 1024

_BUF = re.compile(
    r"(?P<fn>load_tensors|llama_context|llama_kv_cache|sched_reserve|llama_memory_recurrent|graph_reserve"
    r"|llama_adapter_lora_init_impl|reserve_compute_meta)\w*:\s+"
    r"(?P<name>\S+)\s+(?P<what>model|output|KV|compute|RS|LoRA) buffer size =\s*(?P<mib>[0-9.]+) MiB"
)
_KIND = {"model": "model", "output": "output", "KV": "kv", "RS": "kv", "compute": "compute", "LoRA": "model"}
# tools/mtmd/clip.cpp: the projector says its backend ("CLIP using CUDA0 backend" / "CLIP using CPU backend"), its
# weights as "model size" (Σ nbytes of the file's tensors; the buffer itself is not printed), and its compute
# buffers from reserve_compute_meta (a second reserve, when flash attention falls back, replaces the first)
_CLIP_USING = re.compile(r"CLIP using (?P<name>\S+) backend")
_CLIP_MODEL = re.compile(r"load_hparams: model size:\s+(?P<mib>[0-9.]+) MiB")
CLIP_CONTEXT = -1  # LoggedBuffer.context of the projector's buffers
_KV_SUMMARY = re.compile(
    r"llama_kv_cache: size =\s*(?P<mib>[0-9.]+) MiB \(\s*(?P<cells>\d+) cells,\s*(?P<layers>\d+) layers,\s*"
    r"(?P<seqs>\d+)/(?P<streams>\d+) seqs\), K \((?P<tk>\w+)\):\s*(?P<k>[0-9.]+) MiB, V \((?P<tv>\w+)\):\s*"
    r"(?P<v>[0-9.]+) MiB"
)
_ISWA = re.compile(r"creating\s+(?P<which>non-SWA|SWA) KV cache, size = (?P<cells>\d+) cells")
# the id group: a PCI bus id (0000:01:00.0) or "unknown id"; older builds print no id group at all
_USING = (re.compile(r"using device (?P<name>\S+) \((?P<desc>.*)\) \((?P<id>[0-9A-Fa-f:.]+|unknown id)\) - "
                     r"(?P<free>\d+) MiB free\s*$"),
          re.compile(r"using device (?P<name>\S+) \((?P<desc>.*)\)() - (?P<free>\d+) MiB free\s*$"))
_OFFLOADED = re.compile(r"offloaded (?P<n>\d+)/(?P<m>\d+) layers to GPU")
_CPARAM = re.compile(r"llama_context: (?P<key>n_seq_max|n_ctx|n_ctx_seq|n_batch|n_ubatch|flash_attn|kv_unified"
                     r"|n_outputs_max)\s+= (?P<val>\S+)")
_BREAKDOWN_ROW = re.compile(
    r"(?:common|llama)_memory_breakdown_print: \|\s*-?\s*(?P<dev>.+?)\s*\|\s*(?P<total>\d+)\s*=\s*(?P<free>\d+)\s*"
    r"\+\s*\(\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)\s*\+\s*(?P<compute>\d+)\s*\)\s*\+\s*"
    r"(?P<unacc>-?\d+)\s*\|"
)
_BREAKDOWN_HOST = re.compile(
    r"(?:common|llama)_memory_breakdown_print: \|\s*-?\s*(?P<dev>.+?)\s*\|\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*"
    r"\+\s*(?P<context>\d+)\s*\+\s*(?P<compute>\d+)\s*\|"
)
OOM_PATTERNS = (
    re.compile(r"failed to allocate (?:\S+ )?buffer"),
    re.compile(r"unable to allocate \S+ buffer"),
    re.compile(r"out of memory", re.I),
    re.compile(r"cudaMalloc failed"),
    re.compile(r"ErrorOutOfDeviceMemory"),
    re.compile(r"failed to allocate compute (?:pp |tg )?buffers"),
    re.compile(r"failed to allocate buffer for kv cache"),
    re.compile(r"std::bad_alloc"),
)


_CPU_BUFFERS = ("AMX",)  # CPU-side extra buffer types whose name does not start with CPU (ggml-cpu/amx/amx.cpp)
# ggml-rpc.cpp: an RPC buffer type is named RPC<i>[host:port], i the device's index on that worker, while the device
# is RPC<n>, numbered across all --rpc servers ("using device RPC1 (127.0.0.1:50053)")
_RPC_BUFFER = re.compile(r"RPC(?P<index>\d+)\[(?P<endpoint>[^\]]*)\]")


def buffer_device(name: str, devices: list[UsedDevice] | None = None) -> str:
    """Device a llama.cpp buffer name lives on: CPU_Mapped/CPU_REPACK/CUDA_Host/AMX → CPU, CUDA0 → CUDA0,
    MTL0_Mapped → MTL0, RPC0[host:port] → the RPC device of that worker the log's `using device` lines name (the
    buffer's own name when they do not)."""
    if name.startswith("CPU") or name.endswith("_Host") or name in _CPU_BUFFERS:
        return "CPU"
    m = _RPC_BUFFER.fullmatch(name)
    if m:
        same = [d.name for d in devices or [] if d.description == m["endpoint"] and d.name.startswith("RPC")]
        return same[int(m["index"])] if int(m["index"]) < len(same) else name
    return name.split("_")[0]


@dataclass(frozen=True)
class LoggedBuffer:
    device: str
    kind: str  # model | kv | compute | output
    name: str  # as printed (CPU_Mapped, CUDA0, ...)
    mib: float  # as printed, 2 decimals
    source: str  # the function that printed it (load_tensors, llama_kv_cache, ...)
    context: int = 0  # the llama_context it belongs to (1: the model's, 2: a draft's...; CLIP_CONTEXT: the projector)

    @property
    def bytes(self) -> int:
        return round(self.mib * MiB)


@dataclass(frozen=True)
class KVSummary:
    mib: float
    cells: int
    layers: int
    seqs: int
    streams: int
    type_k: str
    type_v: str
    k_mib: float
    v_mib: float


@dataclass(frozen=True)
class BreakdownRow:
    device: str  # device name (CUDA0), "Host", or a buffer type name (CPU_REPACK)
    total: int | None  # MiB; None for host rows
    free: int | None
    self_: int
    model: int
    context: int
    compute: int
    unaccounted: int | None
    description: str = ""  # device description as printed (vendor prefix stripped by llama.cpp), "" if none


@dataclass(frozen=True)
class UsedDevice:
    """A device llama-server said it uses, in its order: the join key to NVML/amdsmi (the PCI bus id)."""

    name: str  # CUDA0, Vulkan1, ...
    description: str
    pci_bus_id: str  # "" when the build prints none or "unknown id"
    free_bytes: int


@dataclass
class ServerLog:
    buffers: list[LoggedBuffer] = field(default_factory=list)
    kv_caches: list[KVSummary] = field(default_factory=list)
    iswa_cells: dict[str, int] = field(default_factory=dict)  # "non-SWA"/"SWA" -> cells
    offloaded: tuple[int, int] | None = None
    cparams: dict[str, str] = field(default_factory=dict)
    breakdown: list[BreakdownRow] = field(default_factory=list)
    oom: list[str] = field(default_factory=list)
    devices_used: list[UsedDevice] = field(default_factory=list)
    contexts: int = 0  # llama_contexts constructed so far ("constructing llama_context")
    clip_device: str = "CPU"

    def mib(self, kind: str, device: str | None = None) -> float:
        return round(sum(b.mib for b in self.buffers if b.kind == kind and (device is None or b.device == device)), 2)

    def devices(self) -> list[str]:
        seen: list[str] = []
        for b in self.buffers:
            if b.device not in seen:
                seen.append(b.device)
        return seen


_DEV_DESC = re.compile(r"^(?P<name>\S+)(?: \((?P<desc>.*)\))?$")


def _split_dev(label: str) -> tuple[str, str]:
    """'CUDA0 (H100 80GB HBM3)' -> ('CUDA0', 'H100 80GB HBM3'), as the JSON rows give name and description."""
    m = _DEV_DESC.match(label.strip())
    if not m:
        return label.strip(), ""
    return m["name"], m["desc"] or ""


def _json_object(line: str) -> dict | None:
    try:
        obj = json.loads(line[line.index("{"):])
    except ValueError:  # no "{", or not JSON (json.JSONDecodeError is a ValueError)
        return None
    return obj if isinstance(obj, dict) else None


def _jsonl_breakdown(obj: dict) -> list[BreakdownRow]:
    rows = []
    data = obj.get("data")
    for r in (data.get("rows", []) if isinstance(data, dict) else []):
        if not isinstance(r, dict):
            continue
        host = r.get("kind") != "device"
        rows.append(BreakdownRow(
            device=str(r.get("name", "")), total=None if host else r.get("total"),
            free=None if host else r.get("free"),
            self_=int(r.get("self", 0)), model=int(r.get("model", 0)), context=int(r.get("context", 0)),
            compute=int(r.get("compute", 0)), unaccounted=None if host else r.get("unaccounted"),
            description=str(r.get("description", "")),
        ))
    return rows


def _parse_line(log: ServerLog, line: str, breakdown: list[BreakdownRow]) -> None:
    if "buffer size" in line:
        m = _BUF.search(line)
        if m:
            name = m["name"]
            ctx = CLIP_CONTEXT if m["fn"] == "reserve_compute_meta" else log.contexts
            if m["fn"] in ("load_tensors", "llama_adapter_lora_init_impl"):
                ctx += 1  # weights are loaded before the model's (or the draft's) context is constructed
            buf = LoggedBuffer(buffer_device(name, log.devices_used), _KIND[m["what"]], name, float(m["mib"]),
                               m["fn"], ctx)
            if m["what"] == "compute":  # a context reserves again (a LoRA, a fallback): the same buffer, resized
                log.buffers = [b for b in log.buffers if not (b.kind == "compute" and b.context == ctx
                                                                and b.name == name and b.source == m["fn"])]
            log.buffers.append(buf)
            return
    if "constructing llama_context" in line:
        log.contexts += 1
        return
    if "CLIP using" in line:
        m = _CLIP_USING.search(line)
        if m:
            log.clip_device = buffer_device(m["name"], log.devices_used)
            return
    if "model size:" in line:
        m = _CLIP_MODEL.search(line)
        if m:
            log.buffers.append(LoggedBuffer(log.clip_device, "model", "CLIP", float(m["mib"]), "clip",
                                            CLIP_CONTEXT))
            return
    if "llama_kv_cache: size" in line:
        m = _KV_SUMMARY.search(line)
        if m:
            log.kv_caches.append(KVSummary(float(m["mib"]), int(m["cells"]), int(m["layers"]), int(m["seqs"]),
                                           int(m["streams"]), m["tk"], m["tv"], float(m["k"]), float(m["v"])))
            return
    if "KV cache, size" in line:
        m = _ISWA.search(line)
        if m:
            log.iswa_cells[m["which"]] = int(m["cells"])
            return
    if "using device" in line:
        m = _USING[0].search(line) or _USING[1].search(line)
        if m:
            bus = "" if m.group(3) in ("", "unknown id") else m.group(3).lower()
            log.devices_used.append(UsedDevice(m["name"], m["desc"], bus, int(m["free"]) * MiB))
            return
    if "layers to GPU" in line:
        m = _OFFLOADED.search(line)
        if m:
            log.offloaded = (int(m["n"]), int(m["m"]))
            return
    if "memory_breakdown_print" in line:
        m = _BREAKDOWN_ROW.search(line)
        if m:
            dev, desc = _split_dev(m["dev"])
            breakdown.append(BreakdownRow(dev, int(m["total"]), int(m["free"]), int(m["self"]), int(m["model"]),
                                          int(m["context"]), int(m["compute"]), int(m["unacc"]), desc))
            return
        m = _BREAKDOWN_HOST.search(line)
        if m and m["dev"].strip().lower() not in ("memory breakdown [mib]",):
            dev, desc = _split_dev(m["dev"])
            breakdown.append(BreakdownRow(dev, None, None, int(m["self"]), int(m["model"]), int(m["context"]),
                                          int(m["compute"]), None, desc))
            return
    if "llama_context:" in line:
        m = _CPARAM.search(line)
        if m:
            log.cparams.setdefault(m["key"], m["val"])
            return
    if any(p.search(line) for p in OOM_PATTERNS):
        log.oom.append(line.strip())


def parse_server_log(text: str) -> ServerLog:
    """Everything llama-server's log says about memory. Unknown lines are ignored."""
    log = ServerLog()
    enveloped_rows: list[BreakdownRow] = []  # text breakdown rows that came inside --log-jsonl envelopes
    json_breakdown = False
    for line in text.splitlines():
        if line.lstrip().startswith("{") or '"fit_memory_breakdown"' in line:
            obj = _json_object(line)
            if obj is not None:
                kind = obj.get("type")
                if kind == "fit_memory_breakdown":
                    log.breakdown += _jsonl_breakdown(obj)
                    json_breakdown = True
                elif kind == "log" and isinstance(obj.get("msg"), str):
                    for msg_line in obj["msg"].splitlines():
                        _parse_line(log, msg_line, enveloped_rows)
                continue
        _parse_line(log, line, log.breakdown)
    if not json_breakdown:  # a build without the JSON object: the enveloped text rows are all there is
        log.breakdown += enveloped_rows
    return log
