"""Tensor overrides against the real llama-server: two ggml-rpc-server workers as devices RPC0 and RPC1 (the fixture
`rpc_endpoints` of tests/conftest.py), MoE shapes whose experts -ot, --cpu-moe and --n-cpu-moe move off them, and
autoctx predicting every model, KV and output buffer the server prints, by device and buffer name.

What the cases prove: the expert patterns of --cpu-moe/--n-cpu-moe (MoE blocks, the dense lead block of DeepSeek,
its shared experts staying, gpt-oss's expert biases), -ot's first-match-wins order across several flags, a CPU
layer's tensor and the input embedding overridden onto a device, an RPC buffer type by its name, --n-cpu-ffn on a
dense model, the tied embedding's copy following an override, and CPU overrides in CPU_REPACK/CPU without mmap.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoctx.memory import estimate, tensor_devices
from tests.rpc_workers import load_on_workers, predicted, printed

MiB = 1024 * 1024
SHAPE = ["--no-repack", "--no-warmup"]
CTX = ["-c", "2048", "-np", "1"]

# (id, shape, llama-server args after --rpc; @0/@1 stand for the two workers' buffer types RPC0[host:port])
CASES = [
    # every layer offloaded, split by free memory; the experts of blocks 0-45 on the CPU (mapped), 46-47 on RPC1
    ("qwen3-n-cpu-moe-46", "qwen3-30b-a3b", [*SHAPE, *CTX, "--n-cpu-moe", "46"]),
    # -ngl 30 (blocks 19-47 + output on the devices) and three override flags in order: blk.47's down experts to RPC0
    # before --cpu-moe sends every expert to the CPU; the attention of CPU blocks 1 and 2 onto RPC1 (the second
    # worker's buffer type); the input embedding onto RPC0
    ("qwen3-ot-order", "qwen3-30b-a3b", [*SHAPE, *CTX, "-ngl", "30", "-ot",
                                         r"blk\.47\.ffn_down_exps=@0,blk\.(1|2)\.attn_.*=@1", "--cpu-moe",
                                         "-ot", "token_embd=@0"]),
    # MLA, a dense first block (no experts to move) and shared experts (ffn_*_shexp: not matched, stay on the devices)
    ("deepseek-cpu-moe", "deepseek-v2-lite", [*SHAPE, *CTX, "--cpu-moe"]),
    # MXFP4 experts and their biases (ffn_*_exps.bias match the pattern too); -ts 1,3
    ("gpt-oss-n-cpu-moe-22-ts", "gpt-oss-20b", [*SHAPE, *CTX, "--n-cpu-moe", "22", "-ts", "1,3"]),
    # a dense model: --n-cpu-ffn 12 keeps the first 12 blocks' FFN on the CPU, repacked (no host buffer type beside
    # RPC devices) or in a CPU buffer (no mmap); the tied embedding overridden onto RPC0 takes the output's copy
    ("qwen05-n-cpu-ffn-nommap", "qwen2.5-0.5b", ["--no-warmup", *CTX, "--n-cpu-ffn", "12", "-ot", "token_embd=@0",
                                                 "--load-mode", "none"]),
]
CASE_IDS = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def run_case(rpc_endpoints, llama_server, shape_file):
    done: dict[str, tuple] = {}

    def run(case_id: str):
        if case_id not in done:
            _, model, args = CASES[CASE_IDS.index(case_id)]
            names = [f"RPC0[{ep}]" for ep in rpc_endpoints]
            args = [a.replace("@0", names[0]).replace("@1", names[1]) for a in args]
            done[case_id] = load_on_workers(llama_server, shape_file(model), rpc_endpoints, args, timeout=600)[:2]
        return done[case_id]

    return run


@pytest.mark.server
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_override_buffers_exact(run_case, case_id):
    """Every model, KV and output buffer llama-server prints, by device and buffer name, to the 0.01 MiB it prints."""
    est, m = run_case(case_id)
    assert m.log.offloaded == (est.n_gpu_layers, est.spec.n_layer + 1)
    assert predicted(est, "model") == printed(m, "model")
    assert predicted(est, "kv") == printed(m, "kv")
    assert predicted(est, "output") == printed(m, "output")


def _model(est) -> dict[str, int]:
    return {b.name: b.bytes for b in est.buffers if b.kind == "model"}


@pytest.mark.server
def test_overrides_moved_what_they_name(run_case, rpc_endpoints):
    """The exact buffers above come from these placements: each override moved the tensors it names, and only those."""
    rpc0, rpc1 = (f"RPC0[{ep}]" for ep in rpc_endpoints)
    est, _ = run_case("qwen3-n-cpu-moe-46")
    plain = estimate(est.spec, replace(est.params, tensor_overrides=()))
    experts = sum(t.nbytes for t in est.spec.tensors if "_exps." in t.name and int(t.name.split(".")[1]) < 46)
    moved = _model(plain)[rpc0] + _model(plain)[rpc1] - _model(est)[rpc0] - _model(est)[rpc1]
    assert moved == experts  # CPU rules on the workers: no padding, 32-byte multiples
    assert est.layer_device == plain.layer_device  # the layers stay where they were: KV, attention
    est, _ = run_case("qwen3-ot-order")
    assert set(_model(est)) == {"CPU_Mapped", rpc0, rpc1}
    where = dict(zip((t.name for t in est.spec.tensors),
                     tensor_devices(est.spec, est.params, est.layer_device, est.output_device)))
    assert (est.layer_device[1], est.layer_device[47]) == ("CPU", "RPC1")
    assert where["blk.47.ffn_down_exps.weight"] == "RPC0"  # the first pattern, before --cpu-moe's
    assert {d for n, d in where.items() if "_exps." in n and n != "blk.47.ffn_down_exps.weight"} == {"CPU"}
    assert where["blk.1.attn_q.weight"] == where["blk.2.attn_output.weight"] == "RPC1"  # CPU blocks' attention
    assert where["blk.3.attn_q.weight"] == "CPU" and where["token_embd.weight"] == "RPC0"
    est, _ = run_case("qwen05-n-cpu-ffn-nommap")
    assert {"CPU", "CPU_REPACK"} <= set(_model(est))  # no mmap: a CPU buffer; repackable FFN weights repacked
