"""A real multi-device llama.cpp on this CPU machine: two ggml-rpc-server workers on loopback, the real llama-server
splitting a model across them (RPC0, RPC1) and the local CPU, and autoctx predicting every buffer it prints.

The workers are the pinned build's ggml-rpc-server (scripts/llama-server-path --bin ggml-rpc-server), bound to
127.0.0.1 on ephemeral ports, one thread each, stopped when the module is done (tests/conftest.py `rpc_endpoints`,
tests/rpc_workers.py). Each worker exposes its CPU, so an
RPC device follows the CPU backend's buffer rules (alignment 32, no quantized-row padding) while the host side (the
CPU's weights, the output buffer, the host compute buffer) is the local CPU's, and neither device lends a host
buffer type, so the CPU's weights may still be repacked. What these runs prove, none of it CUDA-specific:
layers split by -ts and by the devices' free memory, -ngl counting the output layer first, the output layer's device,
the tied embedding copied onto the output device, KV (and SWA KV) per device, -nkvo, quantized KV, no mmap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from autoctx.memory import CPU, estimate, pipeline_parallel
from tests.rpc_workers import load_on_workers, predicted, printed

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
SHAPE = ["--no-repack", "--no-warmup"]  # shape-only GGUFs: zeros, nothing to repack or warm up

# (id, model, llama-server args after --rpc). Small models and contexts: each worker allocates the weights it is sent.
CASES = [
    # every layer offloaded, no -ts: split by the workers' free memory; iSWA KV on both; the tied embedding's copy on
    # RPC1 (the output device) while the CPU keeps the input copy mapped
    ("gemma-free-split", "gemma", ["--no-warmup", "-c", "4096", "-np", "1"]),
    # -ngl 10: the output layer + the last 9 blocks on the RPC devices split 1:2, 9 blocks on the CPU; the CPU's
    # weights are repacked (RPC devices have no host buffer type), KV on three devices, 2 slots
    ("gemma-ngl10-ts", "gemma", ["--no-warmup", "-c", "4096", "-np", "2", "-ngl", "10", "-ts", "1,2"]),
    # quantized weights (Q4_K_M's policy) and q8_0 KV whose rows (896, 128) are no multiple of 512: the RPC client
    # asks the CPU worker for their size (no padding, unlike CUDA); no mmap: the CPU's weights in a plain CPU buffer
    ("qwen-ngl13-ts-q8kv-nommap", "qwen2.5-0.5b", [*SHAPE, "-c", "2048", "-np", "1", "-ngl", "13", "-ts", "3,1",
                                                   "-ctk", "q8_0", "-ctv", "q8_0", "--load-mode", "none"]),
    # -ngl 1 is the output layer alone; -ts 0,1 puts it on RPC1; RPC0 gets nothing
    ("qwen-ngl1-output-only", "qwen2.5-0.5b", [*SHAPE, "-c", "2048", "-np", "1", "-ngl", "1", "-ts", "0,1"]),
    # -nkvo: every layer on the RPC devices, their KV on the CPU; 2 slots, separate streams
    ("llama-nkvo-np2", "llama-3.2-1b", [*SHAPE, "-c", "2048", "-np", "2", "-ts", "1,1", "-nkvo"]),
    # compute-buffer cases (every layer on 2 devices, KV offloaded: pipeline parallelism, inputs in 4 copies):
    # 4 slots (4 streams), a quantized cache (its rotation inputs), flash attention off (f32 masks, the KQ peak, the
    # transposed V's index input), 3 slots with a 256-token ubatch (the reserve rounds it up to 258 = 3 × 86)
    ("qwen-pp-np4", "qwen2.5-0.5b", [*SHAPE, "-c", "2048", "-np", "4"]),
    ("qwen-pp-q8kv", "qwen2.5-0.5b", [*SHAPE, "-c", "2048", "-np", "1", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("llama-pp-faoff", "llama-3.2-1b", [*SHAPE, "-c", "2048", "-np", "1", "-fa", "off"]),
    ("gemma-pp-np3-ub256", "gemma", ["--no-warmup", "-c", "8192", "-np", "3", "-ub", "256"]),
    # -sm none: one device (the main GPU, RPC0) holds everything, no pipeline parallelism
    ("llama-sm-none", "llama-3.2-1b", [*SHAPE, "-c", "2048", "-np", "1", "-sm", "none"]),
    # partial offload with flash attention off: 8 blocks run on the CPU (its live set in the host buffer)
    ("llama-ngl8-faoff", "llama-3.2-1b", [*SHAPE, "-c", "2048", "-np", "1", "-ngl", "8", "-fa", "off"]),
    # tensor overrides (no pipeline parallelism then): FFN weights of device blocks on the CPU, whose matmuls run
    # there (RPC devices offload no ops): three blocks by -ot, every block by --n-cpu-ffn
    ("llama-ot-ffn", "llama-3.2-1b", [*SHAPE, "-c", "2048", "-np", "1", "-ot",
                                      r"blk\.1[0-2]\.ffn_(up|gate|down)=CPU"]),
    ("qwen-ncpuffn", "qwen2.5-0.5b", [*SHAPE, "-c", "2048", "-np", "1", "--n-cpu-ffn", "24"]),
    # -ngl 0 beside two devices that offload no ops: the CPU runs the whole graph (the CPU closed form), the devices
    # reserve no compute buffer
    ("qwen-ngl0", "qwen2.5-0.5b", [*SHAPE, "-c", "2048", "-np", "1", "-ngl", "0"]),
]
CASE_IDS = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def rpc_run(rpc_endpoints, llama_server, gemma_path, shape_file):
    """rpc_run(case id) -> (Estimate, Measurement, argv): each case loaded once per module."""
    done: dict[str, tuple] = {}

    def run(case_id: str):
        if case_id not in done:
            _, model, args = CASES[CASE_IDS.index(case_id)]
            path = gemma_path if model == "gemma" else shape_file(model)
            # with -sm none only the main device is in the log's device list
            done[case_id] = (*load_on_workers(llama_server, path, rpc_endpoints, args, timeout=300,
                                              every_device_used=False), path)
        return done[case_id]

    return run


@pytest.mark.server
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_rpc_buffers_exact(rpc_run, rpc_endpoints, case_id):
    """Every model, KV and output buffer llama-server prints, by device and buffer name, to the 0.01 MiB it prints;
    the devices it used, the layers it offloaded and the cache sizes it chose."""
    est, m, _, _ = rpc_run(case_id)
    log = m.log
    used = [("RPC0", rpc_endpoints[0]), ("RPC1", rpc_endpoints[1])]
    if "none" in est.params.split_mode:  # -sm none: the main GPU (-mg 0) alone
        used = used[:1]
    assert [(d.name, d.description) for d in log.devices_used] == used
    assert log.offloaded == (est.n_gpu_layers, est.spec.n_layer + 1)
    assert predicted(est, "model") == printed(m, "model")
    assert predicted(est, "kv") == printed(m, "kv")
    assert predicted(est, "output") == printed(m, "output")
    assert [c.cells for c in log.kv_caches] == ([est.kv_cells, est.swa_cells] if est.swa_cells else [est.kv_cells])
    assert int(log.cparams["n_ctx"]) == est.n_ctx


def _split(est) -> tuple[list[str], str]:
    return est.layer_device, est.output_device


@pytest.mark.server
def test_rpc_placement_rules(rpc_run):
    """The placements the exact buffers above come from, spelled out (llama-model.cpp load_tensors)."""
    est, m, _, _ = rpc_run("gemma-free-split")
    # 18 blocks + output = 19 offloaded layers split by free memory, equal on one host: il/19 < 0.5 -> RPC0
    free = [d.free_bytes for d in m.log.devices_used]
    assert abs(free[0] - free[1]) < 0.05 * free[0]  # two workers on one machine report about the same free memory
    assert _split(est) == (["RPC0"] * 10 + ["RPC1"] * 8, "RPC1")
    emb = next(t for t in est.spec.tensors if t.name == "token_embd.weight")
    rpc1 = next(b for b in est.buffers if b.kind == "model" and b.device == "RPC1")
    assert rpc1.bytes > emb.nbytes  # the tied embedding's copy sits on the output device...
    assert next(b for b in est.buffers if b.name == "CPU_Mapped").bytes >= emb.nbytes  # ...and the CPU keeps its own

    est, m, _, _ = rpc_run("gemma-ngl10-ts")
    # -ngl 10: output first, then the last 9 blocks; -ts 1,2 over 10 layers: (il-9)/10 < 1/3 -> RPC0
    assert _split(est) == (["CPU"] * 9 + ["RPC0"] * 4 + ["RPC1"] * 5, "RPC1")
    assert {b.name for b in est.buffers if b.kind == "model" and b.device == "CPU"} == {"CPU_Mapped", "CPU_REPACK"}
    assert {b.device for b in est.buffers if b.kind == "kv"} == {"CPU", "RPC0", "RPC1"}

    est, m, _, _ = rpc_run("qwen-ngl13-ts-q8kv-nommap")
    assert _split(est) == (["CPU"] * 12 + ["RPC0"] * 10 + ["RPC1"] * 2, "RPC1")
    assert {b.name for b in est.buffers if b.kind == "model" and b.device == "CPU"} == {"CPU"}  # no mmap

    est, m, _, _ = rpc_run("qwen-ngl1-output-only")
    assert _split(est) == (["CPU"] * 24, "RPC1")
    assert not [b for b in m.log.buffers if b.device == "RPC0" and b.kind in ("model", "kv")]

    est, m, _, _ = rpc_run("llama-nkvo-np2")
    assert _split(est) == (["RPC0"] * 9 + ["RPC1"] * 7, "RPC1")  # 17 layers, 1:1: il/17 < 0.5 -> RPC0
    assert {b.device for b in est.buffers if b.kind == "kv"} == {"CPU"}


@pytest.mark.server
def test_rpc_sizes_follow_the_worker_backend(rpc_run):
    """RPC0 holds 10 blocks of quantized weights (q4_K/q5_0/q6_K/q8_0, Q4_K_M's policy) and q8_0 KV with rows of
    896 and 128 elements: CUDA's rules (a CUDA worker: 128-byte alignment, quantized rows padded to 512) would make
    its buffers 97.13 and 5.32 MiB; the CPU workers allocated the CPU rules' 97.12 and 5.31 MiB. The sizes are the
    worker backend's, not the client's."""
    est, m, _, _ = rpc_run("qwen-ngl13-ts-q8kv-nommap")
    p = est.params
    cuda = estimate(est.spec, replace(p, devices=tuple(replace(d, remote="CUDA") for d in p.devices)))

    def rpc0(buffers, kind):
        return [round(b.bytes / MiB, 2) for b in buffers if b.device == "RPC0" and b.kind == kind]

    printed = {k: [b.mib for b in m.log.buffers if b.device == "RPC0" and b.kind == k] for k in ("model", "kv")}
    assert printed == {"model": [97.12], "kv": [5.31]} == {k: rpc0(est.buffers, k) for k in printed}
    assert {k: rpc0(cuda.buffers, k) for k in printed} == {"model": [97.13], "kv": [5.32]}


@pytest.mark.server
def test_rpc_estimate_cli_names_rpc_devices(rpc_run, rpc_endpoints):
    """`autoctx estimate --devices` with the RPC buffer names llama-server printed: the same exact buffers."""
    _, m, argv, path = rpc_run("qwen-ngl13-ts-q8kv-nommap")
    args = [a for a in argv if a not in ("--rpc", ",".join(rpc_endpoints))]
    devices = ",".join(f"RPC0[{ep}]" for ep in rpc_endpoints)
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "estimate", path, *args, "--devices", devices, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    got = sorted((b["device"], b["name"], round(b["bytes"] / MiB, 2)) for b in d["buffers"]
                 if b["kind"] in ("model", "kv", "output"))
    assert got == sorted((b.device, b.name, b.mib) for b in m.log.buffers if b.kind in ("model", "kv", "output"))
    assert "RPC worker assumed to run its CPU" in r.stderr


# Compute buffers per device (memory.device_compute_buffers): the host buffer (the CPU backend) is exact when the CPU
# runs no block (graph inputs × copies + the get_rows outputs a device copies); a device's buffer (its split inputs ×
# copies + the closed-form activation peak) and a host buffer holding CPU blocks within 10 %.
_NO_COMPUTE = {("qwen-ngl1-output-only", "RPC0"), ("llama-sm-none", "RPC1"),  # these devices run nothing
               ("qwen-ngl0", "RPC0"), ("qwen-ngl0", "RPC1")}
COMPUTE_CASES = [(c, d) for c in CASE_IDS for d in ("RPC0", "RPC1", "CPU") if (c, d) not in _NO_COMPUTE]


@pytest.mark.server
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_rpc_compute_buffer_devices(rpc_run, case_id):
    """The devices that print a compute buffer are the ones predicted to (RPC0 holds nothing with -ngl 1 -ts 0,1)."""
    est, m, _, _ = rpc_run(case_id)
    assert sorted(b.device for b in est.buffers if b.kind == "compute") == \
        sorted(b.device for b in m.log.buffers if b.kind == "compute")


@pytest.mark.server
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_rpc_pipeline_parallelism(rpc_run, case_id):
    """llama.cpp turns pipeline parallelism on (4 copies of every input) exactly where memory.pipeline_parallel says:
    more than one device, every layer offloaded, layer split, KV offloaded, no tensor overrides."""
    est, m, _, _ = rpc_run(case_id)
    pp = pipeline_parallel(est.spec, est.params, est.n_gpu_layers)
    assert ("pipeline parallelism enabled" in m.log_text) == pp
    assert f"sched copies = {4 if pp else 1}" in m.log_text


@pytest.mark.server
@pytest.mark.parametrize("case_id,device", COMPUTE_CASES, ids=[f"{c}-{d}" for c, d in COMPUTE_CASES])
def test_rpc_compute_buffer(rpc_run, case_id, device):
    est, m, _, _ = rpc_run(case_id)
    got = m.log.mib("compute", device)
    pred = est.kind_bytes("compute", device) / MiB
    assert got > 0
    if device == "CPU" and CPU not in est.layer_device:
        assert round(pred, 2) == got  # graph inputs and get_rows outputs only: exact
    else:
        assert abs(pred - got) <= 0.10 * got, (pred, got)
