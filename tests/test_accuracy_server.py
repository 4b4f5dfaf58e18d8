"""Predictions against the real llama-server: every model and KV buffer equal to the MiB it prints (0.01),
the output buffer too, the compute buffer within 10 %.

The real Gemma-3-270M (iSWA, tied embeddings, 262k vocab) at several contexts, slot counts and KV types, and
shape-only GGUFs with the real hyperparameters and tensor shapes of larger models (loaded with --no-repack:
sparse zero data, nothing to repack).
"""

from __future__ import annotations

import pytest

from autoctx.bench import GEMMA_CASES, SHAPE_ARGS, SHAPE_CASES
from autoctx.memory import estimate
from autoctx.model import load_spec
from autoctx.runtimes.llamacpp.args import parse_server_args
from autoctx.runtimes.llamacpp.launch import measure_allocation
from autoctx.runtimes.llamacpp.server import last_lines

MiB = 1024 * 1024


def check_against_server(llama_server: str, model: str, args: list[str]) -> None:
    parsed = parse_server_args(args)
    est = estimate(load_spec(model), parsed.params)
    m = measure_allocation(llama_server, ["-m", model, *args], timeout=300)
    assert m.ready, last_lines(m.log_text, 30)
    log = m.log

    # model buffers: one printed line per buffer (CPU_Mapped, CPU_REPACK, CPU ...), in any order
    pred_model = sorted((b.name, round(b.bytes / MiB, 2)) for b in est.buffers if b.kind == "model")
    got_model = sorted((b.name, b.mib) for b in log.buffers if b.kind == "model")
    assert pred_model == got_model

    # KV buffers in creation order (non-SWA cache, then SWA cache), and the cell counts
    pred_kv = [round(b.bytes / MiB, 2) for b in est.buffers if b.kind == "kv"]
    got_kv = [b.mib for b in log.buffers if b.kind == "kv"]
    assert pred_kv == got_kv
    cells = [c.cells for c in log.kv_caches]
    assert cells == ([est.kv_cells, est.swa_cells] if est.swa_cells else [est.kv_cells])

    # output buffer (host) exactly
    assert [round(b.bytes / MiB, 2) for b in est.buffers if b.kind == "output"] == \
        [b.mib for b in log.buffers if b.kind == "output"]

    # the context llama.cpp settled on
    assert int(log.cparams["n_ctx"]) == est.n_ctx
    assert int(log.cparams["n_ctx_seq"]) == est.n_ctx_seq

    # compute buffer within 10 %
    got_compute = log.mib("compute", "CPU")
    pred_compute = est.kind_bytes("compute", "CPU") / MiB
    assert got_compute > 0
    assert abs(pred_compute - got_compute) <= 0.10 * got_compute, (pred_compute, got_compute)


@pytest.mark.server
@pytest.mark.parametrize("args", GEMMA_CASES, ids=[" ".join(a) for a in GEMMA_CASES])
def test_gemma_3_270m(llama_server, gemma_path, args):
    check_against_server(llama_server, gemma_path, ["--no-warmup", *args])


@pytest.mark.server
@pytest.mark.parametrize("name,args", SHAPE_CASES, ids=[f"{n} {' '.join(a)}" for n, a in SHAPE_CASES])
def test_shape_only(llama_server, shape_file, name, args):
    check_against_server(llama_server, shape_file(name), [*SHAPE_ARGS, *args])


# Architectures modelled for issue 13, each on the shape of its smallest published model (autoctx.catalog cites the
# config): KV, recurrent-state (RS) and output buffers exact, compute within 10 %.
NEW_ARCH_CASES: list[tuple[str, list[str]]] = [
    ("lfm2-350m", ["-c", "8192", "-np", "1"]),  # lfm2: 10 short-conv blocks (RS) + 6 attention blocks (KV)
    ("lfm2-350m", ["-c", "16384", "-np", "3", "-ctk", "q8_0", "-ctv", "q8_0"]),  # RS rows per slot
    ("lfm2-8b-a1b", ["-c", "8192", "-np", "2", "-no-kvu"]),  # lfm2moe: 2 dense blocks, then 32 experts
    # qwen35: 24 Gated DeltaNet blocks (RS) + 8 gated-attention blocks (KV) + the MTP block (block 32)
    ("qwen3.5-9b", ["-c", "8192", "-np", "1"]),
    ("qwen3.5-9b", ["-c", "16384", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0"]),
    # gemma4: 50 sliding-window layers (256-wide heads, 16 KV) + 10 full layers (512-wide, 4 KV, K = V)
    ("gemma-4-31b", ["-c", "8192", "-np", "1"]),
    ("gemma-4-31b", ["-c", "32768", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0"]),
    # llama4: chunked attention (8192) on 3 of every 4 layers, 16 experts + a shared expert on every layer
    ("llama-4-scout", ["-c", "16384", "-np", "1"]),
    ("llama-4-scout", ["-c", "32768", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("mistral-small-3.2-24b", ["-c", "16384", "-np", "2"]),  # mistral3: Mistral Small 3.x's text model
    # qwen35moe: 30 Gated DeltaNet + 10 attention blocks + MTP, 256 experts (8 of 512) + a gated shared expert;
    # its experts' down output (2048 wide) does not fit their freed gate/up block (2 × 512): the MoE peak
    ("qwen3.5-35b-a3b", ["-c", "16384", "-np", "2"]),
    ("qwen3.5-35b-a3b", ["-c", "32768", "-np", "1", "-ctk", "q8_0", "-ctv", "q8_0"]),
    # gemma4 MoE: a dense FFN beside 128 experts (8 of 704, fused gate_up) on every layer, 25 SWA + 5 full layers
    ("gemma-4-26b-a4b", ["-c", "16384", "-np", "1"]),
    ("gemma-4-26b-a4b", ["-c", "32768", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0"]),
]


@pytest.mark.server
@pytest.mark.parametrize("name,args", NEW_ARCH_CASES, ids=[f"{n} {' '.join(a)}" for n, a in NEW_ARCH_CASES])
def test_new_architectures(llama_server, shape_file, name, args):
    check_against_server(llama_server, shape_file(name), [*SHAPE_ARGS, *args])
