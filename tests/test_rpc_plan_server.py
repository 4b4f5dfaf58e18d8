"""`autoctx serve --rpc` against real workers (issue 11, items 3-4): two ggml-rpc-server processes on 127.0.0.1
(tests/conftest.py `rpc_endpoints`: ephemeral ports, stopped and checked for orphans by the fixture), their budgets
capped with --free so that the model must be split across them and this machine's CPU.

What it proves, per case: the plan's own argv (--rpc, -dev in llama.cpp's order, -ts, --fit off) loads; every buffer
llama-server printed on every device (RPC devices by their RPC0[host:port] names) is the prediction (weights, KV,
output exact; compute within 10 %); every device stays within its budget (free − margin), the CPU's RAM holding the
loopback workers' buffers too; 3 % more context would not have fit (the estimate at 1.03× the context exceeds an RPC
device's budget); the profile is keyed by the whole device set. Then: an allocation failure on a worker steps down and
relaunches, and a worker that is down, or dies while the model loads, is one line naming it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import replace

import psutil
import pytest

from autoctx.memory import estimate
from autoctx.model import load_spec
from autoctx.planner import Budget, PlanOptions, _Search
from autoctx.runtimes.llamacpp.args import parse_server_args
from autoctx.runtimes.llamacpp.build import rpc_workers

pytestmark = pytest.mark.server
MiB = 1024**2
SHAPE = ["--no-repack", "--no-warmup"]  # shape-only GGUFs: zeros, nothing to repack or warm up

# (id, model, autoctx flags (@0/@1: the two workers' HOST:PORT), llama-server arguments after --)
CASES = [
    # both workers capped at 700 MiB (rpc<n> and HOST:PORT spellings), 64 MiB margins: q8_0, 12544 tokens, every layer
    # on the workers, the tied output embedding's copy on RPC1 (the last device)
    ("llama-1b", "llama-3.2-1b", ["--free", "rpc0=700MiB", "--free", "@1=700MiB", "--margin", "rpc0=64MiB",
                                  "--margin", "@1=64MiB"], SHAPE),
    # tighter: 300 MiB workers and 1600 MiB of RAM for everything on this machine (the CPU's buffers and both
    # workers'): 18 of 24 blocks on the workers, the prompt cache sized from the RAM they leave
    ("qwen-0.5b-ram", "qwen2.5-0.5b", ["--free", "rpc0=300MiB", "--free", "rpc1=300MiB", "--free", "cpu=1600MiB",
                                       "--margin", "32MiB", "--margin", "cpu=256MiB"], SHAPE),
    # the real Gemma-3-270M (iSWA caches on two devices): 260 MiB workers, every block on RPC0, the tied output
    # embedding's copy alone on RPC1 (-ts 18,1); 40 MiB margins: RPC0's compute buffer is 0.75 MiB (0.6 %) over the
    # compute model here, which a margin has to cover (the model and KV buffers are exact, the compute ones not)
    ("gemma", "gemma", ["--free", "@0=260MiB", "--free", "@1=260MiB", "--margin", "40MiB"], ["--no-warmup"]),
]
CASE_IDS = [c[0] for c in CASES]


@pytest.fixture
def env(tmp_path, llama_server):
    e = dict(os.environ)
    e.update(AUTOCTX_LLAMA_SERVER=llama_server, AUTOCTX_DATA_DIR=str(tmp_path / "data"))
    return e


def autoctx(args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def model_path(model, gemma_path, shape_file) -> str:
    return gemma_path if model == "gemma" else shape_file(model)


def flags_for(flags, endpoints):
    return [a.replace("@0", endpoints[0]).replace("@1", endpoints[1]) for a in flags]


@pytest.fixture(scope="module")
def served(rpc_endpoints, llama_server, gemma_path, shape_file, tmp_path_factory):
    """served(case id) -> (the --json report, model path): `autoctx serve --rpc A,B ... --check --json` once."""
    done: dict[str, tuple] = {}

    def run(case_id: str):
        if case_id not in done:
            _, model, flags, user = CASES[CASE_IDS.index(case_id)]
            path = model_path(model, gemma_path, shape_file)
            env = dict(os.environ, AUTOCTX_LLAMA_SERVER=llama_server,
                       AUTOCTX_DATA_DIR=str(tmp_path_factory.mktemp("data")))
            r = autoctx(["serve", path, "--rpc", ",".join(rpc_endpoints), *flags_for(flags, rpc_endpoints),
                         "--check", "--json", "--", *user], env)
            assert r.returncode == 0, r.stderr
            done[case_id] = (json.loads(r.stdout), path, r.stderr)
        return done[case_id]

    return run


def budgets_of(report) -> list[Budget]:
    return [Budget(b["device"], b["free_bytes"], b["margin_bytes"], shares=b.get("shares", ""))
            for b in report["budget"]]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_plan_argv_loads_and_every_buffer_is_predicted(served, rpc_endpoints, case_id):
    d, path, stderr = served(case_id)
    assert stderr == "" and d["flags"] == [] and d["attempts"] == [
        f"attempt 1: loaded num_ctx {d['plan']['num_ctx']} KV {d['plan']['cache_type_k']}/{d['plan']['cache_type_v']}"]
    ctx, ngl = d["plan"]["num_ctx"], d["plan"]["n_gpu_layers"]
    assert d["argv"][:12] == ["-m", path, "--rpc", ",".join(rpc_endpoints), "-dev", "RPC0,RPC1", "-c", str(ctx),
                              "-np", "1", "-ctk", d["plan"]["cache_type_k"]]
    assert d["argv"][d["argv"].index("-ngl") + 1] == str(ngl)
    ts = [int(x) for x in d["argv"][d["argv"].index("-ts") + 1].split(",")]  # whole layers per device, in order
    assert len(ts) == 2 and sum(ts) == ngl and min(ts) > 0, ts
    assert d["argv"][d["argv"].index("--fit") + 1] == "off"
    rows = {(r["device"], r["kind"]): r for r in d["comparison"]}
    assert {dev for dev, _ in rows} == {"RPC0", "RPC1", "CPU"}
    for (dev, kind), r in rows.items():
        if kind in ("model", "kv", "output"):
            assert r["predicted_mib"] == r["actual_mib"], (dev, kind)
        assert r["ok"], (dev, kind, r)
    assert rows[("RPC0", "model")]["actual_mib"] > 0 and rows[("RPC1", "model")]["actual_mib"] > 0  # split


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_every_device_within_its_budget(served, case_id):
    """What llama-server printed per device is within free − margin; the CPU's RAM holds the loopback workers'
    buffers too; each worker alone could not have held the workers' weights (the model had to be split)."""
    d, _, _ = served(case_id)
    budgets = budgets_of(d)
    printed: dict[str, float] = {}
    for r in d["comparison"]:
        printed[r["device"]] = printed.get(r["device"], 0.0) + (r["actual_mib"] or 0.0)
    for b in budgets:
        shared = sum(printed.get(x.device, 0.0) for x in budgets if x.shares == b.device)
        assert (printed.get(b.device, 0.0) + shared) * MiB <= b.usable, (b, printed)
    weights = sum(r["actual_mib"] for r in d["comparison"] if r["kind"] == "model" and r["device"] != "CPU")
    assert all(weights * MiB > b.usable for b in budgets if b.device != "CPU")
    assert [b.shares for b in budgets] == ["CPU", "CPU", ""]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_three_percent_more_context_would_not_fit(served, case_id):
    """The plan's argv estimated again: within every budget at its context, over an RPC device's at 1.03×."""
    d, path, _ = served(case_id)
    spec = load_spec(path)
    p = parse_server_args(d["argv"]).params
    s = _Search(spec, budgets_of(d), PlanOptions())
    assert s.over(estimate(spec, p)) == {}
    more = math.ceil(d["plan"]["num_ctx"] * 1.03)
    over = s.over(estimate(spec, replace(p, n_ctx=more)))
    assert over.keys() & {"RPC0", "RPC1"}, over


def test_reasons_and_profile_key(served, rpc_endpoints, llama_server):
    d, _, _ = served("llama-1b")
    a, b = rpc_endpoints
    assert d["plan"]["num_ctx"] == 12544 and (d["plan"]["cache_type_k"], d["plan"]["n_gpu_layers"]) == ("q8_0", 17)
    assert d["reasons"][4:7] == [
        f"output layer on RPC1[{b}]: llama.cpp gives it to the last device of the split (RPC devices come first in its "
        "device order, this machine's GPUs after them)",
        f"network: 3 layer boundaries cross it (CPU → RPC0[{a}] at block 0; RPC0[{a}] → RPC1[{b}] at block 10; "
        f"RPC1[{b}] → CPU for the logits): each costs a network round trip per generated token, and each prompt "
        "batch sends 512 × 2048 × 4 B = 4.00 MiB of activations across it (ubatch × n_embd, f32)",
        "RPC0, RPC1 run on this machine (loopback): rpc-server reports this machine's RAM, so their buffers are "
        "counted in the CPU budget with the CPU's own (not twice)"]
    total = {w.description: w.total_bytes for w in rpc_workers(llama_server, rpc_endpoints)}
    key = tomllib.loads(open(d["profile"]).read())["key"]["devices"]
    assert key.startswith(f"RPC0 RPC worker {a} CPU {total[a] / 1024**3:.1f}GiB; RPC1 RPC worker {b} CPU "
                          f"{total[b] / 1024**3:.1f}GiB; CPU ")


def test_allocation_failure_on_a_worker_steps_down(rpc_endpoints, shape_file, llama_server):
    """The first launch asks for 4M tokens of KV (~30 GiB per worker, more than this machine has): a worker cannot
    allocate its share and llama-server names its buffer; autoctx steps down to ¾ of the plan's context and the second
    launch loads."""
    from autoctx.budgets import budgets_from
    from autoctx.probe.cpu import host_repack_rules
    from autoctx.runtimes.llamacpp.build import read_build
    from autoctx.loop import serve_llamacpp

    from .launchers import first_launch_with

    _, model, flags, user = CASES[0]
    given = flags_for(flags, rpc_endpoints)
    free = [v for f, v in zip(given, given[1:]) if f == "--free"]
    margin = [v for f, v in zip(given, given[1:]) if f == "--margin"]
    build = read_build(llama_server)
    budgets = budgets_from(free, "", margin, listed=build.devices, rpc=",".join(rpc_endpoints),
                           llama_server=llama_server)
    opts = PlanOptions(min_ctx=4096, cpu_repack=host_repack_rules())
    res = serve_llamacpp(load_spec(shape_file(model)), budgets, opts, user, llama_server, build=build,
                         say=lambda m: None, launch=first_launch_with("-c", "4000000"))
    res.server.close()
    d = res.report()
    assert d["attempts"][0].startswith("attempt 1: llama-server ran out of memory loading num_ctx 12544 KV q8_0/q8_0 (")
    # llama.cpp allocates the KV buffers in the order of their buffer types' addresses: either worker may say it first
    assert [ep for ep in rpc_endpoints if f"failed to allocate RPC0[{ep}] buffer of size" in d["attempts"][0]]
    assert d["attempts"][1:] == ["attempt 2: loaded num_ctx 9216 KV q8_0/q8_0"]  # 12544 × ¾, a multiple of 256
    assert d["flags"] == [] and all(c["ok"] for c in d["comparison"])


def test_a_worker_that_is_down_is_one_line(rpc_endpoints, rpc_worker, shape_file, env):
    proc, dead = rpc_worker()
    proc.kill()
    proc.wait(10)
    for cmd in ("plan", "serve"):
        r = autoctx([cmd, shape_file("llama-3.2-1b"), "--rpc", f"{rpc_endpoints[0]},{dead}", "--check"][:-1 if cmd ==
                    "plan" else None], env)
        assert r.returncode == 1
        assert r.stderr.splitlines() == [f"autoctx: error: RPC worker {dead} does not answer (nothing listens there, "
                                         "or a firewall is in the way)"]


def test_a_worker_that_dies_while_loading_is_one_line(rpc_endpoints, rpc_worker, shape_file, env):
    """The second worker is killed while llama-server sends it the weights (once it holds 64 MiB): llama.cpp aborts
    without naming it; autoctx asks the workers again and names the dead one."""
    proc, dying = rpc_worker()
    worker = psutil.Process(proc.pid)
    cli = subprocess.Popen([sys.executable, "-m", "autoctx.cli", "serve", shape_file("llama-3.2-1b"), "--rpc",
                            f"{rpc_endpoints[0]},{dying}", "--free", "rpc0=700MiB", "--free", "rpc1=700MiB",
                            "--margin", "64MiB", "--check", "--no-profile", "--", *SHAPE], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and cli.poll() is None:
            if worker.memory_info().rss > 64 * MiB:  # the weights it is sent
                proc.kill()
                break
            time.sleep(0.005)
        out, err = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert proc.poll() is not None and cli.returncode == 1
    assert err.splitlines() == [f"autoctx: error: RPC worker {dying} stopped answering while llama-server loaded the "
                                "model (llama.cpp: Remote RPC server crashed or returned malformed response)"]
