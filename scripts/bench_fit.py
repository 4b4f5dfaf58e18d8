#!/usr/bin/env python3
"""Side by side with llama.cpp's own fit: what llama-fit-params and autoctx plan choose on the same device budget.

Usage: .venv/bin/python scripts/bench_fit.py [--cases NAME,...] [--real-up-to GIB]
The device is a real one: a ggml-rpc-server worker on loopback (RPC0; it runs on this machine's CPU, so its buffers
follow the CPU backend's rules), whose free memory llama.cpp reads. A "GPU of G GiB" is emulated on it the way both
tools can be told: llama-fit-params keeps --fit-target = free − (G − 1 GiB) free, autoctx plans for free − margin =
G − 1 GiB (llama.cpp's default 1 GiB margin). Both start from the trained context and keep at least 4096 tokens, one
slot. System RAM: llama.cpp's fit treats it as unlimited; autoctx gets 64 GiB, so RAM never decides here.

Each choice is then sized two ways: llama.cpp's own projection (llama-fit-params -fitp on, MiB on RPC0 = model +
context + compute) and autoctx's estimate of what llama-server allocates (model and KV exact against the real server;
the compute buffer calibrated within 10 %). llama-fit-params reserves logits for 512 outputs where llama-server
reserves one per slot (the notes' caveat), so its projection of any choice is larger than the server's by about
4·n_vocab·511 bytes, and its own choice leaves that much of the device unused. Where the device part is at most
--real-up-to GiB (default 6: the worker allocates it in this machine's RAM), the real llama-server loads the choice
and its RPC0 buffers are summed as printed. The last column is the bytes of weights each generated token reads from
CPU memory (planner.token_reads: dense weights whole, routed experts n_expert_used/n_expert of them): the speed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoctx.memory import Device, Params, estimate, tensor_devices  # noqa: E402
from autoctx.model import load_spec  # noqa: E402
from autoctx.planner import Budget, PlanOptions, plan, token_reads  # noqa: E402
from autoctx.runtimes.llamacpp.args import parse_server_args  # noqa: E402
from autoctx.runtimes.llamacpp.launch import measure_allocation  # noqa: E402
from autoctx.runtimes.llamacpp.server import free_port  # noqa: E402
from autoctx.catalog import get_shape  # noqa: E402
from autoctx.runtimes.llamacpp.runtime import plan_args  # noqa: E402
from tests.shapes_writer import write_shape_gguf  # noqa: E402

MiB = 1024**2
GiB = 1024**3
# (shape, emulated GPU GiB): the MoE case, three more MoE layouts, a dense model
CASES = [("qwen3-30b-a3b", 12), ("gpt-oss-20b", 8), ("deepseek-v2-lite", 6), ("mixtral-8x7b", 16),
         ("llama-3.1-8b", 6)]
# (shape, emulated GPU GiB per worker): two RPC workers on loopback as two devices, planned with `autoctx plan --rpc`'s
# own budgets (autoctx.budgets: the workers asked, each capped with --free, 1 GiB margins)
RPC_CASES = [("llama-3.1-8b", 3), ("qwen3-30b-a3b", 8), ("gpt-oss-20b", 6)]
# the flags of a plan that llama-fit-params takes too (it refuses server-only ones such as -no-kvu, --cache-ram)
_FIT_FLAGS = {"-c": 1, "-np": 1, "-ctk": 1, "-ctv": 1, "-fa": 1, "-ngl": 1, "-b": 1, "-ub": 1, "-ts": 1, "-ot": 1,
              "--cpu-moe": 0, "--n-cpu-moe": 1, "--n-cpu-ffn": 1, "--no-repack": 0}


def path_of(*args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "llama-server-path"), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def worker(binary: str, server: str) -> tuple[subprocess.Popen, str, int]:
    """One ggml-rpc-server on loopback, and the free memory llama.cpp reads from it (bytes)."""
    port = free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port), "-t", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    ep = f"127.0.0.1:{port}"
    for _ in range(100):
        out = subprocess.run([server, "--rpc", ep, "--list-devices"], capture_output=True, text=True).stdout
        m = re.search(r"RPC0: \S+ \((\d+) MiB, (\d+) MiB free\)", out)
        if m:
            return proc, ep, int(m[2]) * MiB
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("ggml-rpc-server did not answer")


def fit_args(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        n = _FIT_FLAGS.get(argv[i])
        if n is not None:
            out += argv[i:i + 1 + n]
        i += 1 + (n if n is not None else (1 if i + 1 < len(argv) and not argv[i + 1].startswith("-") else 0))
    return out


def projection(fit_params: str, model: str, ep: str, args: list[str]) -> int:
    """llama.cpp's own projection of RPC0 (model + context + compute, MiB) for these arguments."""
    out = subprocess.run([fit_params, "-m", model, "--rpc", ep, *args, "-fitp", "on"], capture_output=True,
                         text=True).stdout
    m = re.search(r"^RPC0 (\d+) (\d+) (\d+)", out, re.M)
    if not m:
        raise RuntimeError(f"llama-fit-params -fitp printed no RPC0 row for {args}")
    return sum(int(x) for x in m.groups())


def describe(spec, p: Params, device: Device | None) -> tuple[str, int, int, float]:
    """(choice in words, autoctx's estimate of RPC0 in MiB, CPU MiB read per token, % of all reads); `device`: RPC0
    (None: the devices `p` has)."""
    p = p if device is None else replace(p, devices=(device,))
    est = estimate(spec, p)
    cpu, total = token_reads(spec, est.params)
    flags = " ".join(f"{f} {v}".strip() for f, v in p.tensor_overrides)
    if len(flags) > 40:
        where = tensor_devices(spec, est.params, est.layer_device, est.output_device)
        blocks = sorted({li for t, li, d in zip(spec.tensors, spec.tensor_layer, where)
                         if d == "CPU" and 0 <= li and est.layer_device[li] != "CPU" and "_exps." in t.name})
        n = sum(len(v.split(",")) for f, v in p.tensor_overrides if f == "-ot")
        flags = f"-ot ({n} patterns: the experts of blocks {blocks[0]}-{blocks[-1]} on the CPU)"
    choice = f"-ngl {est.n_gpu_layers}" + (f" {flags}" if flags else "")
    return choice, est.device_bytes("RPC0") // MiB, cpu // MiB, 100 * cpu / total if total else 0.0


def fit_choice(fit_params: str, model: str, rpc: str, common: list[str], target: str):
    """llama-fit-params' own choice for these devices and -fitt targets: (its flags, their Params), or (None, None)
    when it finds none."""
    r = subprocess.run([fit_params, "-m", model, "--rpc", rpc, *common, "-fitt", target], capture_output=True,
                       text=True)
    lines = [x for x in r.stdout.splitlines() if x.startswith("-c ")]
    if r.returncode or not lines:
        return None, None
    chosen = shlex.split(lines[-1])
    return chosen, parse_server_args(["--rpc", rpc, *common, *chosen], base=Params(fit=False)).params


def both_tools(fit_params: str, spec, rpc: str, common: list[str], target: str, budgets, flag: str = "") -> list:
    """[(tool, its flags or None, their Params)]: llama-fit-params' choice for the -fitt targets, then autoctx's plan
    for the budgets (`flag`: how its row is named after `autoctx plan`)."""
    pl = plan(spec, budgets, PlanOptions(repack=False))
    return [("llama-fit-params", *fit_choice(fit_params, spec.path, rpc, common, target)),
            (f"autoctx plan{flag}", fit_args(plan_args(pl)[2:]), pl.params)]


def rpc_projection(fit_params: str, model: str, eps: list[str], args: list[str]) -> list[int]:
    """llama.cpp's own projection of RPC0 and RPC1 (model + context + compute, MiB each) for these arguments."""
    out = subprocess.run([fit_params, "-m", model, "--rpc", ",".join(eps), *args, "-fitp", "on"], capture_output=True,
                         text=True).stdout
    rows = {m[1]: sum(int(x) for x in m.groups()[1:]) for m in re.finditer(r"^(RPC\d) (\d+) (\d+) (\d+)", out, re.M)}
    if len(rows) != len(eps):
        raise RuntimeError(f"llama-fit-params -fitp printed no RPC rows for {args}")
    return [rows[f"RPC{k}"] for k in range(len(eps))]


def rpc_side_by_side(cases, server: str, fit_params: str, eps: list[str], free: int, real_up_to: float) -> None:
    """Two workers as two devices of G GiB each (G − 1 GiB usable): llama-fit-params with one --fit-target per
    device against `autoctx plan --rpc` (its budgets from the workers, capped at G GiB, 1 GiB margins; RAM 64 GiB,
    shared with the loopback workers), each choice sized per device as above."""
    from autoctx.budgets import budgets_from

    print(f"\nTwo devices: RPC0 and RPC1, ggml-rpc-server workers on this machine ({free // MiB} MiB free each as "
          "they report it); a GPU of G GiB each = G − 1 GiB usable per device for both tools (llama-fit-params "
          "-fitt free − usable per device; autoctx plan --rpc A,B --free A=G --free B=G --margin A=1GiB --margin "
          "B=1GiB).\n")
    print("| model | GPUs | tool | choice | context | KV | MiB RPC0 / RPC1, llama.cpp projection | autoctx estimate "
          "| real llama-server | weights read from RAM per token |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    common = ["-np", "1", "-b", "2048", "-ub", "512"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, gpu in cases:
            path = str(write_shape_gguf(get_shape(name), Path(tmp) / f"{name}.gguf"))
            spec = load_spec(path)
            usable = (gpu - 1) * GiB
            target = str((free - usable) // MiB)
            budgets = budgets_from([f"{ep}={gpu}GiB" for ep in eps] + ["cpu=64GiB"], "",
                                   [f"{ep}=1GiB" for ep in eps], rpc=",".join(eps), llama_server=server)
            rows = both_tools(fit_params, spec, ",".join(eps), common, f"{target},{target}", budgets, " --rpc")
            for tool, args, p in rows:
                if args is None:
                    print(f"| {name} | 2 × {gpu} GiB | {tool} | failed to fit | | | | | | |", flush=True)
                    continue
                est = estimate(spec, p)
                choice, _, cpu_mib, share = describe(spec, p, None)
                if p.tensor_split:
                    choice = choice.replace(f"-ngl {est.n_gpu_layers}", f"-ngl {est.n_gpu_layers} -ts "
                                            + ",".join(f"{x:g}" for x in p.tensor_split))
                proj = rpc_projection(fit_params, path, eps, fit_args(args))
                mib = [est.device_bytes(d) // MiB for d in ("RPC0", "RPC1")]
                kv = p.cache_type_k if p.cache_type_k == p.cache_type_v else f"{p.cache_type_k}/{p.cache_type_v}"

                def pair(xs) -> str:
                    return " / ".join(f"{x:,.2f}" if isinstance(x, float) else f"{x:,}" for x in xs) + \
                        ("" if all(x * MiB <= usable for x in xs) else " (over)")
                real = "-"
                if sum(mib) <= real_up_to * 1024:
                    m = measure_allocation(server, ["-m", path, "--rpc", ",".join(eps), *fit_args(args),
                                                    "--no-repack", "--no-warmup", "--fit", "off"], timeout=600)
                    real = pair([sum(b.mib for b in m.log.buffers if b.device == d) for d in ("RPC0", "RPC1")]) \
                        if m.ready else "failed"
                print(f"| {name} | 2 × {gpu} GiB | {tool} | `{choice}` | {p.n_ctx} | {kv} | {pair(proj)} | "
                      f"{pair(mib)} | {real} | {cpu_mib:,} MiB ({share:.1f} %) |", flush=True)
            Path(path).unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="", help="comma-separated shape names (default: all; none: no one-device "
                    "case)")
    ap.add_argument("--rpc-cases", default="", help="the two-worker cases' shape names (default: all; none: skip)")
    ap.add_argument("--real-up-to", type=float, default=6.0, help="load a choice in the real llama-server when "
                    "autoctx puts at most this many GiB on RPC0 (0: never)")
    a = ap.parse_args()
    cases = [c for c in CASES if not a.cases or c[0] in a.cases.split(",")]
    rpc_cases = [c for c in RPC_CASES if not a.rpc_cases or c[0] in a.rpc_cases.split(",")]
    server, fit_params = path_of(), path_of("--bin", "llama-fit-params")
    if not cases:
        return two_workers(rpc_cases, server, fit_params, a.real_up_to)
    proc, ep, free = worker(path_of("--bin", "ggml-rpc-server"), server)
    print(f"Device RPC0 (ggml-rpc-server on this machine's CPU, {free // MiB} MiB free); a GPU of G GiB = "
          "G − 1 GiB usable for both tools (llama-fit-params -fitt = free − usable). Sized by llama.cpp's projection "
          "(llama-fit-params -fitp on) and by autoctx's estimate of llama-server.\n")
    print("| model | GPU | tool | choice | context | KV | RPC0 MiB, llama.cpp projection | RPC0 MiB, autoctx "
          "estimate | RPC0 MiB, real llama-server | weights read from RAM per token |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, gpu in cases:
                path = str(write_shape_gguf(get_shape(name), Path(tmp) / f"{name}.gguf"))
                spec = load_spec(path)
                usable = (gpu - 1) * GiB
                device = Device("RPC0", free)
                common = ["-np", "1", "-b", "2048", "-ub", "512"]
                budgets = [Budget("RPC0", free, free - usable), Budget("CPU", 64 * GiB, GiB)]
                rows = both_tools(fit_params, spec, ep, common, str((free - usable) // MiB), budgets)
                for tool, args, p in rows:
                    if args is None:
                        print(f"| {name} | {gpu} GiB | {tool} | failed to fit | | | | | | |", flush=True)
                        continue
                    choice, est_mib, cpu_mib, share = describe(spec, p, device)
                    proj = projection(fit_params, path, ep, fit_args(args) if tool != "autoctx plan" else args)
                    kv = p.cache_type_k if p.cache_type_k == p.cache_type_v else f"{p.cache_type_k}/{p.cache_type_v}"
                    ok = "" if proj * MiB <= usable else " (over)"
                    real = "-"
                    if est_mib <= a.real_up_to * 1024:
                        m = measure_allocation(server, ["-m", path, "--rpc", ep, *fit_args(args), "--no-repack",
                                                        "--no-warmup", "--fit", "off"], timeout=600)
                        got = sum(b.mib for b in m.log.buffers if b.device == "RPC0")
                        real = f"{got:,.2f}" + ("" if got * MiB <= usable else " (over)") if m.ready else "failed"
                    print(f"| {name} | {gpu} GiB | {tool} | `{choice}` | {p.n_ctx} | {kv} | {proj:,}{ok} | "
                          f"{est_mib:,} | {real} | {cpu_mib:,} MiB ({share:.1f} %) |", flush=True)
                Path(path).unlink()
    finally:
        proc.terminate()
        proc.wait(10)
    print("\nBudget per case: usable = GPU − 1 GiB; '(over)': llama.cpp's projection exceeds it (its 512 output "
          "rows of logits; llama-server reserves 1 per slot).")
    return two_workers(rpc_cases, server, fit_params, a.real_up_to)


def two_workers(cases, server: str, fit_params: str, real_up_to: float) -> int:
    if not cases:
        return 0
    binary = path_of("--bin", "ggml-rpc-server")
    procs = []
    try:
        for _ in range(2):
            procs.append(worker(binary, server))
        rpc_side_by_side(cases, server, fit_params, [ep for _, ep, _ in procs], min(f for _, _, f in procs),
                         real_up_to)
    finally:
        for proc, _, _ in procs:
            proc.terminate()
            proc.wait(10)
    print("\nSame budget per device for both tools; '(over)': above G − 1 GiB on a device.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
