"""Compute buffers with devices (memory.device_compute_buffers): the scheduler's structure as pure functions.

The RPC runs (tests/test_rpc_server.py) measure this model on a real multi-device llama.cpp; these tests pin the
rules no RPC device exercises (CUDA's op offload and flash-attention copies, per-backend offload rules, split modes)
and the exact parts of the structure, by hand from the pinned source.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoctx.errors import ArgsError
from autoctx.memory import (CPU, GGML_SCHED_MAX_COPIES, Device, Params, _fa_f16_copy_floats, compute_bytes,
                            estimate, graph_inputs, op_offload_device, pipeline_parallel)
from autoctx.runtimes.llamacpp.args import parse_server_args, to_server_args
from autoctx.catalog import get_shape, header_view
from autoctx.model import spec_from_gguf

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def llama8b():
    return spec_from_gguf(header_view(get_shape("llama-3.1-8b")))


def _compute(est) -> dict[tuple[str, str], float]:
    return {(b.device, b.name): round(b.bytes / MiB, 2) for b in est.buffers if b.kind == "compute"}


def _p(**kw) -> Params:
    base = dict(n_ctx=32768, n_parallel=1, flash_attn="on", fit=False, devices=(Device("CUDA0"),))
    return Params(**{**base, **kw})


def test_graph_inputs_are_the_pinned_builds(llama8b):
    """llama-graph.cpp build_inp_embd (tokens, the vector-embedding input, the mixed-batch path), inp_pos, per cache
    k/v index inputs and the KQ mask (f16 with flash attention), out_ids: sizes by hand, n_embd 4096, 512 tokens."""
    got = {(g.name, g.use): g.bytes for g in graph_inputs(llama8b, _p().resolved(), 32768, 0, 512, 1, True)}
    assert got == {
        ("inp_tokens", "host"): 4 * 512, ("inp_embd", "host"): 4 * 4096 * 512,
        ("inp_mixed_tokens", "host"): 4 * 512, ("inp_mixed_slots", "embd"): 8 * 512,
        ("inp_mixed_embd", "embd"): 4 * 4096 * 512, ("inp_pos", "pos"): 4 * 512,
        ("attn_inp_k_idxs", "kv:base"): 8 * 512, ("attn_inp_v_idxs", "kv:base"): 8 * 512,
        ("attn_inp_kq_mask", "kv:base"): 32768 * 512 * 2, ("out_ids", "out"): 4}
    # flash attention off: f32 mask, and V is stored transposed, so its index input has a row per V element
    off = {g.name: g.bytes for g in graph_inputs(llama8b, _p(flash_attn="off").resolved(), 32768, 0, 512, 1, False)}
    assert off["attn_inp_kq_mask"] == 32768 * 512 * 4 and off["attn_inp_v_idxs"] == 8 * 512 * 1024


def test_full_offload_host_buffer_is_the_inputs_and_the_embedding_rows(llama8b):
    """Full offload on CUDA: the host buffer (CUDA_Host: the CPU backend uses the first GPU's host buffer type) holds
    every graph input plus the two get_rows outputs the GPU copies: 32 MiB mask + 4 rows of 8 MiB + the small ids.
    Public CUDA logs of builds before the mixed-batch inputs print masks + 2 rows (48 MiB for this model)."""
    est = estimate(llama8b, _p())
    small = 4 * 512 + 4 * 512 + 8 * 512 + 4 * 512 + 8 * 512 + 8 * 512 + 32  # ids, slots, pos, k/v idxs, out_ids
    assert [b for b in est.buffers if b.kind == "compute" and b.device == CPU][0].bytes == \
        32 * MiB + 4 * 8 * MiB + small
    assert ("CPU", "CUDA_Host") in _compute(est)


def test_fa_f16_copies_of_a_quantized_cache(llama8b):
    """ggml-cuda fattn: with a quantized K/V the MMA/TILE kernels take f16 copies of the layer's K and V inside the FA
    node: 131072 cells × 1024 × 2 bytes each = 512 MiB for Llama-3.1-8B (issue 8). A CPU-worker RPC device and the
    CPU backend have no such copies."""
    p = _p(n_ctx=131072, cache_type_k="q8_0", cache_type_v="q8_0").resolved()
    assert 4 * _fa_f16_copy_floats(llama8b, p, 131072, 1) == 512 * MiB
    cuda = _compute(estimate(llama8b, p))[("CUDA0", "CUDA0")]
    f16 = _compute(estimate(llama8b, replace(p, cache_type_k="f16", cache_type_v="f16")))[("CUDA0", "CUDA0")]
    rpc = estimate(llama8b, replace(p, devices=(Device("RPC0", endpoint="127.0.0.1:1"),)))
    rpc_mib = rpc.kind_bytes("compute", "RPC0") / MiB
    assert abs(rpc_mib - f16) < 1  # no copies: only the rotation inputs of the quantized cache differ
    # the attention with its copies is the peak now: 52 MiB of rows + 512 of copies, vs the FFN's 124 MiB
    assert abs(cuda - (f16 + 52 + 512 - 124)) < 0.1  # + the rotation inputs of the quantized cache (80 KiB)
    assert any("f16" in n for n in estimate(llama8b, p).notes)


def test_op_offload_device_per_backend():
    """ggml-backend.cpp: an op with a host weight goes to the first device whose offload_op says yes for a batch of
    at least 32 (CUDA/ROCm/MUSA, Vulkan, SYCL: any op; Metal: matmuls); RPC devices never offload (offload_op NULL)."""
    rpc = Device("RPC0", endpoint="127.0.0.1:1")
    assert op_offload_device(Params(devices=(rpc,)), 512) is None
    assert op_offload_device(Params(devices=(rpc, Device("CUDA0"))), 512).name == "CUDA0"
    for name in ("ROCm0", "Vulkan0", "MTL0", "SYCL0", "MUSA0"):
        assert op_offload_device(Params(devices=(Device(name),)), 512).name == name
    assert op_offload_device(Params(devices=(Device("CUDA0"),)), 31) is None
    assert op_offload_device(Params(devices=(Device("CUDA0"),), op_offload=False), 512) is None


def test_partial_offload_and_ngl0_with_op_offload(llama8b):
    """With op offload the CPU layers' prompt batches run on CUDA0 (their K/V views copied in): CUDA0's buffer grows,
    the host keeps the inputs. The one public log (Llama-3.1-8B Q4_0, FA, 32k, a build without the mixed-batch
    inputs): GPU 248 MiB at -ngl 15 and -ngl 0 (140 at full offload), host 48. This model says 276 for both (block 0
    runs on the GPU then: the embedding stage's rows; that build had one n_embd row less there: 268), +11 %.
    --no-op-offload keeps the CPU layers' live set in CUDA_Host and, with -ngl 0, no GPU compute buffer at all (the
    CPU closed form)."""
    full = _compute(estimate(llama8b, _p()))
    part = _compute(estimate(llama8b, _p(n_gpu_layers=15)))
    ngl0 = _compute(estimate(llama8b, _p(n_gpu_layers=0)))
    assert part[("CUDA0", "CUDA0")] == ngl0[("CUDA0", "CUDA0")] == 276.01
    assert abs(part[("CUDA0", "CUDA0")] - 8 - 248) <= 0.10 * 248  # the log's build: one embedding row less
    assert part[("CUDA0", "CUDA0")] > full[("CUDA0", "CUDA0")] + 100
    assert part[("CPU", "CUDA_Host")] == full[("CPU", "CUDA_Host")]  # only the inputs (and embedding rows)
    assert ngl0[("CUDA0", "CUDA0")] > full[("CUDA0", "CUDA0")] + 100
    assert any("op offload" in n for n in estimate(llama8b, _p(n_gpu_layers=15)).notes)
    no_off = _compute(estimate(llama8b, _p(n_gpu_layers=15, op_offload=False)))
    assert no_off[("CPU", "CUDA_Host")] > 150 and no_off[("CUDA0", "CUDA0")] < full[("CUDA0", "CUDA0")]
    est = estimate(llama8b, _p(n_gpu_layers=0, op_offload=False))
    p = est.params
    assert _compute(est) == {("CPU", "CUDA_Host"): round(compute_bytes(llama8b, 32768, 0, 512, 1, True) / MiB, 2)}
    assert p.op_offload is False


def test_pipeline_parallelism_conditions(llama8b):
    """llama-context.cpp: several devices, every layer offloaded, layer split, KV offloaded → 4 copies of every input.
    The host buffer then holds exactly 4 × the graph inputs + the two embedding rows."""
    two = (Device("CUDA0", free_bytes=1), Device("CUDA1", free_bytes=1))
    p = _p(devices=two).resolved()
    n_all = llama8b.n_layer + 1
    assert pipeline_parallel(llama8b, p, n_all)
    assert not pipeline_parallel(llama8b, p, n_all - 1)
    assert not pipeline_parallel(llama8b, replace(p, offload_kqv=False), n_all)
    assert not pipeline_parallel(llama8b, replace(p, split_mode="row"), n_all)
    assert not pipeline_parallel(llama8b, replace(p, devices=two[:1]), n_all)
    est = estimate(llama8b, p)
    inputs = sum(-(-g.bytes // 32) * 32 for g in graph_inputs(llama8b, p, 32768, 0, 512, 1, True))
    assert est.kind_bytes("compute", CPU) == GGML_SCHED_MAX_COPIES * inputs + 2 * 8 * MiB
    assert {b.device for b in est.buffers if b.kind == "compute"} == {"CUDA0", "CUDA1", CPU}


def test_split_modes(llama8b):
    """-sm none keeps the main GPU only (src/llama.cpp), -mg picks it; row/tensor are estimated as a layer split with a
    note; the flags round-trip through to_server_args."""
    two = (Device("CUDA0"), Device("CUDA1"))
    est = estimate(llama8b, _p(devices=two, split_mode="none", main_gpu=1))
    assert [d.name for d in est.params.devices] == ["CUDA1"] and set(est.layer_device) == {"CUDA1"}
    assert not [d.name for d in estimate(llama8b, _p(devices=two, split_mode="none", main_gpu=-1)).params.devices]
    with pytest.raises(ArgsError, match="main-gpu 2"):
        estimate(llama8b, _p(devices=two, split_mode="none", main_gpu=2))
    assert any("not modelled" in n for n in estimate(llama8b, _p(devices=two, split_mode="row")).notes)
    parsed = parse_server_args(["-sm", "none", "-mg", "1", "--no-op-offload"], base=Params()).params
    assert (parsed.split_mode, parsed.main_gpu, parsed.op_offload) == ("none", 1, False)
    again = parse_server_args(to_server_args(parsed), base=Params()).params
    assert (again.split_mode, again.main_gpu, again.op_offload) == ("none", 1, False)
    with pytest.raises(ArgsError, match="split-mode"):
        parse_server_args(["--split-mode", "rows"], base=Params())


def test_cpu_only_runs_keep_the_closed_form(llama8b):
    """No device: the calibrated closed form, unchanged (tests/data/compute_points.json)."""
    est = estimate(llama8b, Params(n_ctx=32768, n_parallel=1, fit=False))
    assert est.kind_bytes("compute") == compute_bytes(llama8b, 32768, 0, 512, 1, True)
