"""The memory model as pure functions: hand-computed bytes, GPU placement rules, and the measured compute points."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import pytest

from autoctx.errors import ArgsError
from autoctx.gguf import row_bytes, type_from_name
from autoctx.memory import Device, Params, estimate, kv_bytes_per_cell
from autoctx.runtimes.llamacpp.args import parse_server_args

from .conftest import DATA

MiB = 1024 * 1024


def buffers(est, kind, device=None):
    return [b.bytes for b in est.buffers if b.kind == kind and (device is None or b.device == device)]


# --- KV cache -------------------------------------------------------------------------------------------------

def test_llama_kv_is_layers_cells_kv_width_f16(spec_of):
    est = estimate(spec_of("llama-3.1-8b"), Params(n_ctx=8192, n_parallel=1))
    assert buffers(est, "kv") == [32 * 8192 * (8 * 128) * 2 * 2]  # 32 layers, 8 KV heads x 128, K+V, f16
    assert buffers(est, "output") == [128256 * 4]


def test_context_is_padded_to_256_and_split_per_slot(spec_of):
    spec = spec_of("llama-3.1-8b")
    est = estimate(spec, Params(n_ctx=5000, n_parallel=3, kv_unified=False))
    # n_ctx 5000 -> 5120; per slot PAD(5120/3, 256) = 1792; n_ctx = 3 x 1792
    assert (est.n_ctx, est.n_ctx_seq) == (5376, 1792)
    assert buffers(est, "kv") == [32 * 1792 * 3 * 1024 * 2 * 2]


def test_quantized_kv_uses_block_sizes(spec_of):
    est = estimate(spec_of("qwen3-8b"), Params(n_ctx=8192, n_parallel=1, cache_type_k="q8_0", cache_type_v="q4_0"))
    per_layer = 8192 * (1024 // 32 * 34 + 1024 // 32 * 18)  # q8_0 34 B and q4_0 18 B per 32 elements
    assert buffers(est, "kv") == [36 * per_layer]


def test_iswa_cache_sizes(spec_of):
    gemma4b = spec_of("gemma-3-4b")  # 34 layers, every 6th full, window 1024, 4 KV heads x 256
    est = estimate(gemma4b, Params(n_ctx=16384, n_parallel=1))
    assert (est.kv_cells, est.swa_cells) == (16384, 1536)  # PAD(min(16384, 1024 + 512), 256)
    assert buffers(est, "kv") == [5 * 16384 * 1024 * 2 * 2, 29 * 1536 * 1024 * 2 * 2]
    # unified with 4 slots: the window counts per slot
    est4 = estimate(gemma4b, Params(n_ctx=16384, n_parallel=4, kv_unified=True))
    assert est4.swa_cells == 4608  # PAD(4 x 1024 + 512, 256)
    full = estimate(gemma4b, Params(n_ctx=16384, n_parallel=1, swa_full=True))
    assert full.swa_cells == 16384


def test_kv_bytes_per_cell_counts_only_full_attention_layers(spec_of):
    assert kv_bytes_per_cell(spec_of("gemma-3-4b"), "f16", "f16") == 5 * 1024 * 2 * 2
    assert kv_bytes_per_cell(spec_of("llama-3.1-8b"), "q8_0", "q8_0") == 32 * 2 * row_bytes(type_from_name("q8_0"),
                                                                                             1024)


def test_mla_is_k_only_and_needs_equal_types(spec_of):
    spec = spec_of("deepseek-v2-lite")
    assert spec.is_mla and spec.n_embd_k_gqa(0) == 576
    est = estimate(spec, Params(n_ctx=8192, n_parallel=1))
    assert buffers(est, "kv") == [27 * 8192 * 576 * 2]
    with pytest.raises(ArgsError, match=r"does not support different K \(q8_0\) and V \(f16\)"):
        estimate(spec, Params(n_ctx=8192, cache_type_k="q8_0"))


def test_v_is_padded_to_the_widest_layer_without_flash_attention(spec_of):
    spec = spec_of("llama-3.1-8b")
    kv = list(spec.n_head_kv)
    kv[0] = 4  # a per-layer head count array: layer 0 narrower
    odd = replace(spec, n_head_kv=tuple(kv))
    fa = estimate(odd, Params(n_ctx=4096, n_parallel=1, flash_attn="on"))
    nofa = estimate(odd, Params(n_ctx=4096, n_parallel=1, flash_attn="off"))
    assert buffers(nofa, "kv")[0] - buffers(fa, "kv")[0] == 4096 * 512 * 2  # layer 0's V padded to 1024


def test_quantized_cache_needs_divisible_width(spec_of):
    spec = spec_of("llama-3.1-8b")
    odd = replace(spec, head_k=72, head_v=72, head_k_swa=72, head_v_swa=72, n_head_kv=(1,) * spec.n_layer)
    with pytest.raises(ArgsError, match=r"K cache type q4_0 needs the K width \(72\) to divide by 32"):
        estimate(odd, Params(n_ctx=4096, cache_type_k="q4_0", cache_type_v="q4_0", flash_attn="on"))


def test_quantized_v_without_flash_attention_is_refused(spec_of):
    with pytest.raises(ArgsError, match="quantized V cache needs flash attention"):
        estimate(spec_of("llama-3.1-8b"), Params(cache_type_v="q8_0", flash_attn="off"))


def test_recurrent_state_rows_per_sequence(spec_of):
    spec = spec_of("llama-3.1-8b")
    n = spec.n_layer
    mamba = replace(spec, architecture="mamba", is_recurrent=(True,) * n, has_kv=(False,) * n,
                    n_embd_r=3 * (8192 + 2 * 128), n_embd_s=128 * 8192)
    est = estimate(mamba, Params(n_ctx=4096, n_parallel=2))
    assert buffers(est, "kv") == [n * 4 * 2 * (3 * (8192 + 256) + 128 * 8192)]


# --- weights and GPU placement (llama-model.cpp load_tensors) ------------------------------------------------

def _gpu_bytes(spec, names, align=128):
    total = 0
    for t in spec.tensors:
        if t.name in names:
            total += (t.nbytes + align - 1) // align * align
    return total


def test_ngl_1_offloads_the_output_layer_first(spec_of):
    spec = spec_of("llama-3.1-8b")
    est = estimate(spec, Params(n_ctx=4096, n_parallel=1, n_gpu_layers=1, devices=(Device("CUDA0"),)))
    assert est.output_device == "CUDA0" and set(est.layer_device) == {"CPU"}
    assert buffers(est, "model", "CUDA0") == [_gpu_bytes(spec, {"output.weight", "output_norm.weight"})]
    assert buffers(est, "kv", "CUDA0") == []


def test_ngl_counts_blocks_from_the_end(spec_of):
    spec = spec_of("llama-3.1-8b")
    est = estimate(spec, Params(n_ctx=4096, n_parallel=1, n_gpu_layers=11, devices=(Device("CUDA0"),)))
    assert est.layer_device == ["CPU"] * 22 + ["CUDA0"] * 10
    assert buffers(est, "kv", "CUDA0") == [10 * 4096 * 1024 * 2 * 2]
    assert buffers(est, "kv", "CPU") == [22 * 4096 * 1024 * 2 * 2]
    names = {t.name for t in spec.tensors if any(t.name.startswith(f"blk.{i}.") for i in range(22, 32))}
    assert buffers(est, "model", "CUDA0") == [_gpu_bytes(spec, names | {"output.weight", "output_norm.weight"})]
    nkvo = estimate(spec, Params(n_ctx=4096, n_parallel=1, n_gpu_layers=11, offload_kqv=False,
                                 devices=(Device("CUDA0"),)))
    assert buffers(nkvo, "kv", "CUDA0") == [] and buffers(nkvo, "kv", "CPU") == [32 * 4096 * 1024 * 2 * 2]


def test_tied_embeddings_are_copied_to_the_output_device(spec_of):
    spec = spec_of("gemma-3-270m")
    emb = next(t for t in spec.tensors if t.name == "token_embd.weight")  # q8_0 [640, 262144]
    est = estimate(spec, Params(n_ctx=4096, n_gpu_layers=1, devices=(Device("CUDA0"),)))
    # CUDA pads each quantized row to a multiple of 512 elements: 640 % 512 = 128 -> 384 more elements, once
    pad = row_bytes(type_from_name("q8_0"), 384)
    norm = (640 * 4 + 127) // 128 * 128
    assert buffers(est, "model", "CUDA0") == [(emb.nbytes + pad + 127) // 128 * 128 + norm]
    assert next(b for b in est.buffers if b.kind == "output").name == "CUDA_Host"


def test_layers_split_across_gpus_by_tensor_split(spec_of):
    spec = spec_of("llama-3.1-8b")
    devs = (Device("CUDA0"), Device("CUDA1"))
    est = estimate(spec, Params(n_ctx=4096, n_parallel=1, n_gpu_layers=-1, tensor_split=(3.0, 1.0), devices=devs))
    # 33 offloadable layers; split points at 0.75: layer il goes to CUDA0 while il/33 < 0.75
    assert est.layer_device == ["CUDA0"] * 25 + ["CUDA1"] * 7
    assert est.output_device == "CUDA1"
    free = estimate(spec, Params(n_ctx=4096, n_parallel=1, devices=(Device("CUDA0", 10 * 2**30),
                                                                      Device("CUDA1", 30 * 2**30))))
    assert free.layer_device.count("CUDA0") == 9  # by free memory: 1/4 of 33 layers -> il/33 < 0.25


def test_repack_rules_pick_the_cpu_repack_buffer(spec_of):
    spec = spec_of("gemma-3-270m")
    avx2 = {"q4_0": 8, "q4_k": 8, "iq4_nl": 8, "mxfp4": 8}
    est = estimate(spec, Params(n_ctx=4096, cpu_repack=avx2))
    q4k = sum(t.nbytes for t in spec.tensors if t.type_name == "q4_k")
    assert {b.name: b.bytes for b in est.buffers if b.kind == "model"} == {"CPU_Mapped": 246587904,
                                                                           "CPU_REPACK": q4k}
    assert q4k == 13271040  # 12.66 MiB, as llama-server prints on an AVX2 host


# --- compute buffer against measured points ------------------------------------------------------------------

POINTS = json.loads((DATA / "compute_points.json").read_text())["points"]
BY_MODEL: dict[str, list[dict]] = defaultdict(list)
for _p in POINTS:
    if _p["split"] == "train":  # the held-out points: tests/test_calibration_scripts.py
        BY_MODEL[_p["model"]].append(_p)


@pytest.mark.parametrize("model", sorted(BY_MODEL))
def test_compute_buffer_matches_measured_points(spec_of, model):
    """Every measured training point (pinned llama-server, CPU) within 10 %; most of them within 1 %."""
    spec = spec_of(model)
    errors = []
    for p in BY_MODEL[model]:
        est = estimate(spec, parse_server_args(p["args"]).params)
        pred = est.kind_bytes("compute") / MiB
        assert abs(pred - p["compute_mib"]) <= 0.10 * p["compute_mib"], (p["args"], pred, p["compute_mib"])
        assert sum(buffers(est, "kv")) / MiB == pytest.approx(p["kv_mib"], abs=0.011)
        errors.append(abs(pred - p["compute_mib"]) / p["compute_mib"])
    assert sum(e <= 0.01 for e in errors) >= 0.75 * len(errors)


def test_rotation_inputs_follow_the_head_width_and_never_loop_on_zero():
    from autoctx.memory import rotation_input_bytes

    # K: largest power-of-two block from 64 dividing the head (128 -> 128x128, 192 -> 64x64); V: always 64x64
    assert rotation_input_bytes(128, 128, "q8_0", "q8_0", False) == 4 * 128 * 128 + 4 * 64 * 64
    assert rotation_input_bytes(192, 128, "q8_0", "f16", False) == 4 * 64 * 64
    assert rotation_input_bytes(576, 512, "q8_0", "q8_0", True) == 4 * 64 * 64  # MLA: K only
    # a header with key_length 0 (hostile or broken): no rotation, and the call returns (it used to spin forever)
    assert rotation_input_bytes(0, 0, "q4_0", "q4_0", False) == 0
