"""Plans proved on the real llama-server: `autoctx plan --device cpu --free cpu=SIZE` emits llama-server args; the
server started with exactly those args stays within free − margin, and the chosen context is at least 97 % of the
largest that would have fit, derived from the server's own printed KV bytes per cell."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoctx.runtimes.llamacpp.launch import measure_allocation
from autoctx.runtimes.llamacpp.server import last_lines

MiB = 1024**2

CASES = [
    # model, free RAM, margin (a small margin keeps the budget tight enough to matter on small models)
    ("gemma", "400MiB", "64MiB"),
    ("gemma", "300MiB", "16MiB"),
    ("llama-3.1-8b", "6GiB", "256MiB"),
    ("gemma-3-4b", "3GiB", "128MiB"),
    ("qwen3-30b-a3b", "19GiB", "256MiB"),
]


@pytest.mark.server
@pytest.mark.parametrize("model,free,margin", CASES, ids=[f"{m} {f}" for m, f, _ in CASES])
def test_plan_fits_and_is_near_maximal(llama_server, gemma_path, shape_file, model, free, margin):
    path = gemma_path if model == "gemma" else shape_file(model)
    extra = [] if model == "gemma" else ["--no-repack"]  # shape files: sparse data, nothing to repack
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", path, "--device", "cpu", "--free",
                        f"cpu={free}", "--margin", margin, "--json", *extra], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    args = d["llama_server_args"]
    assert args[:2] == ["-m", path] and args[-2:] == ["--fit", "off"]
    for flag in ("-c", "-np", "-ctk", "-ctv", "-fa", "-ngl", "-ub"):
        assert flag in args
    budget = d["budget"][0]
    usable = budget["free_bytes"] - budget["margin_bytes"]

    m = measure_allocation(llama_server, [*args, "--no-warmup"], timeout=300)
    assert m.ready, last_lines(m.log_text, 30)
    log = m.log
    # every buffer the server printed (model, KV, output, compute); CPU_REPACK holds tensors whose mapped pages are
    # read once and dropped, so the mapped range and the repacked copy are not both resident
    actual = sum(b.bytes for b in log.buffers if b.name != "CPU_REPACK")
    assert actual <= usable, (actual / MiB, usable / MiB)

    # the largest context that would have fit, from what the server printed: the full-attention cache grows by
    # its printed bytes per cell, the masks of the compute buffer by n_ubatch × 2 bytes per cell (f16, FA)
    full = log.kv_caches[0]  # the non-SWA cache (or the only one)
    per_cell = full.mib * MiB / full.cells + 2 * int(log.cparams["n_ubatch"])
    ctx = d["plan"]["num_ctx"]
    room = int((usable - actual) / per_cell)
    largest = min(ctx + room, json.loads(subprocess.run(
        [sys.executable, "-m", "autoctx.cli", "estimate", path, "--json"], capture_output=True, text=True
    ).stdout)["model"]["n_ctx_train"])
    assert ctx >= 0.97 * (largest // 256 * 256), (ctx, largest)
    assert full.type_k == d["plan"]["cache_type_k"] and full.type_v == d["plan"]["cache_type_v"]
