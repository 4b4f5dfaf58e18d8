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
from tests.shapes_writer import write_shape_gguf  # noqa: E402

MiB = 1024**2
GiB = 1024**3
# (shape, emulated GPU GiB): the MoE case, three more MoE layouts, a dense model
CASES = [("qwen3-30b-a3b", 12), ("gpt-oss-20b", 8), ("deepseek-v2-lite", 6), ("mixtral-8x7b", 16),
         ("llama-3.1-8b", 6)]
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


def describe(spec, p: Params, device: Device) -> tuple[str, int, int, float]:
    """(choice in words, autoctx's estimate of RPC0 in MiB, CPU MiB read per token, % of all reads)."""
    p = replace(p, devices=(device,))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="", help="comma-separated shape names (default: all)")
    ap.add_argument("--real-up-to", type=float, default=6.0, help="load a choice in the real llama-server when "
                    "autoctx puts at most this many GiB on RPC0 (0: never)")
    a = ap.parse_args()
    cases = [c for c in CASES if not a.cases or c[0] in a.cases.split(",")]
    server, fit_params = path_of(), path_of("--bin", "llama-fit-params")
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
                r = subprocess.run([fit_params, "-m", path, "--rpc", ep, *common, "-fitt",
                                    str((free - usable) // MiB)], capture_output=True, text=True)
                lines = [x for x in r.stdout.splitlines() if x.startswith("-c ")]
                rows = []
                if r.returncode == 0 and lines:
                    chosen = shlex.split(lines[-1])
                    p = parse_server_args([*common, *chosen], base=Params(fit=False)).params
                    rows.append(("llama-fit-params", chosen, p))
                else:
                    rows.append(("llama-fit-params", None, None))
                budgets = [Budget("RPC0", free, free - usable), Budget("CPU", 64 * GiB, GiB)]
                pl = plan(spec, budgets, PlanOptions(repack=False))
                rows.append(("autoctx plan", fit_args(pl.llama_server_args()[2:]), pl.params))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
