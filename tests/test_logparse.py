"""autoctx.runtimes.llamacpp.logparse on llama-server logs.

tests/data/logs/cpu_gemma3_270m_c8192.log is a recorded log of the pinned build; the CUDA/ROCm/JSONL/OOM logs are
written from the pinned build's format strings (each file's header names them). Leading '#' lines are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoctx.runtimes.llamacpp.logparse import (
    BreakdownRow,
    KVSummary,
    LoggedBuffer,
    MiB,
    ServerLog,
    buffer_device,
    parse_server_log,
)

LOGS = Path(__file__).resolve().parent / "data" / "logs"


def load(name: str) -> str:
    lines = (LOGS / name).read_text().splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines) + "\n"


def parse(name: str) -> ServerLog:
    return parse_server_log(load(name))


def bufs(log: ServerLog) -> list[tuple[str, str, str, float, str]]:
    return [(b.device, b.kind, b.name, b.mib, b.source) for b in log.buffers]


# ---------------------------------------------------------------------------------------------------------------
# Recorded CPU log (Gemma 3 270M, -c 8192, np auto)
# ---------------------------------------------------------------------------------------------------------------


def test_cpu_log_buffers():
    log = parse("cpu_gemma3_270m_c8192.log")
    assert bufs(log) == [
        ("CPU", "model", "CPU_Mapped", 235.16, "load_tensors"),
        ("CPU", "model", "CPU_REPACK", 12.66, "load_tensors"),
        ("CPU", "output", "CPU", 4.00, "llama_context"),
        ("CPU", "kv", "CPU", 24.00, "llama_kv_cache"),
        ("CPU", "kv", "CPU", 37.50, "llama_kv_cache"),
        ("CPU", "compute", "CPU", 28.78, "sched_reserve"),
    ]
    assert log.devices() == ["CPU"]
    assert log.mib("model") == 247.82
    assert log.mib("kv") == 61.50
    assert log.mib("kv", "CPU") == 61.50
    assert log.mib("kv", "CUDA0") == 0
    assert log.mib("output") == 4.00
    assert log.mib("compute") == 28.78


def test_cpu_log_kv_and_context():
    log = parse("cpu_gemma3_270m_c8192.log")
    assert log.kv_caches == [
        KVSummary(24.00, 8192, 3, 4, 1, "f16", "f16", 12.00, 12.00),
        KVSummary(37.50, 2560, 15, 4, 1, "f16", "f16", 18.75, 18.75),
    ]
    assert log.iswa_cells == {"non-SWA": 8192, "SWA": 2560}
    assert log.offloaded is None  # a CPU build prints no offload lines
    assert log.cparams == {"n_seq_max": "4", "n_ctx": "8192", "n_ctx_seq": "8192", "n_batch": "2048",
                           "n_ubatch": "512", "flash_attn": "auto", "kv_unified": "true", "n_outputs_max": "4"}
    assert log.oom == []


def test_cpu_log_breakdown():
    """The real table: a header line (skipped), then host rows with self = model + context + compute."""
    log = parse("cpu_gemma3_270m_c8192.log")
    assert log.breakdown == [
        BreakdownRow("Host", None, None, 312, 222, 61, 28, None),
        BreakdownRow("CPU_REPACK", None, None, 12, 12, 0, 0, None),
    ]


def test_logged_buffer_bytes():
    log = parse("cpu_gemma3_270m_c8192.log")
    assert [b.bytes for b in log.buffers] == [round(m * MiB) for m in (235.16, 12.66, 4.0, 24.0, 37.5, 28.78)]
    assert log.buffers[3].bytes == 24 * MiB
    assert LoggedBuffer("CPU", "kv", "CPU", 37.5, "llama_kv_cache").bytes == 39321600


# ---------------------------------------------------------------------------------------------------------------
# CUDA, two GPUs, full offload
# ---------------------------------------------------------------------------------------------------------------


def test_cuda_two_gpus():
    log = parse("cuda_2gpu_llama8b_c8192.log")
    assert bufs(log) == [
        ("CPU", "model", "CPU_Mapped", 281.81, "load_tensors"),
        ("CUDA0", "model", "CUDA0", 2226.97, "load_tensors"),
        ("CUDA1", "model", "CUDA1", 2123.45, "load_tensors"),
        ("CPU", "output", "CUDA_Host", 1.96, "llama_context"),
        ("CUDA0", "kv", "CUDA0", 512.00, "llama_kv_cache"),
        ("CUDA1", "kv", "CUDA1", 512.00, "llama_kv_cache"),
        ("CUDA0", "compute", "CUDA0", 560.01, "sched_reserve"),
        ("CUDA1", "compute", "CUDA1", 560.02, "sched_reserve"),
        ("CPU", "compute", "CUDA_Host", 24.01, "sched_reserve"),
    ]
    assert log.devices() == ["CPU", "CUDA0", "CUDA1"]
    assert log.offloaded == (33, 33)
    assert log.kv_caches == [KVSummary(1024.00, 8192, 32, 4, 1, "f16", "f16", 512.00, 512.00)]
    assert log.iswa_cells == {}
    assert log.mib("model", "CUDA0") == 2226.97
    assert log.mib("compute") == 1144.04
    assert log.mib("compute", "CPU") == 24.01
    assert log.mib("output", "CPU") == 1.96
    assert log.cparams["n_ctx_seq"] == "8192"  # not confused by "n_ctx_seq (8192) < n_ctx_train (131072)"
    assert log.oom == []


def test_cuda_two_gpus_breakdown():
    log = parse("cuda_2gpu_llama8b_c8192.log")
    assert log.breakdown == [
        BreakdownRow("CUDA0", 81559, 78000, 3298, 2226, 512, 560, 261, "H100 80GB HBM3"),
        BreakdownRow("CUDA1", 81559, 78600, 3195, 2123, 512, 560, -236, "H100 80GB HBM3"),
        BreakdownRow("Host", None, None, 306, 281, 1, 24, None),
    ]
    for r in log.breakdown:
        assert r.self_ == r.model + r.context + r.compute
        if r.total is not None:
            assert r.unaccounted == r.total - r.free - r.self_


# ---------------------------------------------------------------------------------------------------------------
# Partial offload, older llama_memory_breakdown_print prefix, no log prefix
# ---------------------------------------------------------------------------------------------------------------


def test_partial_offload():
    log = parse("cuda_partial_offload_20of33.log")
    assert log.offloaded == (20, 33)
    assert bufs(log) == [
        ("CPU", "model", "CPU_Mapped", 1807.45, "load_tensors"),
        ("CUDA0", "model", "CUDA0", 2773.12, "load_tensors"),
        ("CPU", "output", "CUDA_Host", 0.49, "llama_context"),
        ("CUDA0", "kv", "CUDA0", 1280.00, "llama_kv_cache"),
        ("CPU", "kv", "CPU", 768.00, "llama_kv_cache"),
        ("CUDA0", "compute", "CUDA0", 1345.00, "llama_context"),
        ("CPU", "compute", "CUDA_Host", 40.01, "llama_context"),
    ]
    assert log.kv_caches == [KVSummary(2048.00, 16384, 32, 1, 1, "f16", "f16", 1024.00, 1024.00)]
    assert log.cparams["flash_attn"] == "enabled"
    assert log.cparams["kv_unified"] == "false"
    assert log.cparams["n_seq_max"] == "1"
    assert log.mib("kv", "CPU") == 768.00
    assert log.mib("model", "CPU") == 1807.45
    assert log.breakdown == [
        BreakdownRow("CUDA0", 7805, 1890, 5398, 2773, 1280, 1345, 517, "GeForce RTX 4060 Ti"),
        BreakdownRow("Host", None, None, 2615, 1807, 768, 40, None),
    ]


# ---------------------------------------------------------------------------------------------------------------
# ROCm, iSWA, recurrent state
# ---------------------------------------------------------------------------------------------------------------


def test_rocm():
    log = parse("rocm_gemma3_iswa.log")
    assert bufs(log) == [
        ("ROCm0", "model", "ROCm0", 235.16, "load_tensors"),
        ("CPU", "model", "ROCm_Host", 160.00, "load_tensors"),
        ("CPU", "output", "ROCm_Host", 4.00, "llama_context"),
        ("ROCm0", "kv", "ROCm0", 24.00, "llama_kv_cache"),
        ("ROCm0", "kv", "ROCm0", 37.50, "llama_kv_cache"),
        ("ROCm0", "kv", "ROCm0", 3.05, "llama_memory_recurrent"),
        ("ROCm0", "compute", "ROCm0", 514.25, "sched_reserve"),
        ("CPU", "compute", "ROCm_Host", 9.26, "sched_reserve"),
    ]
    assert log.devices() == ["ROCm0", "CPU"]
    assert log.offloaded == (19, 19)
    assert log.iswa_cells == {"non-SWA": 8192, "SWA": 2560}
    # the recurrent "size = ..." summary is not a KV summary
    assert log.kv_caches == [
        KVSummary(24.00, 8192, 3, 4, 1, "q8_0", "q8_0", 12.00, 12.00),
        KVSummary(37.50, 2560, 15, 4, 1, "q8_0", "q8_0", 18.75, 18.75),
    ]
    assert log.mib("kv", "ROCm0") == 64.55
    assert log.breakdown == [
        BreakdownRow("ROCm0", 196592, 195000, 813, 235, 64, 514, 779, "Instinct MI300X"),
        BreakdownRow("Host", None, None, 173, 160, 4, 9, None),
    ]
    assert log.oom == []


# ---------------------------------------------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------------------------------------------


def test_oom_kv_cache():
    log = parse("cuda_oom_kv.log")
    assert log.oom == [
        "0.01.029.427 E ggml_backend_cuda_buffer_type_alloc_buffer: allocating 16384.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "0.01.031.158 E ggml_backend_buft_alloc_buffer_n_default: failed to allocate CUDA0 buffer of size "
        "17179869184",
        "0.01.032.889 E llama_init_from_model: failed to initialize the context: "
        "failed to allocate buffer for kv cache",
    ]
    # what was allocated before the failure is still reported; no KV buffer was
    assert bufs(log) == [
        ("CPU", "model", "CPU_Mapped", 281.81, "load_tensors"),
        ("CUDA0", "model", "CUDA0", 4403.50, "load_tensors"),
        ("CPU", "output", "CUDA_Host", 1.96, "llama_context"),
    ]
    assert log.kv_caches == []
    assert log.cparams["n_ctx"] == "131072"


def test_oom_compute():
    log = parse("cuda_oom_compute.log")
    assert [line.split(" E ", 1)[1] for line in log.oom] == [
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 3072.00 MiB on device 0: cudaMalloc failed: "
        "out of memory",
        "ggml_gallocr_reserve_n_impl: failed to allocate CUDA0 buffer of size 3221225472",
        "llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers",
    ]
    assert log.mib("kv", "CUDA0") == 1024.00


@pytest.mark.parametrize("line", [
    "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
    "ggml_vulkan: Device memory allocation of size 1073741824 failed. vk::Device::allocateMemory: "
    "ErrorOutOfDeviceMemory",
    "terminate called after throwing an instance of 'std::bad_alloc'",
    "graph_reserve: failed to allocate compute buffers",
    "llama_init_from_model: failed to initialize the context: failed to allocate compute tg buffers",
    "ggml_backend_metal_buffer_type_alloc_buffer: error: failed to allocate buffer, size = 4096.00 MiB",
    "CUDA error: out of memory",
])
def test_oom_patterns(line):
    assert parse_server_log(line + "\n").oom == [line]


@pytest.mark.parametrize("line", [
    "0.01.702.005 I srv    load_model: prompt cache is enabled, size limit: 8192 MiB",
    "sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism",
    "common_params_fit_impl: will leave 23792 >= 1024 MiB of system memory, no changes needed",
    "llama_context: n_ctx_seq (8192) < n_ctx_train (32768) -- the full capacity of the model will not be utilized",
])
def test_not_oom(line):
    log = parse_server_log(line)
    assert log.oom == []
    assert log.cparams == {}


# ---------------------------------------------------------------------------------------------------------------
# --log-jsonl
# ---------------------------------------------------------------------------------------------------------------


def test_jsonl_log():
    """Every message in a JSON envelope: the same buffers, cparams and OOM lines as the text log; the breakdown
    comes once, from the fit_memory_breakdown object, not twice."""
    log = parse("cuda_2gpu_jsonl.log")
    text = parse("cuda_2gpu_llama8b_c8192.log")
    assert bufs(log) == bufs(text)
    assert log.offloaded == (33, 33)
    assert log.kv_caches == text.kv_caches
    assert log.cparams == {"n_seq_max": "4", "n_ctx": "8192", "n_ctx_seq": "8192", "n_batch": "2048",
                           "n_ubatch": "512", "flash_attn": "auto", "kv_unified": "true", "n_outputs_max": "4"}
    assert log.oom == ["ggml_backend_cuda_buffer_type_alloc_buffer: allocating 64.00 MiB on device 1: "
                       "cudaMalloc failed: out of memory"]
    assert log.breakdown == [
        BreakdownRow("CUDA0", 81559, 78000, 3298, 2226, 512, 560, 261, "H100 80GB HBM3"),
        BreakdownRow("CUDA1", 81559, 78600, 3195, 2123, 512, 560, -236, "H100 80GB HBM3"),
        BreakdownRow("Host", None, None, 306, 281, 1, 24, None),
        BreakdownRow("CPU_REPACK", None, None, 12, 12, 0, 0, None),
    ]
    # the text rows of the same table (inside envelopes) say the same thing
    assert log.breakdown[:3] == text.breakdown


def test_jsonl_envelopes_without_breakdown_object():
    """An older build in JSONL mode (table rows in envelopes, no fit_memory_breakdown object): the rows count."""
    lines = [json.dumps({"type": "log", "time": 0, "level": "info", "msg": m + "\n"}) for m in (
        "llama_memory_breakdown_print: |   - CUDA0 (A100-SXM4-40GB) | 40442 = 30000 + (9000 = 8000 + 500 + 500)"
        " +  1442 |",
        "llama_memory_breakdown_print: |   - Host                   |                  300 =  200 + 60 + 40        |",
    )]
    log = parse_server_log("\n".join(lines))
    assert log.breakdown == [
        BreakdownRow("CUDA0", 40442, 30000, 9000, 8000, 500, 500, 1442, "A100-SXM4-40GB"),
        BreakdownRow("Host", None, None, 300, 200, 60, 40, None),
    ]


def test_jsonl_multiline_message_and_garbage():
    env = json.dumps({"type": "log", "time": 5, "level": "info",
                      "msg": "llama_kv_cache:      CUDA0 KV buffer size =   512.00 MiB\n"
                             "llama_context: n_ctx                 = 4096\n"})
    text = "\n".join([env, "{not json", '{"type": "other", "msg": "cudaMalloc failed"}', "[1, 2]"])
    log = parse_server_log(text)
    assert bufs(log) == [("CUDA0", "kv", "CUDA0", 512.0, "llama_kv_cache")]
    assert log.cparams == {"n_ctx": "4096"}
    assert log.oom == []  # the unknown JSON object is not a log line


def test_breakdown_object_after_a_prefix():
    obj = {"type": "fit_memory_breakdown", "data": {"unit": "MiB", "rows": [
        {"kind": "device", "name": "Vulkan0", "description": "RX 7900 XTX", "total": 24560, "free": 20000,
         "self": 4000, "model": 3000, "context": 600, "compute": 400, "unaccounted": 560}]}}
    log = parse_server_log("stdout: " + json.dumps(obj))
    assert log.breakdown == [BreakdownRow("Vulkan0", 24560, 20000, 4000, 3000, 600, 400, 560, "RX 7900 XTX")]


# ---------------------------------------------------------------------------------------------------------------
# Single lines and helpers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,device", [
    ("CPU", "CPU"), ("CPU_Mapped", "CPU"), ("CPU_REPACK", "CPU"), ("CPU_KLEIDIAI", "CPU"), ("AMX", "CPU"),
    ("CUDA_Host", "CPU"), ("ROCm_Host", "CPU"), ("Vulkan_Host", "CPU"), ("CUDA0", "CUDA0"), ("CUDA1", "CUDA1"),
    ("ROCm0", "ROCm0"), ("Vulkan0", "Vulkan0"), ("Metal", "Metal"), ("SYCL0", "SYCL0"),
])
def test_buffer_device(name, device):
    assert buffer_device(name) == device


def test_graph_reserve_and_older_compute_lines():
    text = "\n".join([
        "graph_reserve:      CUDA0 compute buffer size =   100.50 MiB",
        "llama_kv_cache_unified:      CUDA0 KV buffer size =    64.00 MiB",
        "llama_kv_cache_unified: size =   64.00 MiB (  4096 cells,  16 layers,  1/1 seqs), K (q4_0):   32.00 MiB,"
        " V (q4_0):   32.00 MiB",
    ])
    log = parse_server_log(text)
    assert bufs(log) == [("CUDA0", "compute", "CUDA0", 100.5, "graph_reserve"),
                         ("CUDA0", "kv", "CUDA0", 64.0, "llama_kv_cache")]
    assert log.kv_caches == []  # the summary regex is for the pinned build's "llama_kv_cache: size" only


def test_first_context_params_win():
    log = parse_server_log("llama_context: n_ctx                 = 4096\n"
                           "llama_context: n_ctx                 = 512\n")
    assert log.cparams == {"n_ctx": "4096"}


def test_last_offload_line_wins():
    log = parse_server_log("load_tensors: offloaded 10/33 layers to GPU\nload_tensors: offloaded 33/33 layers to GPU")
    assert log.offloaded == (33, 33)


def test_empty_log():
    log = parse_server_log("")
    assert log == ServerLog()
    assert log.mib("model") == 0
    assert log.devices() == []
