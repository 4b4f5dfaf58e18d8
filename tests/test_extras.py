"""The files beside the model and the host memory that grows after /health, as pure functions: the projector (clip
GGUF), a draft model, MTP rows, LoRA adapters, --cache-ram and --ctx-checkpoints; their flags; bad input refused in
one line. The MiB values are what the pinned llama-server printed for these shapes (tests/test_extras_server.py
checks them live)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from autoctx.errors import ArgsError, UnsupportedModel
from tests.extra_shapes import gemma3_mmproj, header_file, lora_adapter, write_header_gguf
from autoctx.extras import Encoder, Extras, load_extras, lora_from_gguf, projector_from_gguf
from autoctx.memory import (REPACK_ARM_I8MM, REPACK_X86_AVX2, Device, Params, checkpoint_bytes, estimate, n_rs_seq,
                            projector_compute_bytes, spec_n_max)
from autoctx.model import spec_from_gguf
from autoctx.planner import Budget, PlanOptions, plan
from autoctx.runtimes.llamacpp.args import parse_server_args, to_server_args
from autoctx.runtimes.llamacpp.logparse import CLIP_CONTEXT, parse_server_log
from autoctx.catalog import get_shape, header_view
from autoctx.runtimes.llamacpp.runtime import plan_args

MiB = 1024 * 1024
GiB = 1024 * MiB


def spec(name: str):
    return spec_from_gguf(header_view(get_shape(name)))


PROJ = projector_from_gguf(header_file(gemma3_mmproj(2560)))
LORA = lora_from_gguf(header_file(lora_adapter(get_shape("qwen2.5-0.5b"))))
CPU_2048 = Params(n_ctx=2048, n_parallel=1, repack=False, fit=False)


def mib(n: int) -> float:
    return round(n / MiB, 2)


# --- the projector ----------------------------------------------------------------------------------------------

def test_projector_header():
    (enc,) = PROJ.encoders
    assert enc == Encoder("vision", "gemma3", 1152, 4304, 16, 27, 896, 14, 4)
    assert enc.warmup_tokens == 4096  # (896 / 14)²
    assert mib(PROJ.weight_bytes) == 811.79  # clip.cpp's "model size" for this file


@pytest.mark.parametrize("change,fa,printed", [
    # what the pinned llama-server printed (reserve_compute_meta, CPU) for variants of this SigLIP tower
    ({}, True, 121.25), ({"n_ff": 8608}, True, 188.50), ({"n_embd": 2304}, True, 180.00),
    ({"image_size": 448}, True, 30.31), ({"n_head": 8}, True, 121.25),
    ({}, False, 1132.00), ({"n_head": 8}, False, 620.00), ({"image_size": 448}, False, 91.00),
])
def test_projector_compute_measured(change, fa, printed):
    enc = replace(PROJ.encoders[0], **change)
    assert mib(projector_compute_bytes(enc, fa)) == printed


def test_projector_buffers_per_device():
    cpu = estimate(spec("gemma-3-4b"), CPU_2048, extras=Extras(projector=PROJ))
    assert [(b.device, b.kind, b.bytes) for b in cpu.buffers if b.name == "CLIP"] == [
        ("CPU", "model", 851226048), ("CPU", "compute", 127139840)]
    gpu = replace(CPU_2048, devices=(Device("CUDA0"),))
    on = estimate(spec("gemma-3-4b"), gpu, extras=Extras(projector=PROJ))
    # on the first GPU: each tensor padded to CUDA's 128 bytes (27 ffn_up.bias of 4304 f32: 64 bytes each)
    assert 851227776 - 851226048 == 27 * 64
    assert [(b.device, b.kind, b.bytes) for b in on.buffers if b.name == "CLIP"] == [
        ("CUDA0", "model", 851227776), ("CUDA0", "compute", 127139840)]
    off = estimate(spec("gemma-3-4b"), replace(gpu, mmproj_offload=False), extras=Extras(projector=PROJ))
    assert {b.device for b in off.buffers if b.name == "CLIP"} == {"CPU"}


def test_projector_compute_after_the_first_image_with_no_warmup():
    est = estimate(spec("gemma-3-4b"), replace(CPU_2048, warmup=False), extras=Extras(projector=PROJ))
    assert [b.kind for b in est.buffers if b.name == "CLIP"] == ["model"]
    assert [b.bytes for b in est.later if b.name == "CLIP"] == [127139840]


def test_not_a_projector_is_refused(tmp_path):
    with pytest.raises(UnsupportedModel, match="not a multimodal projector .*this is a 'qwen2' model"):
        projector_from_gguf(header_view(get_shape("qwen2.5-0.5b")))


# --- draft model, speculative outputs, MTP rows -------------------------------------------------------------------

def test_draft_model_buffers_exact():
    p = Params(n_ctx=2048, n_parallel=2, repack=False, fit=False, spec_types=("draft-simple",),
               cache_type_k_draft="q8_0", cache_type_v_draft="q8_0")
    est = estimate(spec("qwen2.5-7b"), p, extras=Extras(draft=spec("qwen2.5-0.5b")))
    assert [(b.kind, b.name, mib(b.bytes)) for b in est.buffers] == [
        ("model", "CPU_Mapped", 4460.45), ("kv", "CPU", 112.0), ("output", "CPU", 1.16), ("compute", "CPU", 147.02),
        ("model", "CPU_Mapped", 373.71), ("kv", "CPU", 12.75), ("output", "CPU", 1.16), ("compute", "CPU", 38.30)]
    assert est.n_outputs_max == 8  # 2 slots x (1 + 3 draft tokens)


def test_draft_without_spec_type_is_said():
    est = estimate(spec("qwen2.5-7b"), CPU_2048, extras=Extras(draft=spec("qwen2.5-0.5b")))
    assert any("-md without --spec-type draft-simple" in n for n in est.notes)
    assert est.n_outputs_max == 1


def test_speculative_outputs_and_rollback_rows():
    assert spec_n_max(Params(spec_types=("draft-simple",), draft_n_max=5)) == 5
    assert spec_n_max(Params(spec_types=("ngram-mod",))) == 64
    assert spec_n_max(Params()) == 0
    # MTP rows only where llama.cpp can roll recurrent state back; a dense llama has none
    assert n_rs_seq(spec("llama-3.2-1b"), Params(spec_types=("draft-mtp",))) == 0


# --- LoRA ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params,expected", [
    (Params(cpu_repack=REPACK_X86_AVX2), [("CPU", "CPU_Mapped", 4325376)]),
    # ARM repacks q8_0 (attn_v): its pairs fall back to the CPU buffer type
    (Params(cpu_repack=REPACK_ARM_I8MM), [("CPU", "CPU_Mapped", 3538944), ("CPU", "CPU", 786432)]),
    (Params(mmap=False), [("CPU", "CPU", 4325376)]),
    (Params(devices=(Device("CUDA0"),)), [("CUDA0", "CUDA0", 4325376)]),
])
def test_lora_buffer_follows_its_base_tensors(params, expected):
    p = replace(params, n_ctx=2048, n_parallel=1, fit=False)
    est = estimate(spec("qwen2.5-0.5b"), p, extras=Extras(loras=(LORA,)))
    assert [(b.device, b.name, b.bytes) for b in est.buffers if b.detail.startswith("LoRA")] == expected
    assert mib(4325376) == 4.12  # what llama-server printed for it


def test_lora_for_another_model_is_refused(tmp_path):
    path = str(write_header_gguf(lora_adapter(get_shape("qwen2.5-0.5b")), tmp_path / "lora.gguf"))
    with pytest.raises(UnsupportedModel, match="a LoRA for 'qwen2', the model is llama"):
        load_extras(Params(lora=(path,)), spec("llama-3.2-1b"))
    with pytest.raises(UnsupportedModel, match="has the wrong shape for this model"):
        load_extras(Params(lora=(path,)), spec("qwen2.5-7b"))
    with pytest.raises(UnsupportedModel, match="not a LoRA adapter"):
        lora_from_gguf(header_view(get_shape("qwen2.5-0.5b")))


# --- prompt cache and checkpoints ---------------------------------------------------------------------------------

def test_checkpoints_and_prompt_cache_after_health():
    g = estimate(spec("gemma-3-4b"), CPU_2048)
    # one checkpoint: the SWA cache of one slot (1536 cells x 29 layers, f16), 32 of them per slot by default
    assert mib(checkpoint_bytes(g)) == 174.0
    assert [(b.kind, mib(b.bytes)) for b in g.later] == [("checkpoints", 5568.0), ("prompt-cache", 8192.0)]
    dense = estimate(spec("qwen2.5-0.5b"), replace(CPU_2048, cache_ram_mib=-1))
    assert checkpoint_bytes(dense) == 0  # no SWA, no recurrent state: llama-server makes none
    assert [(b.kind, b.bytes) for b in dense.later] == [("prompt-cache", dense.kind_bytes("kv"))]


def test_plan_sizes_checkpoints_then_prompt_cache_from_the_ram_left():
    s = spec("gemma-3-4b")
    opts = PlanOptions(repack=False, max_ctx=8192, extras=Extras(projector=PROJ), beside={"mmproj": "/m/mmproj.gguf"})
    p = plan(s, [Budget("CPU", 24 * GiB, GiB)], opts)
    assert (p.params.ctx_checkpoints, p.params.cache_ram_mib) == (32, 8192)  # llama.cpp's defaults fit
    args = plan_args(p)
    assert args[args.index("--mmproj"):] == ["--mmproj", "/m/mmproj.gguf", "--cache-ram", "8192",
                                             "--ctx-checkpoints", "32", "--fit", "off"]
    assert any(r.startswith("beside the model: projector 933 MiB on CPU") for r in p.reasons)
    # 8 GiB: 3.7 GiB of model, projector, KV and compute leave room for 19 checkpoints of 174 MiB, and then less
    # than 256 MiB: no prompt cache
    tight = plan(s, [Budget("CPU", 8 * GiB, GiB)], opts)
    est = tight.estimate
    left = 7 * GiB - est.resident_bytes("CPU")
    assert (tight.params.ctx_checkpoints, tight.params.cache_ram_mib) == (19, 0)
    assert left // (174 * MiB) == 19 and est.later_bytes("CPU") == 19 * 174 * MiB
    assert any("19 per slot" in r and "fewer than llama.cpp's 32" in r for r in tight.reasons)
    assert any("prompt cache: --cache-ram 0 MiB, off" in r for r in tight.reasons)


def test_a_cache_the_user_set_is_counted_in_the_search():
    s = spec("qwen2.5-0.5b")
    budgets = [Budget("CPU", 3 * GiB, GiB)]
    free = plan(s, budgets, PlanOptions(repack=False))
    held = plan(s, budgets, PlanOptions(repack=False, cache_ram_mib=1536))
    assert held.params.cache_ram_mib == 1536 and held.num_ctx < free.num_ctx
    assert held.estimate.resident_bytes("CPU") + 1536 * MiB <= 2 * GiB


# --- flags --------------------------------------------------------------------------------------------------------

def test_flags_parse_and_round_trip():
    argv = ["--mmproj", "p.gguf", "--no-mmproj-offload", "-md", "d.gguf", "-ngld", "all", "-ctkd", "q8_0",
            "--spec-type", "draft-simple,ngram-mod", "--spec-draft-n-max", "5", "--lora", "a.gguf,b.gguf",
            "--lora-scaled", "c.gguf:0.5", "-cram", "2048", "--ctx-checkpoints", "4", "--no-warmup"]
    p = parse_server_args(argv, base=Params()).params
    assert (p.mmproj, p.mmproj_offload, p.model_draft, p.draft_ngl, p.cache_type_k_draft) == \
        ("p.gguf", False, "d.gguf", -2, "q8_0")
    assert (p.spec_types, p.draft_n_max, p.lora) == (("draft-simple", "ngram-mod"), 5, ("a.gguf", "b.gguf", "c.gguf"))
    assert (p.cache_ram_mib, p.ctx_checkpoints, p.warmup) == (2048, 4, False)
    assert to_server_args(p)[-28:] == [
        "--mmproj", "p.gguf", "--no-mmproj-offload", "-md", "d.gguf", "-ctkd", "q8_0", "-ctvd", "f16", "-ngld", "all",
        "--spec-type", "draft-simple,ngram-mod", "--spec-draft-n-max", "5", "--lora", "a.gguf", "--lora", "b.gguf",
        "--lora", "c.gguf", "--no-warmup", "--cache-ram", "2048", "--ctx-checkpoints", "4", "--fit", "on"][-28:]
    assert parse_server_args(to_server_args(p), base=Params()).params == p


@pytest.mark.parametrize("argv,msg", [
    (["--spec-type", "draft-fast"], "unknown speculative type 'draft-fast'"),
    (["-ctkd", "q3_k"], "unsupported cache type 'q3_k'"),
    (["--lora-scaled", "a.gguf"], "expects FNAME:SCALE"),
    (["--mmproj", ","], "expects a file"),
])
def test_bad_flags(argv, msg):
    with pytest.raises(ArgsError, match=msg):
        parse_server_args(argv, base=Params())


def test_cli_bad_files_one_line(tmp_path, shape_file):
    model = shape_file("qwen2.5-0.5b")
    lora = str(write_header_gguf(lora_adapter(get_shape("qwen2.5-0.5b")), tmp_path / "lora.gguf"))
    for args, msg in ((["--mmproj", str(tmp_path / "none.gguf")], "none.gguf: cannot open"),
                      (["--mmproj", lora], "not a multimodal projector"),
                      (["--lora", model], "not a LoRA adapter")):
        r = subprocess.run([sys.executable, "-m", "autoctx.cli", "estimate", model, "-c", "2048", *args],
                           capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_cli_estimate_lists_the_extra_buffers(tmp_path, shape_file):
    model = shape_file("qwen2.5-0.5b")
    lora = str(write_header_gguf(lora_adapter(get_shape("qwen2.5-0.5b")), tmp_path / "lora.gguf"))
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "estimate", model, "-c", "2048", "-np", "1", "--lora",
                        lora, "-md", model, "--spec-type", "draft-simple", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    tagged = [(b["kind"], b["detail"].split(" ")[0]) for b in d["buffers"] if b["detail"].startswith(("LoRA", "draft"))]
    # the adapter, then the draft's own context (its weights mapped and, on this host, repacked)
    assert tagged[0] == ("model", "LoRA") and [k for k, _ in tagged[-3:]] == ["kv", "output", "compute"]
    assert {w for _, w in tagged[1:]} == {"draft"}
    assert [b["kind"] for b in d["after_health"]] == ["prompt-cache"]
    text = subprocess.run([sys.executable, "-m", "autoctx.cli", "estimate", model, "-c", "2048", "--lora", lora],
                          capture_output=True, text=True).stdout
    assert "beside the model (in the table above):" in text and "after /health, in host memory" in text


# --- the server's log ---------------------------------------------------------------------------------------------

LOG = """\
I load_tensors:   CPU_Mapped model buffer size =   373.71 MiB
I llama_adapter_lora_init_impl: CPU_Mapped LoRA buffer size =     4.12 MiB
I llama_context: constructing llama_context
I llama_context:        CPU  output buffer size =     0.58 MiB
I sched_reserve:        CPU compute buffer size =    39.27 MiB
I sched_reserve:        CPU compute buffer size =    39.27 MiB
I clip_ctx: CLIP using CPU backend
I load_hparams: model size:         811.79 MiB
I reserve_compute_meta:        CPU compute buffer size =   121.25 MiB
"""


def test_log_lora_clip_and_a_second_reserve():
    log = parse_server_log(LOG)
    assert [(b.context, b.kind, b.name, b.mib) for b in log.buffers] == [
        (1, "model", "CPU_Mapped", 373.71), (1, "model", "CPU_Mapped", 4.12), (1, "output", "CPU", 0.58),
        (1, "compute", "CPU", 39.27), (CLIP_CONTEXT, "model", "CLIP", 811.79),
        (CLIP_CONTEXT, "compute", "CPU", 121.25)]


# --- Ollama: a projector layer (Ollama >= 0.30 passes it as --mmproj) ---------------------------------------------

def test_ollama_projector_layer_is_counted(tmp_path, monkeypatch, gemma_path):
    from autoctx.runtimes.ollama.projector import PROJECTOR_MEDIA, ollama_projector
    from autoctx.model import load_spec

    root = tmp_path / "models"
    (root / "blobs").mkdir(parents=True)
    model_digest, proj_digest = "a" * 64, "b" * 64
    os.symlink(gemma_path, root / "blobs" / f"sha256-{model_digest}")
    # Gemma 3's SigLIP tower projecting to the 270M model's 640-wide embeddings
    write_header_gguf(gemma3_mmproj(640), root / "blobs" / f"sha256-{proj_digest}")
    manifest = {"schemaVersion": 2, "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                               "digest": "sha256:" + "c" * 64, "size": 1},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{model_digest}",
                            "size": 1},
                           {"mediaType": PROJECTOR_MEDIA, "digest": f"sha256:{proj_digest}", "size": 1}]}
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / "gemma3"
    mdir.mkdir(parents=True)
    (mdir / "vision").write_text(json.dumps(manifest))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    spec_ = load_spec(gemma_path)
    path, proj = ollama_projector("gemma3:vision", spec_)
    assert path == str(root / "blobs" / f"sha256-{proj_digest}") and proj.encoders[0].projector_type == "gemma3"
    assert ollama_projector("gemma3:270m", spec_) is None  # not in this store
    p = plan(spec_, [Budget("CUDA0", 4 * GiB, GiB), Budget("CPU", 8 * GiB, GiB)],
             PlanOptions(runtime="ollama", extras=Extras(projector=proj), beside={"mmproj": path}))
    clip = [(b.device, b.kind, b.bytes) for b in p.estimate.buffers if b.name == "CLIP"]
    # on the GPU Ollama offloads to: each block's ffn_up.bias (4304 f32 = 17216 bytes) padded by 64 to CUDA's 128
    assert clip == [("CUDA0", "model", proj.weight_bytes + 27 * 64), ("CUDA0", "compute", 127139840)]


def test_serve_keeps_the_users_files_and_counts_them(tmp_path):
    from autoctx.runtimes.llamacpp.runtime import beside_options, merged_argv

    mm = str(write_header_gguf(gemma3_mmproj(2560), tmp_path / "mmproj.gguf"))
    user = ["--mmproj", mm, "--cache-ram", "1024"]
    parsed = parse_server_args(user, base=Params())
    opts = beside_options(parsed, PlanOptions(repack=False, max_ctx=4096), spec("gemma-3-4b"))
    assert opts.beside["mmproj"] == mm and opts.extras.projector.encoders[0].n_embd == 1152
    assert (opts.cache_ram_mib, opts.ctx_checkpoints) == (1024, None)
    p = plan(spec("gemma-3-4b"), [Budget("CPU", 16 * GiB, GiB)], opts)
    assert p.params.cache_ram_mib == 1024 and any(b.name == "CLIP" for b in p.estimate.buffers)
    argv = merged_argv(plan_args(p), user)
    assert argv.count("--mmproj") == 1 and argv.count("--cache-ram") == 1 and argv[-4:] == user


def test_ollama_ps_reads_the_projector_compute_line_only():
    """/api/ps (Ollama's memoryParsingWriter) reads "<buf> <kind> buffer size" lines: the projector's compute line,
    not clip's "model size" line nor a LoRA buffer line; autoctx's prediction of /api/ps does the same."""
    from autoctx.runtimes.ollama.memory import logged_ps_sizes, predicted_ps_sizes

    logged = logged_ps_sizes(parse_server_log(LOG), 10**12)
    assert logged.size == sum(int(x * MiB) for x in (373.71, 0.58, 39.27, 121.25))
    est = estimate(spec("gemma-3-4b"), replace(CPU_2048, devices=(Device("CUDA0"),)), extras=Extras(projector=PROJ))
    ps = predicted_ps_sizes(est, None)
    # (Gemma 3's two KV lines share one key there: the SWA cache's replaces the non-SWA one)
    assert ps.vram_by_device["CUDA0"] == sum(b.bytes for b in est.buffers if b.device == "CUDA0"
                                             and b.detail != "projector weights" and not b.detail.startswith("non-SWA"))
    assert any(b.detail.startswith("projector vision") and b.device == "CUDA0" for b in est.buffers)
