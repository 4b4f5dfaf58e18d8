"""How Ollama (≥ 0.30, running llama-server) turns llama-server's buffer lines into `/api/ps` size and size_vram.

From ollama/ollama llm/llama_server.go (memoryParsingWriter, updateRunnerMemoryLocked, MemorySize; read at commit
00f6d62): every `<fn>: <buffer> <model|KV|compute|output|RS> buffer size = X MiB` line is kept per (function, buffer
name, kind), a later line replacing an earlier one, as bytes = uint64(X × 1024 × 1024);
- total = the sum of all of them; vram = the sum of those whose buffer is a GPU's (not CPU, BLAS, CPU_*, *_Host);
- with mmap, CPU_Mapped model buffers may overlap weights already on a GPU: when the file-backed model buffers (GPU
  model buffers and *_Mapped ones) exceed the model file, total loses min(CPU-mapped model bytes, the excess);
- when every layer is on the GPU (`offloaded N/N layers`, no `overflowing` layers) total = vram.
`/api/ps` answers size = total, size_vram = vram. One consequence: two buffers printed by the same function with the
same name and kind count once — a model with sliding-window layers (Gemma 3) prints `llama_kv_cache: CPU KV buffer`
for its non-SWA cache and then for its SWA cache, and /api/ps counts only the second. autoctx applies the same rule
to its predicted buffers, so that a profile compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

MiB = 1024 * 1024


def is_gpu_buffer(name: str) -> bool:
    return not (name in ("CPU", "BLAS") or name.startswith("CPU_") or name.endswith("_Host"))


def device_of(name: str) -> str:
    """CUDA0_Mapped → CUDA0 (the device a GPU buffer is on)."""
    for suffix in ("_Mapped", "_REPACK", "_Private"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class PsSizes:
    size: int
    size_vram: int
    vram_by_device: dict[str, int] = field(default_factory=dict)


def ps_sizes(buffers: Iterable[tuple[str, str, str, int]], model_file_size: int | None,
             offloaded: tuple[int, int] | None = None, overflowing: int = 0) -> PsSizes:
    """buffers: (function, buffer name, kind as printed or autoctx's model|kv|compute|output, bytes), in log
    order; model_file_size None when unknown (no overlap trimmed). Returns what /api/ps reports."""
    last: dict[tuple[str, str, str], int] = {}
    for fn, name, kind, n in buffers:
        last[(fn, name, kind.lower())] = n
    total = gpu = file_backed = cpu_mapped = 0
    by_dev: dict[str, int] = {}
    for (fn, name, kind), n in last.items():
        total += n
        on_gpu = is_gpu_buffer(name)
        if kind == "model":
            mapped = name.endswith("_Mapped")
            if on_gpu or mapped:
                file_backed += n
            if mapped and not on_gpu:
                cpu_mapped += n
        if on_gpu:
            gpu += n
            by_dev[device_of(name)] = by_dev.get(device_of(name), 0) + n
    if cpu_mapped and model_file_size is not None and file_backed > model_file_size:
        total -= min(cpu_mapped, file_backed - model_file_size)
    if offloaded and offloaded[1] > 0 and offloaded[0] >= offloaded[1] and overflowing == 0:
        total = gpu
    return PsSizes(total, gpu, by_dev)


def logged_ps_sizes(log, model_file_size: int) -> PsSizes:
    """/api/ps sizes from a parsed llama-server log (autoctx.runtimes.llamacpp.logparse.ServerLog)."""
    # Ollama's pattern reads "<fn>: <buf> <model|KV|compute|output|RS> buffer size" lines only: not clip's "model
    # size" line (the projector's weights) nor a "LoRA buffer size" line; the projector's compute line it reads
    return ps_sizes(((b.source, b.name, b.kind, int(b.mib * MiB)) for b in log.buffers
                     if b.source not in ("clip", "llama_adapter_lora_init_impl")), model_file_size, log.offloaded)


# the llama.cpp function that prints each kind of buffer line (see autoctx.runtimes.llamacpp.logparse)
_PRINTED_BY = {"model": "load_tensors", "kv": "llama_kv_cache", "output": "llama_context", "compute": "sched_reserve"}


def predicted_ps_sizes(estimate, model_file_size: int | None) -> PsSizes:
    """What /api/ps would say if llama-server allocated autoctx's predicted buffers (an autoctx.memory.Estimate)."""
    bufs = []
    for b in estimate.buffers:
        fn, kind, name = _PRINTED_BY.get(b.kind, b.kind), b.kind, b.name or b.device
        if b.kind == "kv" and b.detail.startswith("recurrent"):
            fn, kind = "llama_memory_recurrent", "rs"
        if b.detail.startswith(("projector weights", "LoRA")):
            continue  # printed in lines Ollama does not read (see logged_ps_sizes)
        if b.detail.startswith("projector"):  # clip.cpp's compute line: its buffer type's name
            fn, name = "reserve_compute_meta", b.device
        bufs.append((fn, name, kind, b.bytes))
    n_total = estimate.spec.n_layer + 1
    return ps_sizes(bufs, model_file_size, (estimate.n_gpu_layers, n_total) if estimate.n_gpu_layers else None)
