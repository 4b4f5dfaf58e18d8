"""llama.cpp's allocation rules, as pure functions: what llama-server allocates, per device and kind.

This is the one module that mirrors llama.cpp (the pinned build, autoctx/data/pins.toml). Each rule names its source:

- context sizes ........ src/llama-context.cpp (constructor: n_ctx padding to 256, n_ctx_seq, n_batch/n_ubatch,
                          n_outputs_max), tools/server/server.cpp (np auto = 4 + kv_unified),
                          tools/server/server-context.cpp (server_output_limits)
- weights per device ... src/llama-model.cpp (load_tensors: i_gpu_start, splits, dev_input on CPU, mmap ranges via
                          src/llama-model-loader.cpp get_mapping_range), ggml/src/ggml-backend.cpp (buffer plan:
                          PAD(alloc_size, alignment) per tensor), ggml/src/ggml-cpu/repack.cpp (which weights go to
                          CPU_REPACK), make_cpu_buft_list + llama-model-loader.cpp buft_for_tensor (CPU weights in a
                          GPU's host buffer, no repack); each backend's buffer rules: `BACKENDS` (names its files)
- KV cache ............. src/llama-kv-cache.cpp (tensors [n_embd_k_gqa, kv_size, n_stream], v_trans padding),
                          src/llama-kv-cache-iswa.cpp (SWA cache size), src/llama-memory-recurrent.cpp (R/S state)
- output buffer ........ src/llama-context.cpp output_reserve (logits n_vocab × n_seq_max × f32, host memory)
- compute buffer ....... src/llama-context.cpp sched_reserve + src/llama-graph.cpp; see `compute_bytes` for the
                          model we use (a closed form calibrated on measured runs, not an allocator simulation);
                          with devices, ggml/src/ggml-backend.cpp (the scheduler: graph inputs on the host, split
                          inputs copied, pipeline-parallel copies, op offload): see `device_compute_buffers`

No I/O here: callers pass the ModelSpec and resolved parameters.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .errors import ArgsError
from .gguf import GGML_QUANT_SIZES, row_bytes, type_from_name
from .model import ModelSpec

if TYPE_CHECKING:
    from .extras import Encoder, Extras, LoraSpec, ProjectorSpec

MiB = 1024 * 1024
CPU = "CPU"

# ggml_backend_buft_get_alignment: TENSOR_ALIGNMENT (ggml-impl.h) on CPU, 128 on CUDA/HIP (ggml-cuda.cu); every
# backend's value is in BACKENDS below.
CPU_ALIGNMENT = 32
CUDA_ALIGNMENT = 128
MATRIX_ROW_PADDING = 512  # ggml-cuda/common.cuh, ggml-sycl/presets.hpp: quantized rows padded to a multiple of this

SPLIT_MODES = ("none", "layer", "row", "tensor")  # common/arg.cpp --split-mode
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")  # common/arg.cpp

# ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type on x86 with AVX2 (type -> ne1 multiple);
# AVX-512 adds Q2_K. ARM rules differ (NEON dotprod/i8mm) and are listed separately.
REPACK_X86_AVX2 = {"q4_0": 8, "q4_k": 8, "iq4_nl": 8, "mxfp4": 8}
REPACK_X86_AVX512 = {**REPACK_X86_AVX2, "q2_k": 8}
REPACK_ARM_I8MM = {"q4_0": 4, "q4_k": 8, "q5_k": 8, "q6_k": 8, "iq4_nl": 4, "mxfp4": 4, "q8_0": 4}
# weights read with GGML_OP_GET_ROWS, never by a matmul, so never repacked
_GET_ROWS_ONLY = ("token_embd.", "token_types.", "position_embd.", "per_layer_token_embd.")
# common/common.h: the patterns --cpu-moe / --n-cpu-moe N (LLM_FFN_EXPS_REGEX) and --n-cpu-ffn N (LLM_FFN_DENSE_REGEX)
# put on the CPU; --n-cpu-* prefix them with blk\.<i> for each block i < N (llm_ffn_block_regex)
FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
FFN_DENSE_REGEX = r"\.ffn_(up|down|gate)\."
OVERRIDE_FLAGS = ("-ot", "--cpu-moe", "--n-cpu-moe", "--n-cpu-ffn")  # how Params.tensor_overrides spells them


@dataclass(frozen=True)
class Backend:
    """One ggml backend's allocation rules: what llama.cpp's buffer types of that backend answer.

    `source` names the llama.cpp files (pinned tree) each rule mirrors. Device-dependent values (Vulkan's alignments)
    are documented defaults here; a Device can carry its own (`Device.align`).
    """

    name: str  # the device-name prefix llama.cpp prints (CUDA0, ROCm0, Vulkan0, MTL0, SYCL0, RPC0)
    source: str
    alignment: int  # ggml_backend_buft_get_alignment of the device's buffer type (its default when device-dependent)
    alignment_varies: str = ""  # non-empty: the alignment is the device's own (this names the limit)
    pads_quant_rows: bool = False  # get_alloc_size adds a row of MATRIX_ROW_PADDING - ne0 % 512 to a quantized tensor
    host_buffer: str | None = None  # get_host_buffer_type's name (pinned host memory); None: the backend has none
    host_alignment: int = CPU_ALIGNMENT  # that host buffer type's alignment
    host_extra: int = 0  # bytes its alloc_buffer adds to every buffer (Vulkan_Host: +32)
    maps_weights: bool = False  # buffer_from_host_ptr: with mmap, the device's weights are a range of the file
    remote: bool = False  # RPC: alignment and alloc sizes are the worker's backend's (asked over the wire)
    # compute-buffer rules (see device_compute_buffers):
    offload_op: str = ""  # the device's offload_op: "" none (CPU-weight ops stay on the CPU), "all" any op with a
    #                       batch >= 32 (CUDA/ROCm/MUSA, Vulkan, SYCL), "matmul" MUL_MAT/MUL_MAT_ID only (Metal)
    fa_f16_copies: bool = False  # flash attention converts a quantized K/V to f16 inside the FA node's allocation


# The buffer-type rules of each backend (ggml/src/ggml-<backend>/...); GPU layer placement is the same for all of them
# (src/llama-model.cpp load_tensors), what differs is how a buffer is sized and where host-side tensors go.
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    # ggml-backend.cpp ggml_backend_cpu_buffer_type: TENSOR_ALIGNMENT, alloc size = nbytes; buffer_from_host_ptr
    # (CPU_Mapped); ggml-cpu/ggml-cpu.cpp extra buffer types (CPU_REPACK), chosen only when no device offers a host
    # buffer type (src/llama-model.cpp make_cpu_buft_list)
    Backend("CPU", "ggml/src/ggml-backend.cpp, ggml/src/ggml-cpu/ggml-cpu.cpp", CPU_ALIGNMENT, maps_weights=True),
    # ggml-cuda.cu: alignment 128, get_alloc_size pads quantized rows, host buffer CUDA_Host with the CPU buffer
    # type's alignment and alloc size (GGML_CUDA_NAME is ROCm in a HIP build and MUSA in a MUSA build: same file)
    Backend("CUDA", "ggml/src/ggml-cuda/ggml-cuda.cu, ggml/src/ggml-cuda/common.cuh", CUDA_ALIGNMENT,
            pads_quant_rows=True, host_buffer="CUDA_Host", offload_op="all", fa_f16_copies=True),
    Backend("ROCm", "ggml/src/ggml-cuda/ggml-cuda.cu (GGML_USE_HIP), ggml/include/ggml-cuda.h", CUDA_ALIGNMENT,
            pads_quant_rows=True, host_buffer="ROCm_Host", offload_op="all", fa_f16_copies=True),
    Backend("MUSA", "ggml/src/ggml-cuda/ggml-cuda.cu (GGML_USE_MUSA), ggml/include/ggml-cuda.h", CUDA_ALIGNMENT,
            pads_quant_rows=True, host_buffer="MUSA_Host", offload_op="all", fa_f16_copies=True),
    # ggml-vulkan.cpp: alignment = the device's minStorageBufferOffsetAlignment (16 on NVIDIA, 4 on AMD, 64 on
    # Intel; default 16), alloc size = nbytes; Vulkan_Host aligns to minMemoryMapAlignment (default 64, the Vulkan
    # spec's minimum) and allocates 32 bytes more than asked
    Backend("Vulkan", "ggml/src/ggml-vulkan/ggml-vulkan.cpp", 16, alignment_varies="minStorageBufferOffsetAlignment",
            host_buffer="Vulkan_Host", host_alignment=64, host_extra=32, offload_op="all"),
    # ggml-metal.cpp: alignment 32, alloc size = nbytes (compute ops add scratch), no host buffer type (host-side
    # buffers print as CPU), buffer_from_host_ptr: with mmap the weights are MTL0_Mapped ranges of the file
    Backend("MTL", "ggml/src/ggml-metal/ggml-metal.cpp, ggml/src/ggml-metal/ggml-metal-device.m", 32,
            maps_weights=True, offload_op="matmul"),
    # ggml-sycl.cpp / common.hpp: SYCL_BUFFER_ALIGNMENT 128, quantized rows padded (presets.hpp), SYCL_Host with the
    # CPU buffer type's alignment
    Backend("SYCL", "ggml/src/ggml-sycl/ggml-sycl.cpp, ggml/src/ggml-sycl/common.hpp", 128, pads_quant_rows=True,
            host_buffer="SYCL_Host", offload_op="all"),
    # ggml-rpc.cpp: the buffer type asks the worker for its alignment, and for the alloc size of a quantized tensor
    # with ne0 % 512 != 0 (others: nbytes), so sizes follow the worker's backend; no host buffer type, no
    # buffer_from_host_ptr. Devices are RPC0, RPC1... across --rpc servers in order; buffers print as
    # RPC<i>[host:port] with i the device's index on its worker
    Backend("RPC", "ggml/src/ggml-rpc/ggml-rpc.cpp, tools/rpc/rpc-server.cpp", CPU_ALIGNMENT, remote=True),
)}
BACKEND_ALIASES = {"Metal": "MTL"}  # builds before the MTL rename printed Metal0


def known_backends() -> str:
    return ", ".join(("MTL (Metal)" if b == "MTL" else b) for b in BACKENDS if b != "CPU")


@lru_cache(maxsize=256)  # asked once per tensor placed (Device.backend, .rules): the planner places thousands
def backend_of(name: str) -> Backend:
    """The backend of a device named as llama.cpp prints it (CUDA0, Vulkan1, MTL0, RPC0, RPC0[host:port])."""
    prefix = name.split("[", 1)[0].rstrip("0123456789")
    prefix = BACKEND_ALIASES.get(prefix, prefix)
    if prefix == "CPU":
        raise ArgsError(f"{name!r} is the CPU, which is always there: devices are what llama.cpp offloads to")
    if prefix not in BACKENDS:
        raise ArgsError(f"unknown device {name!r}: no llama.cpp backend {prefix!r} (known: {known_backends()})")
    return BACKENDS[prefix]


@dataclass(frozen=True)
class Device:
    """A device llama.cpp offloads to, named as llama.cpp prints it (CUDA0, ROCm0, Vulkan0, MTL0, RPC0...)."""

    name: str
    free_bytes: int | None = None  # used for the default layer split (by free memory) and by the planner
    align: int | None = None  # the device's own buffer alignment where the backend's is device-dependent (Vulkan)
    remote: str | None = None  # RPC: the worker's backend (None: assumed CPU, rpc-server's fallback device)
    endpoint: str = ""  # RPC: the worker's host:port, which names its buffers
    remote_index: int = 0  # RPC: the device's index on its worker (RPC<i>[host:port])

    def __post_init__(self) -> None:
        backend_of(self.name)  # an unknown backend is one line naming the known ones
        if self.remote is not None and (not self.backend.remote or self.remote not in BACKENDS
                                        or BACKENDS[self.remote].remote):
            raise ArgsError(f"{self.name}: a worker backend is for RPC devices only, one of "
                            f"{', '.join(b for b in BACKENDS if b != 'RPC')}")

    @property
    def backend(self) -> Backend:
        return backend_of(self.name)

    @property
    def rules(self) -> Backend:
        """The backend whose buffer types size this device's buffers: an RPC device's worker backend."""
        b = self.backend
        return BACKENDS[self.remote or CPU] if b.remote else b

    @property
    def alignment(self) -> int:
        return self.align or self.rules.alignment

    @property
    def pads_quant_rows(self) -> bool:
        return self.rules.pads_quant_rows

    @property
    def has_host_buffer(self) -> bool:
        return self.backend.host_buffer is not None

    @property
    def host_buffer(self) -> str:
        """The buffer name host-side tensors get when this device lends its host buffer type (CPU when it has none)."""
        return self.backend.host_buffer or CPU

    @property
    def buffer_name(self) -> str:
        """How llama.cpp names this device's buffers: the device name, or RPC<i>[host:port] for an RPC device."""
        if self.backend.remote and self.endpoint:
            return f"RPC{self.remote_index}[{self.endpoint}]"
        return self.name


@dataclass(frozen=True)
class Params:
    """llama-server's memory-relevant settings, resolved to what the pinned build will use."""

    n_ctx: int = 0  # requested -c (0 = the model's n_ctx_train)
    n_parallel: int = -1  # -np (-1 = auto: 4 slots with a unified KV cache)
    kv_unified: bool | None = None  # None = llama-server default (on only when np is auto)
    n_batch: int = 2048
    n_ubatch: int = 512
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"  # on | off | auto
    n_gpu_layers: int = -1  # -1 auto, -2 all, else a count that includes the output layer
    swa_full: bool = False
    repack: bool = True
    no_host: bool = False  # --no-host: CPU weights skip the GPU's host buffer type (so they may be repacked)
    mmap: bool = True
    offload_kqv: bool = True
    fit: bool = True
    tensor_split: tuple[float, ...] | None = None
    split_mode: str = "layer"  # -sm none | layer | row | tensor (row/tensor: estimated as layer, with a note)
    main_gpu: int = 0  # -mg: the one device used with -sm none (negative: none)
    op_offload: bool = True  # --no-op-offload: CPU-weight ops of a big batch stay on the CPU
    embeddings: bool = False
    devices: tuple[Device, ...] = ()
    # which weight types the host CPU backend repacks (autoctx.probe.cpu.host_repack_rules); none by default
    cpu_repack: dict[str, int] = field(default_factory=dict)
    # tensor buffer-type overrides in command-line order, as (flag, value): ("-ot", "PATTERN=BUFT[,...]"),
    # ("--cpu-moe", ""), ("--n-cpu-moe", "N"), ("--n-cpu-ffn", "N"); buft_overrides() expands them
    tensor_overrides: tuple[tuple[str, str], ...] = ()
    # beside the model (memory.extra_buffers; the files' headers come in an extras.Extras): --mmproj FILE, on the
    # first device unless --no-mmproj-offload; -md FILE with -ngld, -ctkd/-ctvd; --spec-type names and
    # --spec-draft-n-max (the draft tokens, which size the outputs and MTP's recurrent rows); --lora FILEs; and the
    # host memory that grows after /health: --cache-ram MiB (-1 no limit, 0 off), --ctx-checkpoints per slot
    mmproj: str = ""
    mmproj_offload: bool = True
    model_draft: str = ""
    draft_ngl: int = -1
    cache_type_k_draft: str = "f16"
    cache_type_v_draft: str = "f16"
    spec_types: tuple[str, ...] = ()
    draft_n_max: int = 3
    lora: tuple[str, ...] = ()
    cache_ram_mib: int = 8192
    ctx_checkpoints: int = 32
    warmup: bool = True  # --no-warmup: the projector reserves its compute buffer at the first image, not at load

    def resolved(self) -> "Params":
        """Apply llama-server's defaults and adjustments, in its order.

        tools/server/server.cpp llama_server(): with embeddings, n_batch > n_ubatch → n_batch = n_ubatch; np auto
        (any negative) → 4 slots and kv_unified = true, overriding an explicit --no-kv-unified.
        src/llama-context.cpp: n_ubatch 0 means n_batch.
        """
        p = self
        if p.n_batch < 1 or p.n_ubatch < 0:
            raise ArgsError("batch sizes must be positive")
        if p.embeddings:
            if p.n_ubatch == 0:
                raise ArgsError("--ubatch-size 0 with --embedding: llama-server would set the batch size to 0")
            if p.n_batch > p.n_ubatch:
                p = replace(p, n_batch=p.n_ubatch)
        if p.n_ubatch == 0:
            p = replace(p, n_ubatch=p.n_batch)
        if p.n_parallel < 0:
            p = replace(p, n_parallel=4, kv_unified=True)
        if p.kv_unified is None:
            p = replace(p, kv_unified=False)
        for name in (p.cache_type_k, p.cache_type_v):
            if name not in KV_TYPES:
                raise ArgsError(f"unsupported KV cache type {name!r} (allowed: {', '.join(KV_TYPES)})")
        if p.flash_attn not in ("on", "off", "auto"):
            raise ArgsError(f"--flash-attn must be on, off or auto, not {p.flash_attn!r}")
        if p.split_mode not in SPLIT_MODES:
            raise ArgsError(f"--split-mode must be one of {', '.join(SPLIT_MODES)}, not {p.split_mode!r}")
        if p.split_mode == "none" and p.devices:
            # src/llama.cpp llama_model_load: single-GPU mode keeps only the main GPU (none with -mg < 0)
            if p.main_gpu >= len(p.devices):
                raise ArgsError(f"--main-gpu {p.main_gpu}: only {len(p.devices)} device(s) "
                                f"({', '.join(d.name for d in p.devices)})")
            p = replace(p, devices=() if p.main_gpu < 0 else (p.devices[p.main_gpu],))
        return p

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = [dev.name for dev in self.devices]
        d.pop("cpu_repack")
        return d


@dataclass(frozen=True)
class Buffer:
    device: str  # CPU, CUDA0, ...
    kind: str  # model | kv | compute | output
    bytes: int
    name: str = ""  # llama.cpp's buffer name (CPU_Mapped, CPU_REPACK, CUDA0, CUDA_Host...)
    detail: str = ""  # e.g. "non-SWA 8192 cells 3 layers"
    resident: int | None = None  # bytes that stay in memory, when less than `bytes` (see model_buffers)

    @property
    def resident_bytes(self) -> int:
        return self.bytes if self.resident is None else self.resident

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "kind": self.kind, "bytes": self.bytes, "name": self.name,
                "detail": self.detail}


@dataclass
class Estimate:
    spec: ModelSpec
    params: Params  # resolved
    n_ctx: int  # after padding (llama_context n_ctx)
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int
    n_outputs_max: int
    flash_attn: bool
    kv_cells: int
    swa_cells: int
    n_gpu_layers: int  # resolved count (0..n_layer+1)
    layer_device: list[str]  # per block
    output_device: str
    buffers: list[Buffer]
    notes: list[str] = field(default_factory=list)
    # host memory llama-server fills after /health (prompt cache, context checkpoints: extra_buffers); not in
    # `buffers` (nothing is printed at load), counted by the planner in the host budget
    later: list[Buffer] = field(default_factory=list)

    def later_bytes(self, device: str) -> int:
        return sum(b.bytes for b in self.later if b.device == device)

    @property
    def total_bytes(self) -> int:
        return sum(b.bytes for b in self.buffers)

    def device_bytes(self, device: str) -> int:
        return sum(b.bytes for b in self.buffers if b.device == device)

    def resident_bytes(self, device: str) -> int:
        """What stays in memory: a memory-mapped range counts only the tensors read from it after loading."""
        return sum(b.resident_bytes for b in self.buffers if b.device == device)

    def kind_bytes(self, kind: str, device: str | None = None) -> int:
        return sum(b.bytes for b in self.buffers if b.kind == kind and (device is None or b.device == device))


def pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def is_quantized(type_name: str) -> bool:
    return GGML_QUANT_SIZES[type_from_name(type_name)][0] > 1


# ----------------------------------------------------------------------------------------------------------------
# Context sizes (src/llama-context.cpp constructor)
# ----------------------------------------------------------------------------------------------------------------


def context_sizes(spec: ModelSpec, p: Params) -> tuple[int, int, int, int, int]:
    """(n_ctx, n_ctx_seq, n_batch, n_ubatch, n_outputs_max) as llama_context computes them."""
    n_ctx = p.n_ctx if p.n_ctx > 0 else spec.n_ctx_train
    n_ctx = pad(n_ctx, 256)
    n_seq = p.n_parallel
    if p.kv_unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // n_seq, 256)
        n_ctx = n_ctx_seq * n_seq
    n_batch = min(n_ctx, p.n_batch)  # causal attention
    n_ubatch = min(n_batch, p.n_ubatch)
    # server-context.cpp server_output_limits: min(n_batch, n_parallel × (1 + draft)), at least 1
    n_outputs_max = n_batch if p.embeddings else max(1, min(n_batch, n_seq * (1 + spec_n_max(p))))
    return n_ctx, n_ctx_seq, n_batch, n_ubatch, n_outputs_max


def resolve_ngl(spec: ModelSpec, p: Params) -> int:
    """llama_model::n_gpu_layers: negative means all blocks + the output layer; none without devices."""
    if not p.devices:
        return 0
    n = p.n_gpu_layers
    return spec.n_layer + 1 if n < 0 else min(n, spec.n_layer + 1)


def layer_devices(spec: ModelSpec, p: Params, ngl: int) -> tuple[list[str], str]:
    """Device of each block and of the output layer (load_tensors: i_gpu_start, splits by free memory)."""
    devs = p.devices
    n_all = spec.n_layer
    if not devs or ngl <= 0:
        return [CPU] * n_all, CPU
    if p.tensor_split and any(x > 0 for x in p.tensor_split):
        weights = list(p.tensor_split) + [0.0] * (len(devs) - len(p.tensor_split))
    else:
        weights = [float(d.free_bytes or 1) for d in devs]
    total, splits = 0.0, []
    for w in weights[: len(devs)]:
        total += w
        splits.append(total)
    splits = [s / total for s in splits]
    i_gpu_start = max(n_all + 1 - ngl, 0)
    act = min(ngl, n_all + 1)

    def dev_of(il: int) -> str:
        if il < i_gpu_start or il - i_gpu_start >= act:
            return CPU
        x = float(il - i_gpu_start) / act
        idx = next((i for i, s in enumerate(splits) if s > x), len(devs) - 1)  # std::upper_bound
        return devs[idx].name

    return [dev_of(il) for il in range(n_all)], dev_of(n_all)


# ----------------------------------------------------------------------------------------------------------------
# Weights (src/llama-model.cpp load_tensors)
# ----------------------------------------------------------------------------------------------------------------


def _alloc_size(dev: Device | None, type_name: str, nbytes: int, ne0: int) -> int:
    """ggml_backend_buft_get_alloc_size, padded to the buffer alignment (ggml-backend.cpp: each tensor of a buffer
    starts at a multiple of the buffer type's alignment). `dev` None: the CPU buffer type."""
    if dev is None:
        return pad(nbytes, CPU_ALIGNMENT)
    return _padded_size(dev.alignment, dev.pads_quant_rows, type_name, nbytes, ne0)


@lru_cache(maxsize=65536)  # the planner sizes the same tensors on the same devices for every placement it weighs
def _padded_size(alignment: int, pads_quant_rows: bool, type_name: str, nbytes: int, ne0: int) -> int:
    size = nbytes
    if pads_quant_rows and is_quantized(type_name) and ne0 % MATRIX_ROW_PADDING:
        size += row_bytes(type_from_name(type_name), MATRIX_ROW_PADDING - ne0 % MATRIX_ROW_PADDING)
    return pad(size, alignment)


def host_weight_device(p: Params) -> Device | None:
    """The device whose host buffer type holds the CPU's weights (src/llama-model.cpp make_cpu_buft_list: ACCEL →
    the first device with a host buffer type → CPU extra (CPU_REPACK) → CPU); None: no device has one, or --no-host.

    llama-model-loader.cpp (buft_for_tensor): with mmap a host buffer type is swapped for the plain CPU one, so the
    weights stay CPU_Mapped; without mmap they land in that host buffer (CUDA_Host...). Either way the extra buffer
    types come after it in the list, so nothing is repacked: a CUDA/ROCm/Vulkan/SYCL build has no CPU_REPACK unless
    --no-host. Metal and RPC devices have no host buffer type."""
    if p.no_host:
        return None
    return next((d for d in p.devices if d.has_host_buffer), None)


def buft_overrides(p: Params) -> list[tuple[str, str]]:
    """The (regex, buffer type) list llama-server builds from p.tensor_overrides, in its order (common/arg.cpp):
    -ot's comma-separated PATTERN=BUFT items (split at the first '='; a pattern cannot hold a comma), --cpu-moe's
    expert pattern, --n-cpu-moe N / --n-cpu-ffn N one pattern per block 0..N-1 (common.h llm_add_n_cpu_ffn_overrides),
    all to the CPU. A buffer type is "CPU" or a device's buffer name (CUDA0, Vulkan1, RPC0[host:port]): what
    parse_tensor_buffer_overrides accepts, every device's default buffer type. Bad ones are one-line ArgsErrors."""
    out: list[tuple[str, str]] = []
    for flag, value in p.tensor_overrides:
        if flag == "-ot":
            known = [CPU] + [d.buffer_name for d in p.devices]
            for pattern, buft in ot_items(value):
                if buft not in known:
                    raise ArgsError(f"-ot {value}: unknown buffer type {buft!r} (available: {', '.join(known)}"
                                    + ("; GPUs and RPC devices are named with --devices or --rpc)" if not p.devices
                                       else ")"))
                out.append((pattern, buft))
        elif flag == "--cpu-moe":
            out.append((FFN_EXPS_REGEX, CPU))
        elif flag in ("--n-cpu-moe", "--n-cpu-ffn"):
            rx = FFN_EXPS_REGEX if flag == "--n-cpu-moe" else FFN_DENSE_REGEX
            out += [(rf"blk\.{i}{rx}", CPU) for i in range(int(value))]
        else:
            raise ArgsError(f"unknown tensor override flag {flag!r} (known: {', '.join(OVERRIDE_FLAGS)})")
    return out


def ot_items(value: str) -> list[tuple[str, str]]:
    """-ot's value as (pattern, buffer type) items, each pattern compiled (a bad one is a one-line ArgsError)."""
    out = []
    for item in value.split(","):
        pattern, eq, buft = item.partition("=")
        if not eq:
            raise ArgsError(f"-ot {value}: {item!r} is not PATTERN=BUFFER_TYPE")
        _compiled(pattern)
        out.append((pattern, buft))
    return out


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern:
    """The pattern as a regex (llama.cpp: std::regex, ECMAScript; Python's syntax agrees on what -ot patterns use)."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ArgsError(f"-ot: bad regular expression {pattern!r}: {e}") from None


@lru_cache(maxsize=4096)
def _matching(pattern: str, names: tuple[str, ...]) -> tuple[int, ...]:
    """Indices of the names the pattern finds (std::regex_search: anywhere in the name)."""
    rx = _compiled(pattern)
    return tuple(i for i, n in enumerate(names) if rx.search(n))


def tensor_devices(spec: ModelSpec, p: Params, layer_dev: list[str], output_dev: str) -> list[str]:
    """Where each of spec.tensors lives: CPU or a device name ("" for a tensor that is not loaded: NextN/MTP).

    src/llama-model-loader.cpp create_tensor/buft_for_tensor: the first override (buft_overrides, in order) whose
    pattern finds the tensor's name wins; an override to the CPU goes through the CPU's buffer-type list, like a CPU
    layer's tensor (host buffer, CPU_REPACK, mapped: model_buffers), one to a device takes its buffer type as is;
    without a match the tensor follows its layer (input: CPU; blocks: layer_dev; output: output_dev)."""
    # each layer's device, by tensor_layer + 1 (input, blocks, output); NextN/MTP blocks are skipped unless an MTP
    # context is requested ("", before any override: the loader skips them first)
    first_nextn = spec.n_layer - spec.n_layer_nextn if spec.n_layer_nextn and not loads_mtp(spec, p) else spec.n_layer
    by_layer = [CPU, *layer_dev[:first_nextn], *[""] * (spec.n_layer - first_nextn), output_dev]
    out = [by_layer[li + 1] for li in spec.tensor_layer]
    overrides = buft_overrides(p)
    if overrides:
        device_of = {CPU: CPU, **{d.buffer_name: d.name for d in p.devices}}
        for i, buft in _first_matches(tuple(overrides), tuple(t.name for t in spec.tensors)).items():
            if out[i]:
                out[i] = device_of[buft]
    return out


@lru_cache(maxsize=256)  # the planner asks again for every placement it weighs
def _first_matches(overrides: tuple[tuple[str, str], ...], names: tuple[str, ...]) -> dict[int, str]:
    """Index of each name an override finds -> the buffer type of the first one that does (do not modify)."""
    assigned: dict[int, str] = {}
    for pattern, buft in overrides:
        for i in _matching(pattern, names):
            assigned.setdefault(i, buft)
    return assigned


def _repackable(name: str, type_name: str, shape: tuple[int, ...], rules: dict[str, int]) -> bool:
    if name.startswith(_GET_ROWS_ONLY) or len(shape) not in (2, 3) or type_name not in rules:
        return False
    return shape[1] % rules[type_name] == 0


def model_buffers(spec: ModelSpec, p: Params, layer_dev: list[str], output_dev: str) -> list[Buffer]:
    """One Buffer per model buffer llama-server prints (load_tensors "model buffer size" lines).

    Offloaded weights: Σ PAD(alloc size, alignment) per device (its backend's rules), or, on a backend that maps the
    file (Metal), the mapped range of its tensors. CPU weights (the input layer, CPU blocks): CPU_REPACK for the
    repackable ones when no device lends a host buffer type, the mapped range of the file (CPU_Mapped) with mmap, else
    an allocated buffer: CPU, or the device's host buffer (CUDA_Host...) — see host_weight_device."""
    devs = {d.name: d for d in p.devices}
    host_dev = host_weight_device(p)
    sized: dict[str, int] = {}  # buffer name -> bytes, for allocated buffers
    sized_dev: dict[str, str] = {}  # buffer name -> device
    ranges: dict[tuple[str, int], list[int]] = {}  # (buffer name, file index) -> [first, last] offsets (mapped)
    used: dict[tuple[str, int], int] = {}  # bytes of the tensors read from each mapped range
    mapped_dev: dict[str, str] = {}  # mapped buffer name -> device

    def add_sized(name: str, dev: str, nbytes: int) -> None:
        sized[name] = sized.get(name, 0) + nbytes
        sized_dev[name] = dev

    def add_mapped(name: str, dev: str, t: Any) -> None:
        start = spec.data_offsets[t.file_index] + t.offset
        r = ranges.setdefault((name, t.file_index), [start, start + t.nbytes])
        r[0], r[1] = min(r[0], start), max(r[1], start + t.nbytes)
        used[(name, t.file_index)] = used.get((name, t.file_index), 0) + t.nbytes
        mapped_dev[name] = dev

    # per device, asked once: its mapped buffer's name (weights mapped from the file) or its buffer's name and rules
    maps = {d.name: f"{d.buffer_name}_Mapped" if p.mmap and d.rules.maps_weights and not d.backend.remote else ""
            for d in p.devices}
    rules = {d.name: (d.buffer_name, d.alignment, d.pads_quant_rows) for d in p.devices}

    def place_offloaded(d: Device, t: Any) -> None:
        if maps[d.name]:
            add_mapped(maps[d.name], d.name, t)
        else:
            name, align, pads = rules[d.name]
            add_sized(name, d.name, _padded_size(align, pads, t.type_name, t.nbytes, t.shape[0]))

    placed = tensor_devices(spec, p, layer_dev, output_dev)  # the layer's device, or an override's
    for t, dev in zip(spec.tensors, placed):
        if not dev:
            continue  # not loaded (NextN/MTP)
        if dev != CPU:
            place_offloaded(devs[dev], t)
        elif host_dev is None and p.repack and _repackable(t.name, t.type_name, t.shape, p.cpu_repack):
            add_sized("CPU_REPACK", CPU, pad(t.nbytes, CPU_ALIGNMENT))
        elif p.mmap:
            add_mapped("CPU_Mapped", CPU, t)
        elif host_dev is not None:
            add_sized(host_dev.backend.host_buffer or CPU, CPU, pad(t.nbytes, host_dev.backend.host_alignment))
        else:
            add_sized(CPU, CPU, pad(t.nbytes, CPU_ALIGNMENT))
    # A tied output (no output.weight) is token_embd duplicated onto the output layer's device; on the CPU the
    # duplicate shares the input copy (measured: no extra bytes with or without mmap). An override that finds
    # "token_embd.weight" sends both copies to one buffer type, where the duplicate shares the input copy
    # (create_tensor: TENSOR_DUPLICATED finds the tensor already in that context).
    if spec.tied_output and output_dev != CPU:
        emb = next((t for t in spec.tensors if t.name == "token_embd.weight"), None)
        if emb is not None and not any(_compiled(rx).search(emb.name) for rx, _ in buft_overrides(p)):
            place_offloaded(devs[output_dev], emb)
    if host_dev is not None and host_dev.backend.host_extra:
        name = host_dev.backend.host_buffer or CPU
        if name in sized:
            sized[name] += host_dev.backend.host_extra
    out: list[Buffer] = []
    for d in p.devices:  # devices first, in their order, then the CPU's
        if sized.get(d.buffer_name) and sized_dev[d.buffer_name] == d.name:
            out.append(Buffer(d.name, "model", sized[d.buffer_name], d.buffer_name))
    for (name, idx), (first, last) in sorted(ranges.items(), key=lambda kv: (mapped_dev[kv[0][0]] == CPU, kv[0])):
        # The mapped range also spans tensors that live elsewhere (repacked, offloaded): their pages are read once
        # while loading and are reclaimable page cache afterwards, so they do not count as resident.
        out.append(Buffer(mapped_dev[name], "model", last - first, name, f"file {idx + 1}" if idx else "",
                          resident=min(last - first, used[(name, idx)])))
    for name in (host_dev.backend.host_buffer if host_dev else None, CPU, "CPU_REPACK"):
        if name and sized.get(name) and sized_dev[name] == CPU:
            out.append(Buffer(CPU, "model", sized[name], name))
    return out


# ----------------------------------------------------------------------------------------------------------------
# KV cache and recurrent state (src/llama-kv-cache.cpp, src/llama-kv-cache-iswa.cpp, src/llama-memory-recurrent.cpp)
# ----------------------------------------------------------------------------------------------------------------


def swa_cells(spec: ModelSpec, p: Params, kv_size: int, n_ubatch: int) -> int:
    """llama_kv_cache_iswa: GGML_PAD(min(size_base, n_swa × (unified ? n_seq_max : 1) + n_ubatch), 256)."""
    if p.swa_full:
        return kv_size
    return pad(min(kv_size, spec.n_swa * (p.n_parallel if p.kv_unified else 1) + n_ubatch), 256)


def _kv_cache(spec: ModelSpec, p: Params, layers: list[int], kv_size: int, v_trans: bool, layer_dev: list[str],
              label: str) -> list[Buffer]:
    devs = {d.name: d for d in p.devices}
    n_stream = 1 if p.kv_unified else p.n_parallel
    tk, tv = type_from_name(p.cache_type_k), type_from_name(p.cache_type_v)
    bk, bv = GGML_QUANT_SIZES[tk][0], GGML_QUANT_SIZES[tv][0]
    v_max = spec.n_embd_v_gqa_max()
    per_dev: dict[str, int] = {}
    n_layers: dict[str, int] = {}
    for il in layers:
        dev_name = layer_dev[il] if p.offload_kqv else CPU
        dev = devs.get(dev_name)
        k_w = spec.n_embd_k_gqa(il)
        v_w = v_max if v_trans else spec.n_embd_v_gqa(il)
        if k_w % bk:
            raise ArgsError(f"K cache type {p.cache_type_k} needs the K width ({k_w}) to divide by {bk}")
        size = _alloc_size(dev, p.cache_type_k, row_bytes(tk, k_w) * kv_size * n_stream, k_w)
        if not spec.is_mla:
            if v_w % bv:
                raise ArgsError(f"V cache type {p.cache_type_v} needs the V width ({v_w}) to divide by {bv}")
            size += _alloc_size(dev, p.cache_type_v, row_bytes(tv, v_w) * kv_size * n_stream, v_w)
        per_dev[dev_name] = per_dev.get(dev_name, 0) + size
        n_layers[dev_name] = n_layers.get(dev_name, 0) + 1
    order = [d.name for d in p.devices] + [CPU]
    return [Buffer(d, "kv", per_dev[d], devs[d].buffer_name if d in devs else d,
                   f"{label}{kv_size} cells {n_layers[d]} layers") for d in order if per_dev.get(d)]


def kv_buffers(spec: ModelSpec, p: Params, kv_size: int, n_ubatch: int, flash_attn: bool,
               layer_dev: list[str]) -> tuple[list[Buffer], int]:
    """All KV/recurrent buffers, and the SWA cache size (0 without SWA)."""
    v_trans = not (p.flash_attn in ("on", "auto"))  # decided before auto-FA is resolved (llama-context.cpp)
    kv_layers = [il for il in range(spec.n_layer) if spec.has_kv[il]]
    out: list[Buffer] = []
    n_swa_cells = 0
    if spec.swa_type != "none":
        n_swa_cells = swa_cells(spec, p, kv_size, n_ubatch)
        base = [il for il in kv_layers if not spec.is_swa[il]]
        swa = [il for il in kv_layers if spec.is_swa[il]]
        if base:
            out += _kv_cache(spec, p, base, kv_size, v_trans, layer_dev, "non-SWA ")
        if swa:
            out += _kv_cache(spec, p, swa, n_swa_cells, v_trans, layer_dev, "SWA ")
    elif kv_layers:
        out += _kv_cache(spec, p, kv_layers, kv_size, v_trans, layer_dev, "")
    rec = [il for il in range(spec.n_layer) if spec.is_recurrent[il]]
    if rec:
        rows = max(1, p.n_parallel) * (1 + n_rs_seq(spec, p))  # llama-memory-recurrent.cpp: MTP rollback rows
        per_dev: dict[str, int] = {}
        for il in rec:
            d = layer_dev[il] if p.offload_kqv else CPU
            dev = {x.name: x for x in p.devices}.get(d)
            size = _alloc_size(dev, "f32", 4 * spec.n_embd_r * rows, spec.n_embd_r)
            size += _alloc_size(dev, "f32", 4 * spec.n_embd_s * rows, spec.n_embd_s)
            per_dev[d] = per_dev.get(d, 0) + size
        names = {x.name: x.buffer_name for x in p.devices}
        out += [Buffer(d, "kv", b, names.get(d, d), f"recurrent {len(rec)} layers") for d, b in per_dev.items()]
    return out, n_swa_cells


def kv_bytes_per_cell(spec: ModelSpec, type_k: str, type_v: str) -> float:
    """Bytes one context cell costs in the full-attention layers (the part that grows with -c)."""
    tk, tv = type_from_name(type_k), type_from_name(type_v)
    total = 0.0
    for il in range(spec.n_layer):
        if not spec.has_kv[il] or (spec.swa_type != "none" and spec.is_swa[il]):
            continue
        total += row_bytes(tk, spec.n_embd_k_gqa(il))
        if not spec.is_mla:
            total += row_bytes(tv, spec.n_embd_v_gqa(il))
    return total


# ----------------------------------------------------------------------------------------------------------------
# Output buffer (llama_context::output_reserve) and compute buffer (sched_reserve)
# ----------------------------------------------------------------------------------------------------------------


def output_bytes(spec: ModelSpec, p: Params) -> int:
    """Logits for max(n_outputs, n_seq_max) rows, f32 (plus embeddings when enabled); host memory."""
    n = p.n_parallel
    return 4 * (spec.n_vocab * n + (spec.n_embd * n if p.embeddings else 0))


# Per-family extra live tensors at the peak, in units of the K/V width (n_head_kv × head_dim) for attention and
# of n_embd for the FFN. Measured on the pinned build (tests/data/compute_points.json): Gemma 2/3 keep three more
# KV-width tensors alive in the eager attention (q/k norms, the f32 copy of V); Cohere runs attention and FFN in
# parallel from one normed input (one more n_embd row at the FFN peak and two more KV widths in attention).
_ATTN_EXTRA_KV = {"gemma2": 3, "gemma3": 3, "gemma3n": 3, "cohere2": 2, "command-r": 2}
_FFN_EXTRA_E = {"cohere2": 1, "command-r": 1, "llama4": 1}  # llama4: the MoE output lives while the shared expert runs


def _moe_down_on_top(spec: ModelSpec) -> bool:
    """Whether the routed experts' down projection grows the buffer past the ffn_moe peak (src/llama-graph.cpp
    build_moe_ffn): up and gate ([n_ff_exp, n_used, T] each, or one fused gate_up of twice that) are freed by the
    activation (ggml_swiglu_split/geglu_split, not in place), which stays alive as the input of the down mul_mat_id;
    the down output [n_embd, n_used, T] then takes the best-fitting free block (ggml-alloc.c ggml_dyn_tallocr_alloc).
    The gate/up hole holds it when n_embd <= 2·n_ff_exp (Mixtral, gpt-oss, DeepSeek, LFM2, Llama 4); otherwise it is
    allocated above the activation and the ffn_moe set (qwen3moe 2048 vs 768, qwen35moe 2048 vs 512, Gemma 4
    26B-A4B 2816 vs 704: traced with GGML_ALLOCATOR_DEBUG, the down output is the allocation that sets the buffer's
    size). The weighting ggml_mul is then done in place in it, and the per-expert adds into one [n_embd, T] row."""
    return spec.n_embd > 2 * spec.n_ff_exp


def compute_peak_floats(spec: ModelSpec, n_kv: int, n_tokens: int, n_outputs: int, flash_attn: bool) -> dict[str, int]:
    """Candidate peaks of the prompt-processing graph, in f32 elements (the buffer is 4 × the largest + inputs).

    Each term is a set of tensors that ggml-alloc keeps alive together (src/llama-graph.cpp, src/models/*.cpp):
      ffn:     gate, up and the activated product [n_ff, T] plus ~5 rows of n_embd (residual, normed input,
               output, the next residual) — 3·F + 5·E per token; MoE: F = expert width × experts used.
      moe:     the down projection's output [n_embd, n_used, T] on top of the ffn_moe set, when it does not fit the
               block its gate and up outputs free (n_embd > 2 × expert width; _moe_down_on_top).
      attn:    without flash attention the scores KQ [n_kv, T, n_head] f32, plus Q, K, V, output and residual
               rows (3·Q + 3·E + 2·KV per token); MLA attends in the latent space (3·n_head·kv_lora + 3·E).
               With flash attention the scores are never materialised and this term is small.
      output:  logits [n_vocab, n_outputs] f32 plus ~5·E per token.
    """
    E = spec.n_embd
    T = n_tokens
    H = max(spec.n_head) if spec.n_head else 0
    Hkv = max(spec.n_head_kv) if spec.n_head_kv else 0
    Dk = max(spec.head_k, spec.head_k_swa)
    Dv = max(spec.head_v, spec.head_v_swa)
    Q, KV = H * Dk, Hkv * Dk
    arch = spec.architecture
    peaks: dict[str, int] = {}
    dense_ff = [spec.n_ff[il] for il in range(min(spec.n_layer_dense_lead, spec.n_layer))]
    ffn_extra = _FFN_EXTRA_E.get(arch, 0) * E
    if dense_ff and max(dense_ff):
        peaks["ffn"] = T * (3 * max(dense_ff) + 5 * E + ffn_extra)
    if spec.is_moe:
        peaks["ffn_moe"] = T * (3 * spec.n_ff_exp * spec.n_expert_used + 5 * E + ffn_extra)
        if _moe_down_on_top(spec):
            peaks["moe"] = peaks["ffn_moe"] + T * E * spec.n_expert_used
    if spec.is_mla:
        rows = 3 * H * Dv + 3 * E
    else:
        rows = 3 * Q + 3 * E + (2 + _ATTN_EXTRA_KV.get(arch, 0)) * KV
    peaks["attn"] = T * rows + (0 if flash_attn else n_kv * T * H)
    peaks["output"] = spec.n_vocab * n_outputs + 5 * E * T
    return peaks


def rotation_input_bytes(head_k: int, head_v: int, type_k: str, type_v: str, is_mla: bool) -> int:
    """Hadamard rotation matrices fed to the graph for a quantized cache (llama-kv-cache.cpp attn_rot_k/v):
    K uses the largest power-of-two block (from 64) that divides the head size, V always 64; f32 [n, n] each.
    Like llama.cpp (`n_embd_head_k_all > 0`), a head width of 0 has no rotation (and must not loop forever)."""
    total = 0
    if is_quantized(type_k) and head_k > 0 and head_k % 64 == 0:
        n = 64
        while head_k % (2 * n) == 0:
            n *= 2
        total += 4 * n * n
    if not is_mla and is_quantized(type_v) and head_v > 0 and head_v % 64 == 0:
        total += 4 * 64 * 64
    return total


def compute_bytes(spec: ModelSpec, n_kv: int, n_kv_swa: int, n_tokens: int, n_outputs: int, flash_attn: bool,
                  type_k: str = "f16", type_v: str = "f16") -> int:
    """The CPU compute buffer of a CPU run (sched_reserve's pp graph): inputs + the largest live set.

    Inputs stay allocated for the whole graph: the KQ masks [n_kv, T] (f16 with flash attention, f32 without),
    one per cache (base and SWA), and ~40 bytes per token of ids/positions/output ids. The rest is
    4 × max(compute_peak_floats). Calibrated on 113 measured runs of 12 models (tests/data/compute_points.json).
    """
    mask_el = 2 if flash_attn else 4
    masks = n_kv * n_tokens * mask_el + n_kv_swa * n_tokens * mask_el
    # one rotation input per cache (base, and SWA when there is one)
    masks += rotation_input_bytes(spec.head_k, spec.head_v, type_k, type_v, spec.is_mla)
    if n_kv_swa:
        masks += rotation_input_bytes(spec.head_k_swa, spec.head_v_swa, type_k, type_v, spec.is_mla)
    peaks = compute_peak_floats(spec, n_kv, n_tokens, n_outputs, flash_attn)
    out = 4 * peaks.pop("output")
    layers = masks + 4 * max(peaks.values())
    # The masks die after the last layer; ggml-alloc's best fit puts the logits into their hole when they fit
    # there, otherwise the buffer grows past the masks.
    logits = 4 * spec.n_vocab * n_outputs
    out_peak = out + (masks if logits > masks else 0)
    return 40 * n_tokens + max(layers, out_peak)


# ----------------------------------------------------------------------------------------------------------------
# Compute buffers with devices: the scheduler (ggml/src/ggml-backend.cpp) and ggml-alloc (ggml/src/ggml-alloc.c)
# ----------------------------------------------------------------------------------------------------------------


GGML_SCHED_MAX_COPIES = 4  # ggml-backend.cpp: copies of every graph/split input with pipeline parallelism
OP_OFFLOAD_MIN_BATCH = 32  # GGML_OP_OFFLOAD_MIN_BATCH default (ggml-cuda.cu, ggml-vulkan.cpp, ggml-metal-device.m...)
# src/models/*.cpp: build_inp_embd(tok_embd, sqrtf(n_embd)) scales the token rows by an input (inp_scale_rows)
_SCALED_EMBD = ("gemma3", "gemma3n", "gemma4", "gemma-embedding")
# src/llama-arch.cpp llm_arch_supports_mixed_batch: no mixed token/embedding path (inp_mixed_*) for these
_NO_MIXED = ("cogvlm", "deepseek4", "graniteswitch", "eagle3", "dflash", "gemma4-assistant")
# src/llama-model.cpp llama_model_rope_type: M-RoPE/IM-RoPE archs have 4 positions per token (n_pos_per_embd)
_MROPE = ("qwen2vl", "paddleocr", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe")
# Live n_embd×T rows (f32) at a layer peak beyond its own tensors, by where the layer runs (measured with the RPC
# devices, tests/test_rpc_server.py: 25 device buffers of 3 models; ggml-alloc's best fit leaves these as holes):
# the device running block 0 keeps the embedding stage's output (a dup of inp_mixed_embd, viewed by the set_rows
# that selects the batch's rows) and the holes of its three freed input copies; a later device keeps the residual
# and one hole, one more with pipeline parallelism (its inputs are allocated first, in four copies). The CPU closed
# form's 5·E rows (compute_peak_floats) are these plus the two host-resident embedding inputs.
_LIVE_E_FIRST, _LIVE_E_NEXT, _LIVE_E_NEXT_PP, _LIVE_E_CPU_FIRST = 4, 2, 3, 3
_LIVE_E_ATTN_NEXT = 3  # the attention peak of a later device (its Q/K/V rows need no hole for the FFN's tensors)


@dataclass(frozen=True)
class GraphInput:
    """One graph input tensor of the prompt-processing graph (src/llama-graph.cpp, src/llama-kv-cache.cpp).

    `use`: who reads it, so which devices get a copy: "host" (read by the CPU only: token ids for the CPU's
    get_rows, the vector-embedding input a token batch never reads), "embd" (the embedding stage: the device running
    block 0), "pos" (every device with attention layers), "kv:<cache>" (the devices with layers of that cache:
    "base" or "swa"), "out" (the device running the last block)."""

    name: str
    bytes: int
    use: str


def graph_inputs(spec: ModelSpec, p: Params, n_kv: int, n_kv_swa: int, n_tokens: int, n_outputs: int,
                 flash_attn: bool) -> list[GraphInput]:
    """Every input tensor of the pp graph, as the pinned build creates them. They are leafs flagged as inputs, so the
    scheduler assigns them to the CPU backend (ggml-backend.cpp: "graph input" → the last backend) and they live in
    the host compute buffer; each device that reads one gets a copy in its own compute buffer."""
    T, E = n_tokens, spec.n_embd
    out = [GraphInput("inp_tokens", 4 * T, "host"), GraphInput("inp_embd", 4 * E * T, "host")]
    if spec.architecture not in _NO_MIXED:  # build_inp_embd's mixed path (token rows set into embedding rows)
        out += [GraphInput("inp_mixed_tokens", 4 * T, "host"), GraphInput("inp_mixed_slots", 8 * T, "embd"),
                GraphInput("inp_mixed_embd", 4 * E * T, "embd")]
    if spec.architecture in _SCALED_EMBD:
        out.append(GraphInput("inp_scale_rows", 4 * T, "embd"))
    if any(spec.has_kv):
        out.append(GraphInput("inp_pos", 4 * T * (4 if spec.architecture in _MROPE else 1), "pos"))
    mask_el = 2 if flash_attn else 4
    caches = [("base", n_kv, spec.head_k, spec.head_v)]
    if n_kv_swa:
        caches.append(("swa", n_kv_swa, spec.head_k_swa, spec.head_v_swa))
    v_rows = 1 if flash_attn else spec.n_embd_v_gqa_max()  # llama-kv-cache.cpp build_input_v_idxs (v_trans)
    for cache, cells, hk, hv in caches:
        if cache == "base" and not any(h and not (n_kv_swa and s) for h, s in zip(spec.has_kv, spec.is_swa)):
            continue
        use = f"kv:{cache}"
        out += [GraphInput("attn_inp_k_idxs", 8 * T, use), GraphInput("attn_inp_v_idxs", 8 * T * v_rows, use),
                GraphInput("attn_inp_kq_mask", cells * T * mask_el, use)]
        rot = rotation_input_bytes(hk, hv, p.cache_type_k, p.cache_type_v, spec.is_mla)
        if rot:
            out.append(GraphInput("attn_inp_rot", rot, use))
    out.append(GraphInput("out_ids", 4 * n_outputs, "out"))
    return out


def pipeline_parallel(spec: ModelSpec, p: Params, ngl: int) -> bool:
    """src/llama-context.cpp: more than one device, every layer offloaded (-ngl > n_layer, the output included), layer
    split, KV offloaded, no tensor overrides, and every device async with events (all GPU backends and RPC are)."""
    return len(p.devices) > 1 and ngl > spec.n_layer and p.split_mode == "layer" and p.offload_kqv \
        and not p.tensor_overrides


def op_offload_device(p: Params, n_tokens: int) -> Device | None:
    """The device that runs the CPU layers' ops of a prompt batch (ggml-backend.cpp ggml_backend_sched_backend_id_
    from_cur: an op whose weight is in host memory goes to the first device whose offload_op says yes): none with
    --no-op-offload, for a batch under 32 tokens, or when no device offloads ops (RPC: offload_op NULL)."""
    if not p.op_offload or n_tokens < OP_OFFLOAD_MIN_BATCH:
        return None
    return next((d for d in p.devices if d.backend.offload_op), None)


def _fa_f16_copy_floats(spec: ModelSpec, p: Params, cells: int, n_stream: int) -> int:
    """ggml-cuda/fattn-common.cuh ggml_cuda_flash_attn_ext_get_f16_extra_data: for a prompt batch the MMA/TILE
    kernels convert a quantized K and V of the layer to f16 inside the FA node's allocation (nelements × 2 bytes
    each, 128-aligned; V shares K's copy when it is a view of K, as with MLA). In f32 elements (÷ 4), for the
    widest layer."""
    if not is_quantized(p.cache_type_k) and not is_quantized(p.cache_type_v):
        return 0
    k = max((spec.n_embd_k_gqa(il) for il in range(spec.n_layer) if spec.has_kv[il]), default=0)
    v = spec.n_embd_v_gqa_max()
    total = 0
    if is_quantized(p.cache_type_k):
        total += pad(k * cells * n_stream * 2, 128)
    if is_quantized(p.cache_type_v) and not spec.is_mla:
        total += pad(v * cells * n_stream * 2, 128)
    return total // 4


def _kv_view_copy_floats(spec: ModelSpec, p: Params, cells: int, n_stream: int) -> int:
    """A layer's K and V views copied into the device that runs its attention while the cache sits elsewhere (-nkvo,
    or an op-offloaded CPU layer): the scheduler copies each src from an incompatible buffer (split inputs)."""
    tk, tv = type_from_name(p.cache_type_k), type_from_name(p.cache_type_v)
    kw = max((spec.n_embd_k_gqa(il) for il in range(spec.n_layer) if spec.has_kv[il]), default=0)
    vw = spec.n_embd_v_gqa_max()
    size = row_bytes(tk, kw) * cells * n_stream + (0 if spec.is_mla else row_bytes(tv, vw) * cells * n_stream)
    return size // 4


def device_compute_buffers(spec: ModelSpec, p: Params, layer_dev: list[str], out_dev: str, ngl: int, n_kv: int,
                           n_kv_swa: int, n_tokens: int, n_outputs: int, flash_attn: bool,
                           memo: dict | None = None) -> list[Buffer]:
    """The compute buffer of every backend when devices take part (sched_reserve with a multi-backend scheduler).

    The structure follows the scheduler (ggml/src/ggml-backend.cpp); each term says where it was checked:
    - host (the CPU backend; its buffer type is the first device's host buffer type, llama-context.cpp: CUDA_Host,
      ROCm_Host, Vulkan_Host, SYCL_Host, else CPU): every graph input (graph_inputs) plus the token-embedding
      get_rows outputs (token_embd is always on the CPU; a get_rows is never offloaded) that a device copies, which
      stay allocated (the copy's source view). EXACT on RPC (to the 0.01 MiB printed). Public CUDA logs of older
      builds (no mixed-batch inputs) show the same rule: masks + 2·n_embd·n_ubatch·4.
    - a device: the split inputs copied into it (the graph inputs its layers read, see GraphInput.use) plus its
      activation peak: the closed form's layer peaks (compute_peak_floats) with the live n_embd rows of where the
      layer runs (_LIVE_E_*) instead of the CPU's five. Within 10 % on every RPC run (tests/test_rpc_server.py).
    - pipeline parallelism (pipeline_parallel): every graph input and every split input in 4 copies
      (GGML_SCHED_MAX_COPIES; copies are flagged inputs and outputs, so never freed), one n_embd row per device
      boundary. EXACT for the inputs on RPC; the CPU buffer exact.
    - a CPU block without op offload runs on the CPU: its live set is in the host buffer (RPC: within 10 %).
    - -nkvo: a layer's attention runs on its device (the scheduler expands the device's ops over the weightless
      attention), so the layer's K and V views are copied from the host cache into the device's buffer; they add to
      its peak (RPC: within 10 %, the host buffer exact).
    - op offload (a device whose offload_op says yes, a batch >= 32, not --no-op-offload): every op of a CPU block
      with a host weight goes to the first such device, and the weightless ops around them follow (expansion), so
      the CPU blocks run there: their weights are copied in one split at a time (transient: each is freed after its
      matmul and fits the holes) and their K/V views are copied as with -nkvo; the host keeps only the inputs.
      SOURCE ONLY (RPC devices never offload ops). One public CUDA log, Llama-3.1-8B Q4_0 FA 32k: 248 MiB GPU with
      15/33 layers and with -ngl 0, vs 140 at full offload; this model gives 260 and 276 (its build lacked the
      mixed-batch inputs: one n_embd row less, 268).
    - CUDA/ROCm/MUSA flash attention with a quantized K or V: the f16 copies in the FA node (_fa_f16_copy_floats).
      SOURCE ONLY (exact size from ggml-cuda; whether it is the peak follows the closed form).
    """
    E, T = spec.n_embd, n_tokens
    row = 4 * E * T
    pp = pipeline_parallel(spec, p, ngl)
    copies = GGML_SCHED_MAX_COPIES if pp else 1
    devs = {d.name: d for d in p.devices}
    off = op_offload_device(p, T)
    # which backend runs each block's attention (the CPU blocks on the op-offload device when there is one), and its
    # FFN: a block's FFN weights overridden to the CPU (-ot, --n-cpu-moe...) run their matmuls on the op-offload
    # device with a copy of the weight, or on the CPU without one (the scheduler's "1.wgt" rule)
    runs = [(off.name if off is not None and d == CPU else d) for d in layer_dev]
    ffn_on_cpu, offload_weight = _ffn_weights_on_cpu(spec, p, layer_dev, out_dev, off, memo)
    ffn_runs = [(CPU if off is None else off.name) if il in ffn_on_cpu else d for il, d in enumerate(runs)]
    inputs = graph_inputs(spec, p, n_kv, n_kv_swa, T, n_outputs, flash_attn)
    n_stream = 1 if p.kv_unified else p.n_parallel
    peaks = compute_peak_floats(spec, n_kv, T, n_outputs, flash_attn)
    out_floats = peaks.pop("output")
    attn = peaks.pop("attn")
    ffn_peak = max(peaks.values(), default=0)
    first_dev = runs[0] if runs else out_dev
    last_dev = runs[-1] if runs else out_dev
    kv_dev = [(d if p.offload_kqv else CPU) for d in layer_dev]  # where each block's cache is
    out: list[Buffer] = []

    def reads(dev: str) -> list[GraphInput]:
        mine = [il for il, d in enumerate(runs) if d == dev]
        caches = {("swa" if n_kv_swa and spec.is_swa[il] else "base") for il in mine if spec.has_kv[il]}
        return [g for g in inputs if (g.use == "embd" and dev == first_dev) or (g.use == "pos" and caches)
                or (g.use.startswith("kv:") and g.use[3:] in caches) or (g.use == "out" and dev == last_dev)]

    def activation(dev: str, live_ffn: int, live_attn: int) -> int:
        """The live set at the device's peak, in bytes: the closed-form peaks of what runs there, each with the live
        n_embd rows of where it runs instead of the CPU closed form's five."""
        mine = [il for il, d in enumerate(runs) if d == dev]
        ffn = [il for il, d in enumerate(ffn_runs) if d == dev]
        if not mine and not ffn:  # the output layer alone: its logits and the normed rows of the outputs
            return 4 * (spec.n_vocab * n_outputs + E * n_outputs)
        best = 4 * ffn_peak - (5 - live_ffn) * row if ffn else 0
        if mine:
            cells = n_kv_swa if n_kv_swa and all(spec.is_swa[il] for il in mine) else n_kv
            d = devs.get(dev)
            floats = attn
            if flash_attn and d is not None and d.rules.fa_f16_copies:  # inside the FA node: freed with it
                floats += _fa_f16_copy_floats(spec, p, cells, n_stream)
            best = max(best, 4 * floats - (5 - live_attn) * row)
            if any(kv_dev[il] != dev and spec.has_kv[il] for il in mine):  # -nkvo, or op-offloaded CPU blocks
                # the copies are freed after the attention, but the layer's larger FFN tensors do not fit their
                # hole: measured with -nkvo on RPC (the buffer grows by one layer's K and V views)
                best += 4 * _kv_view_copy_floats(spec, p, cells, n_stream)
        if dev == out_dev:
            best = max(best, 4 * out_floats - (5 - live_ffn) * row)
        if off is not None and dev == off.name and ffn_on_cpu:
            best += offload_weight  # an overridden weight's copy, live with the FFN's tensors
        return best

    n_get_rows = 1 if spec.architecture in _NO_MIXED else 2  # get_rows of inp_tokens (and of inp_mixed_tokens)
    for d in p.devices:
        name = d.name
        if name not in runs and name not in ffn_runs and name != out_dev:
            continue
        # Without pipeline parallelism the embedding stage's copies and a boundary's rows are freed early (their
        # holes are in _LIVE_E_*); with it every split input stays, in 4 copies: the embedding stage's inputs and
        # the CPU's get_rows outputs on the first device, the previous device's output rows (l_out) on the others.
        size = copies * sum(pad(g.bytes, d.alignment) for g in reads(name) if pp or g.use != "embd")
        if pp:  # an output layer alone gets the n_outputs rows the last block kept (inp_out_ids), not T rows
            rows_in = row if name in runs or name in ffn_runs else 4 * E * n_outputs
            size += copies * pad(rows_in, d.alignment) * (n_get_rows if name == first_dev else 1)
        if name == first_dev:
            size += activation(name, _LIVE_E_FIRST, _LIVE_E_FIRST)
        else:
            size += activation(name, _LIVE_E_NEXT_PP if pp else _LIVE_E_NEXT, _LIVE_E_ATTN_NEXT)
        out.append(Buffer(name, "compute", size, d.buffer_name))
    host_dev = p.devices[0] if p.devices else None
    host_name = host_dev.host_buffer if host_dev is not None else CPU
    h_align = host_dev.backend.host_alignment if host_dev is not None and host_dev.has_host_buffer else CPU_ALIGNMENT
    host = copies * sum(pad(g.bytes, h_align) for g in inputs)
    if CPU in runs:  # CPU blocks without op offload: their live set, block 0's embedding stage included
        host += activation(CPU, _LIVE_E_CPU_FIRST, _LIVE_E_CPU_FIRST)
    elif CPU in ffn_runs:  # only overridden FFN weights run on the CPU: their live set reuses the embedding rows
        host += activation(CPU, 0, 0)
    else:  # the get_rows outputs a device copies stay allocated
        host += n_get_rows * pad(row, h_align)
        if out_dev == CPU:  # -ngl 0 with op offload: the output rows (fewer than 32) stay on the CPU
            host += 4 * (spec.n_vocab * n_outputs + E * n_outputs)
    if host_dev is not None and host_dev.has_host_buffer and host_dev.backend.host_extra:
        host += host_dev.backend.host_extra
    out.append(Buffer(CPU, "compute", host, host_name))
    return out


def _ffn_weights_on_cpu(spec: ModelSpec, p: Params, layer_dev: list[str], out_dev: str, off: Device | None,
                        memo: dict | None = None) -> tuple[set[int], int]:
    """Blocks on a device whose FFN matmul weights tensor overrides put on the CPU (memory.tensor_devices), and the
    largest such weight at the op-offload device's alloc size (what its compute buffer holds while the matmul runs
    there: ggml-backend.cpp copies a split input from a host buffer). Without overrides: nothing."""
    if not p.tensor_overrides:
        return set(), 0
    key = ("ffn on cpu", tuple(layer_dev), out_dev, p.devices, p.tensor_overrides, off)
    if memo is not None and key in memo:  # estimate's per-spec memo (the planner asks per context and KV type)
        return memo[key]
    where = tensor_devices(spec, p, layer_dev, out_dev)
    blocks: set[int] = set()
    largest = 0
    for t, li, d in zip(spec.tensors, spec.tensor_layer, where):
        if 0 <= li < len(layer_dev) and layer_dev[li] != CPU and d == CPU and ".ffn_" in t.name and len(t.shape) >= 2:
            blocks.add(li)
            largest = max(largest, _alloc_size(off, t.type_name, t.nbytes, t.shape[0]) if off is not None else 0)
    if memo is not None:
        memo[key] = (blocks, largest)
    return blocks, largest


# ----------------------------------------------------------------------------------------------------------------
# The whole estimate
# ----------------------------------------------------------------------------------------------------------------


def _placed_weights(spec: ModelSpec, p: Params, layer_dev: list[str], out_dev: str,
                    memo: dict | None) -> list[Buffer]:
    """model_buffers of one layer placement: the walk over every tensor.

    The planner estimates the same placement at many context sizes and KV types; with `memo` (a dict the caller
    keeps for one ModelSpec) each placement walks the tensors once, so a plan's work does not grow with tensors ×
    estimates. The key holds every input of the two walks besides the spec."""
    key = (tuple(layer_dev), out_dev, p.devices, p.repack, p.no_host, p.mmap, tuple(sorted(p.cpu_repack.items())),
           p.tensor_overrides)
    if memo is not None and key in memo:
        return memo[key]
    found = model_buffers(spec, p, layer_dev, out_dev)
    if memo is not None:
        memo[key] = found
    return found


def estimate(spec: ModelSpec, params: Params, memo: dict | None = None, extras: Extras | None = None) -> Estimate:
    """What llama-server allocates for `spec` with `params`. `memo`: see _placed_weights (one dict per spec);
    `extras`: the headers of the files params names beside the model (extras.load_extras; see add_extra_buffers)."""
    p = params.resolved()
    n_ctx, n_ctx_seq, n_batch, n_ubatch, n_outputs_max = context_sizes(spec, p)
    fa = p.flash_attn in ("on", "auto")  # auto resolves to on for every backend/head size we model
    if not fa and (is_quantized(p.cache_type_v)):
        raise ArgsError("a quantized V cache needs flash attention (llama.cpp refuses -ctv "
                        f"{p.cache_type_v} with -fa off)")
    if spec.is_mla and p.cache_type_k != p.cache_type_v:  # llama_init_from_model (llama-context.cpp)
        raise ArgsError(f"this MLA model does not support different K ({p.cache_type_k}) and V "
                        f"({p.cache_type_v}) cache types")
    ngl = resolve_ngl(spec, p)
    layer_dev, out_dev = layer_devices(spec, p, ngl)
    weights = _placed_weights(spec, p, layer_dev, out_dev, memo)
    buffers = list(weights)
    kv, n_swa_cells = kv_buffers(spec, p, n_ctx_seq, n_ubatch, fa, layer_dev)
    buffers += kv
    # output_reserve: the output device's host buffer type (CUDA_Host...), the CPU's when it has none (Metal, RPC)
    host = CPU if out_dev == CPU else next(d.host_buffer for d in p.devices if d.name == out_dev)
    buffers.append(Buffer(CPU, "output", output_bytes(spec, p), host))
    n_tokens = min(n_ctx, n_ubatch)
    n_seqs = 1 if p.kv_unified else p.n_parallel  # llama-context.cpp graph_reserve: a multiple of n_seqs tokens
    n_tokens = -(-n_tokens // n_seqs) * n_seqs
    n_out = min(n_tokens, n_outputs_max)
    notes: list[str] = []
    off = op_offload_device(p, n_tokens)
    if all(d == CPU for d in layer_dev) and out_dev == CPU and off is None:
        # the CPU runs the whole graph: the calibrated closed form, in the first device's host buffer type if any
        compute = compute_bytes(spec, n_ctx_seq, n_swa_cells, n_tokens, n_out, fa, p.cache_type_k, p.cache_type_v)
        buffers.append(Buffer(CPU, "compute", compute, p.devices[0].host_buffer if p.devices else CPU))
    else:
        buffers += device_compute_buffers(spec, p, layer_dev, out_dev, ngl, n_ctx_seq, n_swa_cells, n_tokens, n_out,
                                          fa, memo)
        if off is not None and CPU in layer_dev:
            notes.append(f"op offload: prompt batches of the CPU layers run on {off.name} (their weights and KV "
                         "copied in); its compute buffer is modelled from the llama.cpp source and one public CUDA "
                         "log, not measured")
        if fa and any(d.rules.fa_f16_copies for d in p.devices) and (is_quantized(p.cache_type_k)
                                                                       or is_quantized(p.cache_type_v)):
            notes.append("flash attention converts the quantized K/V of a layer to f16 in the compute buffer "
                         "(ggml-cuda fattn): modelled from the source, not measured")
    if p.split_mode in ("row", "tensor"):
        notes.append(f"--split-mode {p.split_mode} is not modelled: buffers are estimated as for --split-mode layer")
    if p.fit and p.n_ctx <= 0:
        notes.append("-c unset with --fit on: llama-server may lower the context to fit free memory")
    est = Estimate(spec, p, n_ctx, n_ctx_seq, n_batch, n_ubatch, n_outputs_max, fa, n_ctx_seq, n_swa_cells, ngl,
                   layer_dev, out_dev, buffers, notes)
    add_extra_buffers(est, extras)
    return est


# ----------------------------------------------------------------------------------------------------------------
# Beside the model (tools/server/server-context.cpp load_model): the projector (tools/mtmd/clip.cpp), a draft model
# or an MTP context (common/speculative.cpp), LoRA adapters (src/llama-adapter.cpp); and the host memory the server
# fills after /health: the prompt cache (server-task.cpp server_prompt_cache) and context checkpoints
# ----------------------------------------------------------------------------------------------------------------

# the Params fields of the files beside the model (what a plan carries over from the user's arguments)
BESIDE_FIELDS = ("mmproj", "mmproj_offload", "model_draft", "draft_ngl", "cache_type_k_draft", "cache_type_v_draft",
                 "spec_types", "draft_n_max", "lora")
SPEC_DRAFT_TYPES = ("draft-simple", "draft-eagle3", "draft-mtp", "draft-dflash", "draft-dspark")
_NGRAM_N_MAX = {"ngram-simple": 48, "ngram-map-k": 48, "ngram-map-k4v": 48, "ngram-mod": 64, "ngram-cache": 8}
SPEC_TYPES = ("none", *SPEC_DRAFT_TYPES, *_NGRAM_N_MAX)  # common/speculative.cpp common_speculative_type_from_name
_RS_SEQ_TYPES = ("draft-mtp", "draft-eagle3", "draft-dflash", "draft-dspark")  # common.h need_n_rs_seq
# src/llama-arch.cpp llm_arch_supports_rs_rollback: elsewhere llama_context clamps n_rs_seq to 0
RS_ROLLBACK_ARCHS = ("kimi-k3", "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "glm5-next", "nemotron_h",
                     "nemotron_h_moe", "lfm2", "lfm2moe", "bailingmoe3")


def spec_n_max(p: Params) -> int:
    """common_speculative_n_max: the most tokens an enabled speculative type drafts (0: no speculative decoding).
    The server reserves outputs for n_parallel × (1 + this) (server_output_limits)."""
    n = 0
    for t in p.spec_types:
        n = max(n, max(0, p.draft_n_max) if t in SPEC_DRAFT_TYPES else _NGRAM_N_MAX.get(t, 0))
    return n


def n_rs_seq(spec: ModelSpec, p: Params) -> int:
    """Recurrent rollback rows per sequence (need_n_rs_seq: the draft tokens, with MTP/EAGLE3/DFlash), 0 where the
    architecture cannot roll back (llama_context clamps it)."""
    if spec.architecture not in RS_ROLLBACK_ARCHS or not any(t in _RS_SEQ_TYPES for t in p.spec_types):
        return 0
    return max(0, p.draft_n_max)


def loads_mtp(spec: ModelSpec, p: Params) -> bool:
    """common_model_params_to_llama: load_mtp with --spec-type draft-mtp; the NextN blocks' weights are loaded."""
    return spec.n_layer_nextn > 0 and "draft-mtp" in p.spec_types


def projector_compute_bytes(enc: Encoder, flash_attn: bool) -> int:
    """The projector's compute buffer: clip.cpp warmup() reserves its graph for one image of warmup_image_size²
    (T patches). Measured on the pinned build with SigLIP (gemma3) at 1024 and 4096 patches, widths 1152/2304 and
    FFN 4304/8608: with flash attention the live set is max(F + 3E, 5E) f32 per patch; without it the scores
    KQ [T, T, n_head] f32 plus 6E per patch. Other encoders (windowed attention, merger MLPs) follow the same
    ViT body, with their own projector heads not modelled. Audio encoders: not modelled (0)."""
    T, E, F = enc.warmup_tokens, enc.n_embd, enc.n_ff
    per_token = max(F + 3 * E, 5 * E)
    if not flash_attn:
        per_token = max(per_token, T * enc.n_head + 6 * E)
    return 4 * T * per_token


def projector_buffers(proj: ProjectorSpec, p: Params) -> tuple[list[Buffer], list[str]]:
    """--mmproj: its weights in one buffer of the projector's backend (clip.cpp load_tensors:
    ggml_backend_alloc_ctx_tensors_from_buft, not mapped), and its compute buffer. clip_ctx puts it on the first GPU
    (ggml_backend_init_by_type GPU) unless --no-mmproj-offload; a CPU build: the CPU."""
    dev = p.devices[0] if p.mmproj_offload and p.devices else None
    name = dev.name if dev else CPU
    skip_audio = "gemma3nv" in proj.projector_types  # clip_init: Gemma 3n's audio tensors are not loaded
    weights = sum(_alloc_size(dev, t.type_name, t.nbytes, t.shape[0]) for t in proj.tensors
                  if not (skip_audio and t.name.startswith("a.")))
    out = [Buffer(name, "model", weights, "CLIP", "projector weights")]
    notes = []
    fa = p.flash_attn != "off"
    for enc in proj.encoders:
        if enc.modality == "audio" and skip_audio:
            continue
        compute = projector_compute_bytes(enc, fa) if enc.modality == "vision" else 0
        if compute:
            out.append(Buffer(name, "compute", compute, "CLIP",
                              f"projector {enc.modality}, {enc.warmup_tokens} patches"
                              + ("" if p.warmup else ", at the first image (--no-warmup)")))
        from .extras import CALIBRATED

        if enc.modality == "audio":
            notes.append("projector: the audio encoder's compute buffer is not modelled")
        elif enc.projector_type not in CALIBRATED:
            notes.append(f"projector {enc.projector_type}: compute buffer from the SigLIP-measured ViT form "
                         "(its own projector head not modelled)")
    if dev is not None:
        notes.append("projector on a GPU: its compute buffer is the CPU-measured form, not checked on a GPU")
    return out, notes


def draft_params(est: Estimate) -> Params:
    """The draft model's context (common_base_params_to_speculative + common_speculative_init_result): the target's
    n_ctx, slots and batches, -ctkd/-ctvd cache types, -ngld layers, one output per slot, no rollback rows."""
    p = est.params
    return replace(p, n_ctx=est.n_ctx, cache_type_k=p.cache_type_k_draft, cache_type_v=p.cache_type_v_draft,
                   n_gpu_layers=p.draft_ngl, embeddings=False, tensor_overrides=(), mmproj="", model_draft="",
                   lora=(), spec_types=(), cache_ram_mib=0, ctx_checkpoints=0, fit=False)


def lora_buffers(est: Estimate, lora: LoraSpec) -> list[Buffer]:
    """llama_adapter_lora_init_impl: each lora_a/lora_b pair goes to the buffer type of its base tensor's buffer
    (a repacked tensor's falls back to the CPU type), one buffer per buffer type, each tensor padded to it."""
    import os

    spec, p = est.spec, est.params
    placed = tensor_devices(spec, p, est.layer_device, est.output_device)
    where = {t.name: (t, d) for t, d in zip(spec.tensors, placed)}
    devs = {d.name: d for d in p.devices}
    host_dev = host_weight_device(p)
    sized: dict[tuple[str, str], int] = {}
    for name, ta, tb in lora.pairs:
        base, dev = where[name]
        if dev and dev != CPU:
            d = devs[dev]
            key, size = (dev, d.buffer_name), sum(_alloc_size(d, t.type_name, t.nbytes, t.shape[0]) for t in (ta, tb))
        else:
            if host_dev is None and p.repack and _repackable(base.name, base.type_name, base.shape, p.cpu_repack):
                buf, align = CPU, CPU_ALIGNMENT
            elif p.mmap:
                buf, align = "CPU_Mapped", CPU_ALIGNMENT
            elif host_dev is not None:
                buf, align = host_dev.host_buffer, host_dev.backend.host_alignment
            else:
                buf, align = CPU, CPU_ALIGNMENT
            key, size = (CPU, buf), pad(ta.nbytes, align) + pad(tb.nbytes, align)
        sized[key] = sized.get(key, 0) + size
    label = f"LoRA {os.path.basename(lora.path)}"
    return [Buffer(d, "model", n, name, label) for (d, name), n in sized.items()]


def checkpoint_bytes(est: Estimate) -> int:
    """One context checkpoint of one slot (server-context.cpp create_checkpoint: the slot's state that cannot be
    rolled back, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY): the SWA cache's cells of one sequence (at most n_swa +
    n_ubatch) and one row of recurrent state. 0 for a model without either: llama-server makes none."""
    spec, p = est.spec, est.params
    total = 0
    if spec.swa_type != "none" and not p.swa_full and est.swa_cells:
        cells = min(est.swa_cells, spec.n_swa + est.n_ubatch)
        tk, tv = type_from_name(p.cache_type_k), type_from_name(p.cache_type_v)
        for il in range(spec.n_layer):
            if spec.has_kv[il] and spec.is_swa[il]:
                total += cells * (row_bytes(tk, spec.n_embd_k_gqa(il))
                                  + (0 if spec.is_mla else row_bytes(tv, spec.n_embd_v_gqa(il))))
    total += sum(4 * (spec.n_embd_r + spec.n_embd_s) for il in range(spec.n_layer) if spec.is_recurrent[il])
    return total


def host_growth(est: Estimate, draft: Estimate | None = None) -> list[Buffer]:
    """What the server allocates in host memory after /health: up to --ctx-checkpoints checkpoints per slot, and the
    prompt cache up to --cache-ram MiB (with -1, no limit but n_ctx tokens of prompt state: the KV caches)."""
    p = est.params
    out = []
    one = checkpoint_bytes(est)
    if p.ctx_checkpoints > 0 and one:
        out.append(Buffer(CPU, "checkpoints", p.n_parallel * p.ctx_checkpoints * one, "host",
                          f"up to {p.ctx_checkpoints} per slot x {p.n_parallel} slots x {one / MiB:.2f} MiB"))
    if p.cache_ram_mib > 0:
        out.append(Buffer(CPU, "prompt-cache", p.cache_ram_mib * MiB, "host", f"--cache-ram {p.cache_ram_mib} MiB"))
    elif p.cache_ram_mib < 0:
        bound = est.kind_bytes("kv") + (draft.kind_bytes("kv") if draft else 0)
        out.append(Buffer(CPU, "prompt-cache", bound, "host", "--cache-ram -1: no limit but n_ctx tokens of state"))
    return out


def add_extra_buffers(est: Estimate, extras: Extras | None) -> None:
    """Add to `est` what llama-server allocates beside the model (buffers, in its load order) and what it fills
    after /health (est.later)."""
    spec, p = est.spec, est.params
    if p.spec_types and not extras_has(extras, "draft") and any(t in SPEC_DRAFT_TYPES and t != "draft-mtp"
                                                                for t in p.spec_types):
        est.notes.append("--spec-type " + ",".join(p.spec_types) + " without -md: llama-server has no draft model")
    for lo in (extras.loras if extras else ()):  # common_init_from_params: adapters right after the model
        est.buffers += lora_buffers(est, lo)
    draft = None
    if extras is not None and extras.draft is not None:
        draft = estimate(extras.draft, draft_params(est))
        name = extras.draft.name or extras.draft.path
        est.buffers += [replace(b, detail=f"draft {name}" + (f", {b.detail}" if b.detail else ""))
                        for b in draft.buffers]
        if not any(t in SPEC_DRAFT_TYPES for t in p.spec_types):
            est.notes.append("-md without --spec-type draft-simple: llama-server loads the draft model and its "
                             "context, then frees them (no speculative type uses it)")
    elif loads_mtp(spec, p):  # an MTP context on the target's weights (LLAMA_CONTEXT_TYPE_MTP)
        mp = replace(draft_params(est), cache_type_k=p.cache_type_k_draft, cache_type_v=p.cache_type_v_draft)
        nextn = list(range(spec.n_layer - spec.n_layer_nextn, spec.n_layer))
        v_trans = p.flash_attn == "off"
        est.buffers += _kv_cache(spec, mp, nextn, est.n_ctx_seq, v_trans, est.layer_device, "MTP ")
        est.buffers.append(Buffer(CPU, "output", output_bytes(spec, mp), "CPU", "MTP context"))
        compute = compute_bytes(spec, est.n_ctx_seq, 0, min(est.n_ctx, est.n_ubatch), p.n_parallel,
                                p.flash_attn != "off", mp.cache_type_k, mp.cache_type_v)
        est.buffers.append(Buffer(est.output_device, "compute", compute, est.output_device, "MTP context"))
        est.notes.append("MTP context: KV of the NextN blocks exact; its compute buffer assumed the main graph's "
                         "peak (not measured)")
    first_image = []
    if extras is not None and extras.projector is not None:
        bufs, notes = projector_buffers(extras.projector, p)
        # clip_init warms up (reserves its compute buffer) only with warmup; else the first image allocates it
        first_image = [b for b in bufs if b.kind == "compute" and not p.warmup]
        est.buffers += [b for b in bufs if b not in first_image]
        est.notes += notes
    est.later = first_image + host_growth(est, draft)


def extras_has(extras: Extras | None, what: str) -> bool:
    return extras is not None and getattr(extras, what) is not None
