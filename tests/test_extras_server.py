"""The files beside the model against the real pinned llama-server (CPU): every buffer it prints equals the prediction
(weights and KV to the 0.01 MiB it prints, compute within 10 %), per llama_context.

Shape-only GGUFs (tests/shapes_writer.py of autoctx.catalog entries, tests/extra_shapes.py), real hyperparameters and
tensor shapes:
- a vision projector: Gemma-3-4B-it's mmproj (SigLIP-so400m + the Gemma 3 projector, google/gemma-3-4b-it
  config.json vision_config) with the Gemma-3-4B text model;
- a draft model: Qwen2.5-0.5B-Instruct drafting for Qwen2.5-7B-Instruct (the same Qwen2.5 vocabulary; HF configs
  Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-7B-Instruct), --spec-type draft-simple, a q8_0 draft cache, 2 slots;
- a LoRA adapter: rank 16 on attn_q/attn_v of Qwen2.5-0.5B (as convert_lora_to_gguf.py writes a PEFT adapter).
The projector run keeps the warm-up: with --no-warmup, clip.cpp reserves no compute buffer at load (the first image
does), which the estimate then counts after /health instead.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.extra_shapes import gemma3_mmproj, lora_adapter, write_header_gguf
from autoctx.extras import load_extras
from autoctx.memory import estimate
from autoctx.model import load_spec
from autoctx.runtimes.llamacpp.args import parse_server_args
from autoctx.runtimes.llamacpp.logparse import CLIP_CONTEXT
from autoctx.runtimes.llamacpp.launch import measure_allocation
from autoctx.runtimes.llamacpp.server import last_lines
from autoctx.catalog import get_shape
from autoctx.verify import compare

MiB = 1024 * 1024
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def beside(tmp_path_factory, shape_file):
    folder = tmp_path_factory.mktemp("beside")
    return {
        "mmproj": str(write_header_gguf(gemma3_mmproj(2560), folder / "gemma-3-4b-mmproj.gguf")),
        "lora": str(write_header_gguf(lora_adapter(get_shape("qwen2.5-0.5b")), folder / "qwen-lora.gguf")),
    }


def run(llama_server: str, model: str, args: list[str]):
    """(prediction, what the server printed) for llama-server -m MODEL ARGS."""
    parsed = parse_server_args(args)
    spec = load_spec(model)
    est = estimate(spec, parsed.params, extras=load_extras(parsed.params, spec))
    m = measure_allocation(llama_server, ["-m", model, *args], timeout=300)
    assert m.ready, last_lines(m.log_text, 30)
    return est, m.log


def printed(log, context: int) -> list[tuple[str, str, float]]:
    return sorted((b.kind, b.name, b.mib) for b in log.buffers if b.context == context)


def predicted(bufs) -> list[tuple[str, str, float]]:
    return sorted((b.kind, b.name, round(b.bytes / MiB, 2)) for b in bufs)


def test_projector_gemma3(llama_server, shape_file, beside):
    est, log = run(llama_server, shape_file("gemma-3-4b"), ["--mmproj", beside["mmproj"], "-c", "2048", "-np", "1",
                                                             "--no-repack", "--fit", "off"])
    clip = [b for b in est.buffers if b.name == "CLIP"]
    main = [b for b in est.buffers if b.name != "CLIP"]
    # the model's own buffers, and the projector's: weights (clip.cpp prints Σ nbytes as "model size"; the buffer is
    # that padded per tensor, the same here) and its compute buffer at the 896² warm-up image (4096 patches)
    assert predicted(b for b in main if b.kind != "compute") == [x for x in printed(log, 1) if x[0] != "compute"]
    got = {b.kind: b.mib for b in log.buffers if b.context == CLIP_CONTEXT}
    assert round(clip[0].bytes / MiB, 2) == got["model"] == 811.79
    pred_compute = clip[1].bytes / MiB
    assert abs(pred_compute - got["compute"]) <= 0.10 * got["compute"], (pred_compute, got["compute"])
    assert all(r.ok for r in compare(est, log)), compare(est, log)


def test_draft_model_qwen25(llama_server, shape_file):
    est, log = run(llama_server, shape_file("qwen2.5-7b"), [
        "-md", shape_file("qwen2.5-0.5b"), "--spec-type", "draft-simple", "-ctkd", "q8_0", "-ctvd", "q8_0",
        "-c", "2048", "-np", "2", "--no-repack", "--no-warmup", "--fit", "off"])
    draft = [b for b in est.buffers if b.detail.startswith("draft")]
    main = [b for b in est.buffers if not b.detail.startswith("draft")]
    for ctx, bufs in ((1, main), (2, draft)):  # the target's llama_context, then the draft's
        exact = [x for x in printed(log, ctx) if x[0] != "compute"]
        assert predicted(b for b in bufs if b.kind != "compute") == exact
        got = sum(b.mib for b in log.buffers if b.context == ctx and b.kind == "compute")
        pred = sum(b.bytes for b in bufs if b.kind == "compute") / MiB
        assert abs(pred - got) <= 0.10 * got, (ctx, pred, got)
    # the target reserves 2 slots x (1 + 3 draft tokens) outputs; the draft one per slot
    assert est.n_outputs_max == 8 == int(log.cparams["n_outputs_max"])
    assert all(r.ok for r in compare(est, log)), compare(est, log)


def test_lora_qwen25_check_cli(llama_server, shape_file, beside):
    """`autoctx check` end to end: the LoRA buffer in the base tensors' buffer type (CPU_Mapped), the compute buffer
    printed twice (the context reserves again once the adapter is set) counted once."""
    model = shape_file("qwen2.5-0.5b")
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "check", model, "-c", "2048", "-np", "1", "--lora",
                        beside["lora"], "--no-warmup", "--llama-server", llama_server, "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    lora = [b for b in d["buffers"] if b["name"] == "CPU_Mapped" and b["detail"].startswith("LoRA")]
    assert [round(b["bytes"] / MiB, 2) for b in lora] == [4.12]
    assert all(c["ok"] for c in d["comparison"])
