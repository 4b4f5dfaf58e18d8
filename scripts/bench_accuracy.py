#!/usr/bin/env python3
"""Print predicted vs actual buffers (per case, per kind) and header/estimate latency, as Markdown tables.

Usage: .venv/bin/python scripts/bench_accuracy.py [--cases all|gemma|shapes|gpu-logs|fit] [--no-latency]
       [--reader-runs N]
Runs the real llama-server (scripts/llama-server-path) on the real Gemma-3-270M and on shape-only GGUFs written
from the autoctx.catalog into a temporary folder, then prints the GPU-log table (scripts/bench_gpu_logs.py: public GPU
logs re-estimated, no GPU needed; `--cases gpu-logs` prints only that) and the side-by-side with llama.cpp's own fit
(scripts/bench_fit.py: llama-fit-params and autoctx plan on one device budget; `--cases fit` prints only that).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoctx.bench import all_cases, latency_rows, run_case  # noqa: E402
from autoctx.catalog import get_shape  # noqa: E402
from tests.shapes_writer import write_shape_gguf  # noqa: E402


def path_of(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def cell(rows, kind: str) -> str:
    r = [x for x in rows if x.kind == kind]
    if not r:
        return "-"
    pred = sum(x.predicted_mib for x in r)
    act = sum(x.actual_mib or 0 for x in r)
    mark = "" if all(x.ok for x in r) else " ✗"
    if kind == "compute":
        return f"{pred:,.2f} / {act:,.2f} ({100 * (pred - act) / act:+.1f}%){mark}"
    return f"{pred:,.2f} / {act:,.2f}{mark}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", choices=["all", "gemma", "shapes", "gpu-logs", "fit"], default="all")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--reader-runs", type=int, default=5, help="runs of gguf.GGUFReader (about 17 s each)")
    a = ap.parse_args()
    if a.cases == "gpu-logs":
        return gpu_log_table()
    if a.cases == "fit":
        return fit_table()

    server = path_of("llama-server-path")
    fit_params = path_of("llama-server-path", "--bin", "llama-fit-params")
    gemma = path_of("gemma-gguf-path")
    print(f"autoctx accuracy benchmark, {date.today()}, {platform.machine()} CPU, llama.cpp build from "
          f"{Path(server).parents[2].name}\n")
    print("| model | llama-server args | model MiB pred / actual | KV MiB pred / actual | output MiB | "
          "compute MiB pred / actual |")
    print("|---|---|---|---|---|---|")
    misses = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, shown, args in all_cases():
            if (a.cases == "gemma" and name != "gemma") or (a.cases == "shapes" and name == "gemma"):
                continue
            path = gemma if name == "gemma" else str(write_shape_gguf(get_shape(name), Path(tmp) / f"{name}.gguf"))
            label = "gemma-3-270m Q4_K_M (real)" if name == "gemma" else f"{name} (shape)"
            res = run_case(server, path, label, args)
            misses += sum(1 for r in res.rows if not r.ok)
            print(f"| {label} | `{' '.join(shown)}` | {cell(res.rows, 'model')} | {cell(res.rows, 'kv')} | "
                  f"{cell(res.rows, 'output')} | {cell(res.rows, 'compute')} |", flush=True)
            if name != "gemma":
                Path(path).unlink()
    print(f"\n{misses} buffer(s) outside tolerance (model/KV/output exact to 0.01 MiB, compute 10 %).")
    if not a.no_latency:
        print("\nLatency on gemma-3-270m (262,144-token vocabulary), median of 5 (GGUFReader: "
              f"{a.reader_runs}):\n")
        print("| what | seconds |\n|---|---|")
        for what, secs in latency_rows(gemma, fit_params, reader_runs=a.reader_runs):
            print(f"| {what} | {secs:.3f} |", flush=True)
    gpu_misses = gpu_log_table() if a.cases == "all" else 0
    fit_failed = fit_table() if a.cases == "all" else 0
    return 1 if misses or gpu_misses or fit_failed else 0


def gpu_log_table() -> int:
    """The GPU-log table (scripts/bench_gpu_logs.py); non-zero when a judged value misses without a named xfail."""
    print("\nGPU logs: public llama.cpp GPU logs (tests/data/gpu_logs/) re-estimated by autoctx:\n", flush=True)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu_logs.py")]).returncode


def fit_table() -> int:
    """The side-by-side with llama.cpp's own fit (scripts/bench_fit.py)."""
    print("\nllama.cpp's fit (llama-fit-params) and autoctx plan on the same device budget:\n", flush=True)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_fit.py")]).returncode


if __name__ == "__main__":
    sys.exit(main())
