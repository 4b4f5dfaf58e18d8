"""Each backend's buffer rules (memory.BACKENDS), the devices that name them, and where the CPU's weights go beside
them: hand-computed bytes for every backend, one-line refusals for unknown names. The real multi-device proof of the
rules that are not CUDA-specific is tests/test_rpc_server.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoctx.errors import ArgsError
from autoctx.gguf import row_bytes, type_from_name
from autoctx.memory import BACKENDS, Device, Params, _alloc_size, estimate
from autoctx.runtimes.llamacpp.args import parse_devices, parse_server_args, to_server_args
from autoctx.runtimes.llamacpp.logparse import buffer_device, parse_server_log

MiB = 1024 * 1024
AVX2 = {"q4_0": 8, "q4_k": 8, "iq4_nl": 8, "mxfp4": 8}
KNOWN = "CUDA, ROCm, MUSA, Vulkan, MTL (Metal), SYCL, RPC"


def pad(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# --- per-backend sizes -----------------------------------------------------------------------------------------

def test_every_backend_names_its_llama_cpp_source():
    assert list(BACKENDS) == ["CPU", "CUDA", "ROCm", "MUSA", "Vulkan", "MTL", "SYCL", "RPC"]
    for b in BACKENDS.values():
        assert b.source.startswith(("ggml/src/", "tools/")), b


@pytest.mark.parametrize("device,f32_100,q8_640x3", [
    # 100 f32 = 400 bytes; q8_0 [640, 3] = 3 rows x 20 blocks x 34 = 2040 bytes, ne0 % 512 = 128 -> 384 more
    # elements (408 bytes) where quantized rows are padded
    (None, 416, 2048),                                      # CPU buffer type: 32-byte alignment
    (Device("CUDA0"), 512, pad(2040 + 408, 128)),           # 128-byte alignment + row padding
    (Device("ROCm1"), 512, pad(2040 + 408, 128)),
    (Device("MUSA0"), 512, pad(2040 + 408, 128)),
    (Device("SYCL0"), 512, pad(2040 + 408, 128)),
    (Device("Vulkan0"), 400, 2048),                         # minStorageBufferOffsetAlignment, default 16; no padding
    (Device("Vulkan0", align=4096), 4096, 4096),             # the device's own alignment
    (Device("MTL0"), 416, 2048),                            # 32, no padding
    (Device("RPC0"), 416, 2048),                            # a CPU worker: the CPU's rules
    (Device("RPC0", remote="CUDA"), 512, pad(2040 + 408, 128)),  # a CUDA worker: CUDA's
    (Device("RPC1", remote="Vulkan", align=64), 448, 2048),
])
def test_alloc_size_per_backend(device, f32_100, q8_640x3):
    assert row_bytes(type_from_name("q8_0"), 384) == 408
    assert _alloc_size(device, "f32", 400, 100) == f32_100
    assert _alloc_size(device, "q8_0", 2040, 640) == q8_640x3


def test_device_properties():
    assert [Device(n).host_buffer for n in ("CUDA0", "ROCm0", "Vulkan1", "SYCL0", "MTL0", "RPC0")] == \
        ["CUDA_Host", "ROCm_Host", "Vulkan_Host", "SYCL_Host", "CPU", "CPU"]
    assert Device("Metal0").backend is BACKENDS["MTL"]  # the name older builds printed
    assert Device("RPC1", endpoint="10.0.0.2:50052").buffer_name == "RPC0[10.0.0.2:50052]"
    assert Device("RPC1", endpoint="10.0.0.2:50052", remote_index=1).buffer_name == "RPC1[10.0.0.2:50052]"
    assert Device("RPC1").buffer_name == "RPC1" and Device("CUDA0").buffer_name == "CUDA0"


# --- unknown names: one line naming the known ones -------------------------------------------------------------

def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ArgsError) as e:
        Device("XPU0")
    assert str(e.value) == f"unknown device 'XPU0': no llama.cpp backend 'XPU' (known: {KNOWN})"
    with pytest.raises(ArgsError) as e:
        parse_devices("--devices", "cuda0,xpu0")
    assert str(e.value) == (f"--devices: unknown device 'xpu0' (known backends: {KNOWN}; e.g. cuda0, vulkan1, mtl0, "
                            "rpc0, RPC0[127.0.0.1:50052])")
    with pytest.raises(ArgsError, match="a worker backend is for RPC devices only"):
        Device("CUDA0", remote="CPU")
    for bad, msg in [("cuda0@3", "an alignment is a power of two"), ("cuda0@cuda", "unknown option 'cuda'"),
                     ("rpc0@rpc", "unknown option 'rpc'"), ("RPC0[nohost]", "expected host:port"),
                     ("rpc1,RPC0[1.2.3.4:5]", "names RPC1 twice"), ("vulkan256", "device numbers go up to 255")]:
        with pytest.raises(ArgsError, match=msg.replace("[", r"\[")):
            parse_devices("--devices", bad)


def test_cli_unknown_backend_is_one_line(gemma_path):
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "estimate", gemma_path, "--devices", "npu0"],
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, f"autoctx: error: --devices: unknown device 'npu0' (known backends: "
                                           f"{KNOWN}; e.g. cuda0, vulkan1, mtl0, rpc0, RPC0[127.0.0.1:50052])\n")


def test_parse_devices_names_as_llama_cpp_does():
    got = parse_devices("--devices", "cuda00, Vulkan1@4 ,metal0,RPC0[127.0.0.1:50052],RPC0[10.0.0.2:50053]@cuda,rpc2")
    assert got == [Device("CUDA0"), Device("Vulkan1", align=4), Device("MTL0"),
                   Device("RPC0", endpoint="127.0.0.1:50052"),
                   Device("RPC1", endpoint="10.0.0.2:50053", remote="CUDA"), Device("RPC2")]


# --- llama-server flags ----------------------------------------------------------------------------------------

def test_rpc_and_no_host_flags(spec_of):
    parsed = parse_server_args(["--rpc", "127.0.0.1:50052,10.0.0.2:50053", "--no-host", "-c", "4096"],
                               base=Params(devices=(Device("CUDA0"),)))
    p = parsed.params
    # RPC servers come first (src/llama.cpp llama_prepare_model_devices), then the local GPUs
    assert p.devices == (Device("RPC0", endpoint="127.0.0.1:50052"), Device("RPC1", endpoint="10.0.0.2:50053"),
                         Device("CUDA0"))
    assert p.no_host and parsed.passthrough == ["--rpc", "127.0.0.1:50052,10.0.0.2:50053"] and not parsed.ignored
    assert "--no-host" in to_server_args(p)
    with pytest.raises(ArgsError, match="--rpc: expected host:port for an RPC server, got 'nope'"):
        parse_server_args(["--rpc", "nope"], base=Params())
    est = estimate(spec_of("llama-3.1-8b"), parse_server_args(["--rpc", "127.0.0.1:50052,10.0.0.2:50053", "-c",
                                                               "4096", "-np", "1"], base=Params()).params)
    assert {b.name for b in est.buffers if b.kind in ("model", "kv")} == \
        {"CPU_Mapped", "RPC0[127.0.0.1:50052]", "RPC0[10.0.0.2:50053]"}
    assert next(b.name for b in est.buffers if b.kind == "output") == "CPU"


# --- where the CPU's weights go (make_cpu_buft_list, buft_for_tensor) -------------------------------------------

def _cpu_layer_tensors(spec, n_cpu_blocks):
    return [t for t, li in zip(spec.tensors, spec.tensor_layer) if li < n_cpu_blocks]  # input layer (-1) included


def _model(est):
    return {b.name: b.bytes for b in est.buffers if b.kind == "model"}


def test_cpu_weights_beside_a_cuda_device(spec_of):
    """-ngl 11 on Llama-3.1-8B: 22 blocks on the CPU. A CUDA build lists CUDA_Host before CPU_REPACK: nothing is
    repacked; with mmap the weights stay mapped, without they are allocated in CUDA_Host (CPU alignment)."""
    spec = spec_of("llama-3.1-8b")
    cpu = _cpu_layer_tensors(spec, 22)
    repackable = [t for t in cpu if t.type_name in AVX2 and not t.name.startswith("token_embd.")]
    assert repackable
    base = Params(n_ctx=4096, n_parallel=1, n_gpu_layers=11, cpu_repack=AVX2, devices=(Device("CUDA0"),))
    est = estimate(spec, base)
    assert set(_model(est)) == {"CUDA0", "CPU_Mapped"}
    assert set(_model(estimate(spec, Params(n_ctx=4096, n_parallel=1, cpu_repack=AVX2)))) == {"CPU_Mapped",
                                                                                             "CPU_REPACK"}
    no_host = estimate(spec, Params(**{**base.__dict__, "no_host": True}))
    assert _model(no_host)["CPU_REPACK"] == sum(pad(t.nbytes, 32) for t in repackable)
    no_mmap = estimate(spec, Params(**{**base.__dict__, "mmap": False}))
    assert _model(no_mmap) == {"CUDA0": _model(est)["CUDA0"], "CUDA_Host": sum(pad(t.nbytes, 32) for t in cpu)}
    assert next(b for b in no_mmap.buffers if b.name == "CUDA_Host").device == "CPU"


def test_cpu_weights_beside_vulkan_metal_and_rpc(spec_of):
    spec = spec_of("llama-3.1-8b")
    cpu = _cpu_layer_tensors(spec, 22)
    gpu = [t for t, li in zip(spec.tensors, spec.tensor_layer) if li >= 22]
    repackable = sum(pad(t.nbytes, 32) for t in cpu if t.type_name in AVX2 and not t.name.startswith("token_embd."))

    def run(dev, **kw):
        return _model(estimate(spec, Params(n_ctx=4096, n_parallel=1, n_gpu_layers=11, cpu_repack=AVX2,
                                            devices=(dev,), **kw)))

    # Vulkan_Host: minMemoryMapAlignment (default 64) and 32 bytes more per buffer (ggml-vulkan.cpp)
    assert run(Device("Vulkan0"), mmap=False)["Vulkan_Host"] == sum(pad(t.nbytes, 64) for t in cpu) + 32
    assert run(Device("Vulkan0"))["Vulkan0"] == sum(pad(t.nbytes, 16) for t in gpu)
    # Metal has no host buffer type: the CPU's weights are repacked; its own weights are a mapped range with mmap
    first = min(spec.data_offsets[0] + t.offset for t in gpu)
    last = max(spec.data_offsets[0] + t.offset + t.nbytes for t in gpu)
    metal = run(Device("MTL0"))
    assert metal["MTL0_Mapped"] == last - first and metal["CPU_REPACK"] == repackable
    assert run(Device("MTL0"), mmap=False)["MTL0"] == sum(pad(t.nbytes, 32) for t in gpu)
    # RPC devices have no host buffer type either; a CPU worker sizes like the CPU
    rpc = run(Device("RPC0", endpoint="127.0.0.1:50052"))
    assert rpc["CPU_REPACK"] == repackable and rpc["RPC0[127.0.0.1:50052]"] == sum(pad(t.nbytes, 32) for t in gpu)


def test_output_buffer_is_the_output_devices_host_buffer(spec_of):
    spec = spec_of("llama-3.1-8b")

    def out(dev, ngl=1):
        est = estimate(spec, Params(n_ctx=4096, n_parallel=1, n_gpu_layers=ngl, devices=(dev,)))
        return next(b.name for b in est.buffers if b.kind == "output")

    assert [out(Device(n)) for n in ("CUDA0", "ROCm0", "Vulkan0", "SYCL0", "MTL0", "RPC0")] == \
        ["CUDA_Host", "ROCm_Host", "Vulkan_Host", "SYCL_Host", "CPU", "CPU"]
    assert out(Device("CUDA0"), ngl=0) == "CPU"  # the output layer on the CPU


# --- the log side ----------------------------------------------------------------------------------------------

RPC_LOG = """\
0.00.761.908 I llama_prepare_model_devices: using device RPC0 (127.0.0.1:50071) (unknown id) - 24152 MiB free
0.00.762.098 I llama_prepare_model_devices: using device RPC1 (127.0.0.1:50072) (unknown id) - 24152 MiB free
0.01.192.648 I load_tensors:   CPU_Mapped model buffer size =   170.00 MiB
0.01.192.650 I load_tensors: RPC0[127.0.0.1:50071] model buffer size =    35.82 MiB
0.01.192.652 I load_tensors: RPC0[127.0.0.1:50072] model buffer size =   199.34 MiB
0.01.949.787 I llama_kv_cache: RPC0[127.0.0.1:50071] KV buffer size =     4.00 MiB
0.01.966.443 I sched_reserve: RPC0[127.0.0.1:50072] compute buffer size =    41.57 MiB
"""


def test_rpc_buffers_map_to_their_devices():
    """ggml-rpc.cpp names a buffer RPC<i>[host:port] (i: the index on that worker) while the device is RPC<n>: both
    workers' buffers start with RPC0; the log's `using device` lines say which device each endpoint is."""
    log = parse_server_log(RPC_LOG)
    assert [(b.device, b.kind, b.name, b.mib) for b in log.buffers] == [
        ("CPU", "model", "CPU_Mapped", 170.0),
        ("RPC0", "model", "RPC0[127.0.0.1:50071]", 35.82),
        ("RPC1", "model", "RPC0[127.0.0.1:50072]", 199.34),
        ("RPC0", "kv", "RPC0[127.0.0.1:50071]", 4.0),
        ("RPC1", "compute", "RPC0[127.0.0.1:50072]", 41.57),
    ]
    assert parse_server_log("\n".join(RPC_LOG.splitlines()[2:])).buffers[1].device == "RPC0[127.0.0.1:50071]"
    assert [buffer_device(n) for n in ("MTL0_Mapped", "MTL0", "Vulkan_Host", "SYCL_Host", "ROCm1")] == \
        ["MTL0", "MTL0", "CPU", "CPU", "ROCm1"]
