"""Accuracy and latency benchmarks: predicted vs llama-server's printed buffers, header-read and estimate speed.

The case list is shared with tests/test_accuracy_server.py. Printing tables is the job of
scripts/bench_accuracy.py; nothing here is timed inside the test suite.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

MiB = 1024 * 1024
SHAPE_ARGS = ["--no-repack", "--no-warmup", "--fit", "off"]

# (model, args): "gemma" is the real Gemma-3-270M Q4_K_M; other names are autoctx.catalog entries.
GEMMA_CASES: list[list[str]] = [
    ["-c", "8192"],  # llama-server defaults: np auto = 4 slots, unified KV
    ["-c", "4096", "-np", "1"],
    ["-c", "32768", "-np", "1", "-ctk", "q8_0", "-ctv", "q8_0"],
    ["-c", "16384", "-np", "2", "-ctk", "q4_0", "-ctv", "q4_0", "-fa", "on"],
    ["-c", "16384", "-np", "4", "-no-kvu"],  # one stream per slot, 4096 cells each
    ["-c", "8192", "-np", "2", "--swa-full"],
    ["-c", "4096", "-fa", "off", "-ctk", "q8_0"],  # transposed V, f32 masks, KQ materialised
    ["-c", "2048", "-ub", "128", "-b", "256"],
    ["-c", "4096", "--no-repack"],
    ["-c", "4096", "--load-mode", "none"],  # no mmap: a CPU buffer instead of CPU_Mapped
    ["-c", "65536", "-ub", "1024", "-np", "1", "-ctk", "q5_1", "-ctv", "iq4_nl"],
]
SHAPE_CASES: list[tuple[str, list[str]]] = [
    ("llama-3.1-8b", ["-c", "8192", "-np", "1"]),
    ("llama-3.1-8b", ["-c", "16384", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("llama-2-7b", ["-c", "4096", "-np", "2"]),  # MHA
    ("qwen2.5-7b", ["-c", "8192", "-np", "1", "-fa", "off"]),
    ("qwen3-8b", ["-c", "8192", "-ctk", "q8_0", "-ctv", "q4_0", "-np", "1"]),
    ("gemma-3-4b", ["-c", "16384", "-np", "1"]),  # iSWA, window 1024
    ("gemma-3-12b", ["-c", "32768", "-np", "1", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("phi-3-mini", ["-c", "4096", "-np", "1"]),  # fused QKV, MHA, its sliding window ignored by llama.cpp
    ("gemma-2-9b", ["-c", "8192", "-np", "2", "-no-kvu"]),
    ("qwen3-30b-a3b", ["-c", "8192", "-np", "1"]),  # MoE, 128 experts
    ("mixtral-8x7b", ["-c", "4096", "-np", "1"]),  # MoE on the llama architecture
    ("gpt-oss-20b", ["-c", "8192", "-np", "1"]),  # SWA 128 + sinks + MoE
    ("deepseek-v2-lite", ["-c", "8192", "-np", "1"]),  # MLA: K-only cache, 576 wide
    ("command-r7b", ["-c", "8192", "-np", "1"]),  # cohere2, SWA period 4
    ("mistral-7b", ["-c", "8192", "-np", "1"]),
    ("qwen2.5-32b", ["-c", "4096", "-np", "1"]),
    ("llama-3.1-70b", ["-c", "2048", "-np", "1"]),
]


def all_cases() -> list[tuple[str, list[str], list[str]]]:
    """(model, the case's own arguments, the full llama-server arguments)."""
    return ([("gemma", a, ["--no-warmup", *a]) for a in GEMMA_CASES]
            + [(n, a, [*SHAPE_ARGS, *a]) for n, a in SHAPE_CASES])


@dataclass
class CaseResult:
    model: str
    args: list[str]
    rows: list  # verify.Row
    seconds: float


def run_case(llama_server: str, model_path: str, label: str, args: list[str]) -> CaseResult:
    from .memory import estimate
    from .model import load_spec
    from .runtimes.llamacpp.args import parse_server_args
    from .runtimes.llamacpp.launch import measure_allocation
    from .runtimes.llamacpp.server import ServerError, last_lines
    from .verify import compare

    est = estimate(load_spec(model_path), parse_server_args(args).params)
    m = measure_allocation(llama_server, ["-m", model_path, *args], timeout=300)
    if not m.ready:
        raise ServerError(f"{label}: llama-server failed:\n{last_lines(m.log_text)}")
    return CaseResult(label, args, compare(est, m.log), m.seconds)


def median_seconds(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def process_seconds(argv: list[str], n: int = 5) -> float:
    """Median wall time of a whole process (start-up included)."""
    return median_seconds(lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                 check=False), n)


def latency_rows(model_path: str, fit_params: str | None, n: int = 5, reader_runs: int = 5) -> list[tuple[str, float]]:
    """Header read and estimate latency on one model: autoctx vs gguf.GGUFReader vs llama-fit-params."""
    from .gguf import read_gguf

    rows = [("autoctx.gguf.read_gguf (in process)", median_seconds(lambda: read_gguf(model_path), n))]
    rows.append(("autoctx estimate --json (whole process)",
                 process_seconds([sys.executable, "-m", "autoctx.cli", "estimate", model_path, "-c", "8192",
                                  "--json"], n)))
    rows.append(("autoctx plan --device cpu --free cpu=2GiB --json (whole process)",
                 process_seconds([sys.executable, "-m", "autoctx.cli", "plan", model_path, "--device", "cpu",
                                  "--free", "cpu=2GiB", "--json"], n)))
    rows.append(("autoctx --help (whole process)", process_seconds([sys.executable, "-m", "autoctx.cli", "--help"],
                                                                    n)))
    code = f"import gguf; gguf.GGUFReader({model_path!r})"
    rows.append(("gguf.GGUFReader (whole process)", process_seconds([sys.executable, "-c", code], reader_runs)))
    if fit_params:
        rows.append(("llama-fit-params -c 8192 -np 4 (whole process)",
                     process_seconds([fit_params, "-m", model_path, "-c", "8192", "-np", "4"], n)))
    return rows
