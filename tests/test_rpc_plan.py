"""Planning across llama.cpp RPC workers without starting any (issue 11, item 2): the budgets of `--rpc` devices (the
workers' reports, capped by --free, with per-device margins), llama.cpp's device order in the emitted arguments, the
network reasons, loopback workers sharing the CPU's RAM, and one-line errors. The real workers are in
tests/test_rpc_plan_server.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from autoctx.budgets import budgets_from, is_loopback
from autoctx.memory import Device
from autoctx.planner import Budget, PlanOptions, _Search, plan
from autoctx.runtimes.llamacpp.build import ListedDevice, rpc_failure
from autoctx.runtimes.llamacpp.runtime import plan_args

GiB = 1024**3
MiB = 1024**2
A, B, LOCAL = "10.0.0.2:50052", "10.0.0.3:50052", "127.0.0.1:50052"


def autoctx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, timeout=120)


def test_offline_budgets_rpc_first_with_their_devices_and_margins():
    """Every worker given as HOST:PORT=SIZE: none is asked, one device each, numbered as llama.cpp numbers them and
    placed before the local GPUs; a CPU worker's default margin is the CPU's (1 GiB or 5 %), a GPU worker's 1 GiB;
    --margin DEVICE=SIZE sets one device's (rpc<n>, HOST:PORT or a local name)."""
    b = budgets_from([f"{A}=40GiB", f"{B}=3GiB", "cuda0=2GiB", "cpu=16GiB"], "", ["cuda0=512MiB"], rpc=f"{A},{B}@cuda")
    assert b == [
        Budget("RPC0", 40 * GiB, 2 * GiB, dev=Device("RPC0", 40 * GiB, endpoint=A)),  # 5 % of a CPU worker's 40 GiB
        Budget("RPC1", 3 * GiB, GiB, dev=Device("RPC1", 3 * GiB, remote="CUDA", endpoint=B)),
        Budget("CUDA0", 2 * GiB, 512 * MiB),
        Budget("CPU", 16 * GiB, GiB),
    ]
    b = budgets_from([f"{A}=2GiB", f"{B}=2GiB"], "", ["256MiB", "rpc1=128MiB", f"{A}=64MiB"], rpc=f"{A},{B}")
    assert [(x.device, x.margin_bytes) for x in b[:2]] == [("RPC0", 64 * MiB), ("RPC1", 128 * MiB)]
    assert [x.margin_bytes for x in b[2:]] == [256 * MiB] * len(b[2:])  # the probed local devices


def test_asked_workers_are_capped_and_said(monkeypatch):
    """The workers' own reports (rpc_workers), each device capped by --free (HOST:PORT: each device of that worker;
    rpc<n>: that one), a cap above the report said and not used; a remote CPU worker (ggml reports all its RAM free)
    and a worker that looks like a GPU without a named backend are said once each; a CPU worker on loopback shares
    the CPU's budget; a worker's second device is RPC<1>[host:port] in llama.cpp's buffer names."""
    from autoctx.runtimes.llamacpp import build, launch

    listed = (ListedDevice("RPC0", A, 64 * GiB, 64 * GiB), ListedDevice("RPC1", B, 24 * GiB, 20 * GiB),
              ListedDevice("RPC2", B, 24 * GiB, 22 * GiB), ListedDevice("RPC3", LOCAL, 32 * GiB, 32 * GiB))
    asked = []
    monkeypatch.setattr(build, "rpc_workers", lambda binary, eps: asked.append((binary, eps)) or listed)
    monkeypatch.setattr(launch, "find_llama_server", lambda explicit=None: explicit or "llama-server")
    said: list[str] = []
    b = budgets_from([f"{B}=16GiB", "rpc3=40GiB", "cpu=16GiB"], "", None, warn=said.append,
                     rpc=f"{A},{B},{LOCAL}", llama_server="/opt/llama-server")
    assert asked == [("/opt/llama-server", [A, B, LOCAL])]
    assert b == [
        Budget("RPC0", 64 * GiB, int(3.2 * GiB), dev=Device("RPC0", 64 * GiB, endpoint=A)),
        Budget("RPC1", 16 * GiB, int(1.2 * GiB), dev=Device("RPC1", 16 * GiB, endpoint=B)),
        Budget("RPC2", 16 * GiB, int(1.2 * GiB), dev=Device("RPC2", 16 * GiB, endpoint=B, remote_index=1)),
        Budget("RPC3", 32 * GiB, int(1.6 * GiB), dev=Device("RPC3", 32 * GiB, endpoint=LOCAL), shares="CPU"),
        Budget("CPU", 16 * GiB, GiB),
    ]
    assert b[2].dev.buffer_name == f"RPC1[{B}]"
    assert said == [
        f"RPC0 ({A}) is its machine's CPU: ggml reports all of that machine's RAM free (64.00 GiB); cap it with "
        f"--free {A}=SIZE",
        f"RPC1 ({B}) reports 20.00 of 24.00 GiB free, which a CPU worker does not (ggml's CPU backend reports all "
        f"its RAM free): if it runs a GPU, name its backend (--rpc {B}@cuda) so that its buffers follow that "
        "backend's rules",
        f"RPC2 ({B}) reports 22.00 of 24.00 GiB free, which a CPU worker does not (ggml's CPU backend reports all "
        f"its RAM free): if it runs a GPU, name its backend (--rpc {B}@cuda) so that its buffers follow that "
        "backend's rules",
        f"--free RPC3: more than {LOCAL} reports free (32.00 GiB): its report is used",
    ]


def test_loopback():
    assert [is_loopback(e) for e in ("127.0.0.1:1", "127.3.4.5:1", "localhost:1", "[::1]:1", "10.0.0.2:1",
                                     "gpu-box:1")] == [True, True, True, True, False, False]


def test_plan_args_in_llamacpp_device_order_and_network_reasons(spec_of):
    """RPC devices first, then the local GPU (src/llama.cpp puts RPC servers at the front), -dev naming that order
    after --rpc, -ts in it, --fit off; the output layer on the last device (the local GPU); three boundaries cross
    the network, each said with the bytes a prompt batch sends (512 × n_embd 2048 × 4 B)."""
    spec = spec_of("llama-3.2-1b")
    b = budgets_from([f"{A}=2GiB", f"{B}=3GiB", "cuda0=2GiB", "cpu=16GiB"], "", None, rpc=f"{A},{B}@cuda")
    p = plan(spec, b)
    assert plan_args(p) == [
        "-m", spec.path, "--rpc", f"{A},{B}", "-dev", "RPC0,RPC1,CUDA0", "-c", "75008", "-np", "1", "-ctk", "q8_0",
        "-ctv", "q8_0", "-fa", "on", "-ngl", "17", "-b", "2048", "-ub", "512", "-no-kvu", "-ts", "4,9,4",
        "--cache-ram", "8192", "--ctx-checkpoints", "32", "--fit", "off"]
    assert p.estimate.layer_device == ["RPC0"] * 4 + ["RPC1"] * 9 + ["CUDA0"] * 3
    assert p.reasons[2:6] == [
        "all 16 layers + output on the devices",
        "layers per device (-ts 4,9,4): each device keeps the same room per layer for the KV cache after its weights",
        "output layer on CUDA0: llama.cpp gives it to the last device of the split (RPC devices come first in its "
        "device order, this machine's GPUs after them)",
        f"network: 3 layer boundaries cross it (CPU → RPC0[{A}] at block 0; RPC0[{A}] → RPC1[{B}] at block 4; "
        f"RPC1[{B}] → CUDA0 at block 13): each costs a network round trip per generated token, and each prompt "
        "batch sends 512 × 2048 × 4 B = 4.00 MiB of activations across it (ubatch × n_embd, f32)"]
    assert p.estimate.params.devices[1].rules.name == "CUDA"  # the @cuda worker's buffers follow CUDA's rules


def test_experts_in_ram_cross_the_network_twice_per_block(spec_of):
    """A MoE block on a worker whose experts stay in this machine's RAM (--n-cpu-moe) sends its activations there and
    back: two boundaries per such block, counted (and the list shortened)."""
    p = plan(spec_of("qwen3-30b-a3b"), budgets_from([f"{A}=8GiB", f"{B}=6GiB", "cpu=32GiB"], "", None,
                                                     rpc=f"{A},{B}"))
    assert (p.n_cpu_moe, p.n_gpu_layers, p.tensor_split) == (17, 49, (36.0, 13.0))
    net = next(r for r in p.reasons if r.startswith("network:"))
    assert net.startswith(f"network: 37 layer boundaries cross it (CPU → RPC0[{A}] at block 0; RPC0[{A}] → CPU at "
                          f"block 0's FFN; CPU → RPC0[{A}] at block 1; RPC0[{A}] → CPU at block 1's FFN; … 32 more; "
                          f"RPC1[{B}] → CPU for the logits)")  # 1 in, 2 × 17 blocks, RPC0 → RPC1, 1 out for the logits


def test_loopback_workers_share_the_cpu_ram(spec_of):
    """Workers on 127.0.0.1 are this machine's RAM: the CPU's buffers and theirs together stay within the CPU's budget
    (the context stops there: 256 tokens more would not fit), and the reasons say so. Counted per device only, the
    same budgets would promise 44288 tokens in RAM the machine does not have."""
    spec = spec_of("llama-3.2-1b")
    b = budgets_from(["127.0.0.1:50052=2GiB", "127.0.0.1:50053=2GiB", "cpu=3GiB"], "", None,
                     rpc="127.0.0.1:50052,127.0.0.1:50053")
    assert [x.shares for x in b] == ["CPU", "CPU", ""]
    opts = PlanOptions(repack=False)
    p = plan(spec, b, opts)
    est = p.estimate
    ram = sum(est.resident_bytes(d) for d in ("RPC0", "RPC1", "CPU")) + est.later_bytes("CPU")
    assert (p.num_ctx, ram, b[2].usable) == (29952, 2144941440, 2 * GiB)
    s = _Search(spec, b, opts)
    assert s.over(s.estimate(p.num_ctx + 256, ("q8_0", "q8_0"), 17)).keys() == {"CPU"}
    assert ("RPC0, RPC1 run on this machine (loopback): rpc-server reports this machine's RAM, so their buffers are "
            "counted in the CPU budget with the CPU's own (not twice)") in p.reasons
    assert "--cache-ram" in plan_args(p) and p.params.cache_ram_mib == 0  # no RAM left for a prompt cache
    assert plan(spec, [replace(x, shares="") for x in b], opts).num_ctx == 44288


def test_plan_cli_json_and_emit(spec_of):
    spec = spec_of("llama-3.2-1b")
    common = ["plan", spec.path, "--rpc", f"{A},{B}", "--free", f"{A}=2GiB", "--free", "10.0.0.3:50052=2GiB",
              "--free", "cpu=16GiB", "--margin", "rpc1=512MiB"]
    r = autoctx(*common, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["budget"] == [
        {"device": "RPC0", "free_bytes": 2 * GiB, "margin_bytes": GiB, "endpoint": A},
        {"device": "RPC1", "free_bytes": 2 * GiB, "margin_bytes": 512 * MiB, "endpoint": B},
        {"device": "CPU", "free_bytes": 16 * GiB, "margin_bytes": GiB}]
    assert d["llama_server_args"][2:8] == ["--rpc", f"{A},{B}", "-dev", "RPC0,RPC1", "-c", str(d["plan"]["num_ctx"])]
    assert {b["name"] for b in d["buffers"] if b["device"] == "RPC1"} == {f"RPC0[{B}]"}
    r = autoctx(*common, "--emit", "args")
    assert r.returncode == 0 and r.stdout.split() == d["llama_server_args"]


@pytest.mark.parametrize("args,message", [
    (["--free", "rpc0=1GiB"], "--free rpc0: an RPC device, but no --rpc HOST:PORT,... names the workers"),
    (["--free", f"{A}=1GiB"], f"--free {A}: an RPC device, but no --rpc HOST:PORT,... names the workers"),
    (["--rpc", A, "--free", "10.0.0.9:50052=1GiB"], f"--free 10.0.0.9:50052: not one of the --rpc workers ({A})"),
    (["--rpc", f"{A}@tpu"], f"--rpc {A}@tpu: unknown worker backend 'tpu' (one of cpu, cuda, rocm, musa, vulkan, mtl, "
                            "sycl)"),
    (["--rpc", f"{A},{A}"], f"--rpc names {A} twice"),
    (["--rpc", "10.0.0.2"], "--rpc: expected host:port for an RPC server, got '10.0.0.2'"),
    (["--rpc", A, "--margin", "1GiB", "--margin", "2GiB"], "--margin SIZE given twice (then '2GiB'): one SIZE for "
                                                          "every device, DEVICE=SIZE for one"),
    (["--rpc", A, "--margin", "rpc0=1GiB", "--margin", "RPC0=2GiB"], "--margin names RPC0 twice (one --margin "
                                                                    "DEVICE=SIZE per device)"),
    (["--rpc", A, "--device", "cpu"], "--device cpu plans for this machine's RAM only: not with --rpc workers"),
    (["--rpc", A, "--runtime", "ollama"], "--rpc is llama-server's: Ollama does not plan across RPC workers"),
    (["--rpc", A, "--free", f"{A}=2GiB", "--free", "rpc3=1GiB"], "--free RPC3: the workers have RPC0"),
    (["--rpc", A, "--free", f"{A}=2GiB", "--free", "cpu=8GiB", "--margin", "cuda3=1GiB"],
     "--margin CUDA3: no such device to plan for (CPU)"),
    (["--rpc", A, "--llama-server", "/nonexistent/llama-server"],
     "llama-server not found or not executable: /nonexistent/llama-server"),
])
def test_bad_rpc_flags_are_one_line(spec_of, args, message):
    r = autoctx("plan", spec_of("llama-3.2-1b").path, *args)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.splitlines() == [f"autoctx: error: {message}"]


def test_serve_wants_the_workers_itself(spec_of):
    r = autoctx("serve", spec_of("llama-3.2-1b").path, "--rpc", A, "--", "--rpc", B)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["autoctx: error: give the RPC workers to autoctx (serve --rpc HOST:PORT,...), "
                                     "not after --: the plan places layers on them"]


def test_rpc_failure_lines():
    """What llama-server's RPC client aborts with, as one line naming the worker (the mid-load death is in the server
    tests: it asks the workers again)."""
    assert rpc_failure("... Failed to connect to 127.0.0.1:9\n/path/ggml-rpc.cpp:547: GGML_ABORT", "x",
                       ["127.0.0.1:9"]) == ("RPC worker 127.0.0.1:9 does not answer (nothing listens there, or a "
                                            "firewall is in the way); llama-server could not load the model")
    assert rpc_failure("RPC server version mismatch: 6.1.0\nRPC handshake failed for 10.0.0.2:50052", "x", [A]) == (
        "RPC worker 10.0.0.2:50052 speaks RPC protocol 6.1.0, another than this llama-server's: run the same "
        "llama.cpp build on both sides; llama-server could not load the model")
    assert rpc_failure("load_tensors: failed to allocate buffer", "x", [A]) is None
