"""llama-server argument parsing (autoctx.runtimes.llamacpp.args) and Params.resolved().

Spellings, accepted values and defaults are those of the pinned build's common/arg.cpp and tools/server/server.cpp.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoctx.errors import ArgsError
from autoctx.memory import Device, Params
from autoctx.probe.cpu import host_repack_rules
from autoctx.runtimes.llamacpp.args import parse_server_args, to_server_args, with_devices

# without a base, parse_server_args starts from llama-server's defaults on this host (its CPU repack rules)
DEFAULT = Params(cpu_repack=host_repack_rules())


def host(**kw) -> Params:
    return Params(cpu_repack=host_repack_rules(), **kw)


def params(*argv: str) -> Params:
    return parse_server_args(list(argv)).params


def changed(p: Params) -> dict:
    """Fields that differ from the defaults."""
    return {k: v for k, v in vars(p).items() if v != getattr(DEFAULT, k)}


def args_error(*argv: str) -> str:
    with pytest.raises(ArgsError) as exc:
        parse_server_args(list(argv))
    return str(exc.value)


# ---------------------------------------------------------------------------------------------------------------
# Each memory flag, every spelling
# ---------------------------------------------------------------------------------------------------------------

CASES = [
    # argv, expected changed fields, canonical name
    (["-c", "8192"], {"n_ctx": 8192}, "ctx"),
    (["--ctx-size", "4096"], {"n_ctx": 4096}, "ctx"),
    (["--ctx-size=8192"], {"n_ctx": 8192}, "ctx"),
    (["--ctx_size", "2048"], {"n_ctx": 2048}, "ctx"),  # arg.cpp turns _ into - in --long flags
    (["-c", "0"], {}, "ctx"),
    (["-ctk", "q8_0"], {"cache_type_k": "q8_0"}, "ctk"),
    (["--cache-type-k", "q4_0"], {"cache_type_k": "q4_0"}, "ctk"),
    (["-ctv", "q5_1"], {"cache_type_v": "q5_1"}, "ctv"),
    (["--cache-type-v", "iq4_nl"], {"cache_type_v": "iq4_nl"}, "ctv"),
    (["--cache-type-v=bf16"], {"cache_type_v": "bf16"}, "ctv"),
    (["-fa", "on"], {"flash_attn": "on"}, "fa"),
    (["--flash-attn", "off"], {"flash_attn": "off"}, "fa"),
    (["-fa", "auto"], {}, "fa"),
    (["-fa", "enabled"], {"flash_attn": "on"}, "fa"),
    (["-fa", "disabled"], {"flash_attn": "off"}, "fa"),
    (["-fa", "true"], {"flash_attn": "on"}, "fa"),
    (["-fa", "0"], {"flash_attn": "off"}, "fa"),
    (["-fa", "1"], {"flash_attn": "on"}, "fa"),
    (["-fa", "-1"], {}, "fa"),  # is_autoy: "auto" or "-1"
    (["--flash-attn=on"], {"flash_attn": "on"}, "fa"),
    (["-np", "2"], {"n_parallel": 2}, "np"),
    (["--parallel", "8"], {"n_parallel": 8}, "np"),
    (["-np", "-1"], {}, "np"),
    (["-np", "-4"], {}, "np"),  # server.cpp: any negative is auto
    (["-ub", "256"], {"n_ubatch": 256}, "ub"),
    (["--ubatch-size", "1024"], {"n_ubatch": 1024}, "ub"),
    (["-ub", "0"], {"n_ubatch": 0}, "ub"),  # 0 = n_batch, resolved later
    (["-b", "4096"], {"n_batch": 4096}, "b"),
    (["--batch-size", "512"], {"n_batch": 512}, "b"),
    (["-ngl", "20"], {"n_gpu_layers": 20}, "ngl"),
    (["--n-gpu-layers", "0"], {"n_gpu_layers": 0}, "ngl"),
    (["--gpu-layers", "99"], {"n_gpu_layers": 99}, "ngl"),
    (["-ngl", "auto"], {}, "ngl"),
    (["-ngl", "all"], {"n_gpu_layers": -2}, "ngl"),
    (["--gpu-layers=all"], {"n_gpu_layers": -2}, "ngl"),
    (["-kvu"], {"kv_unified": True}, "kvu"),
    (["--kv-unified"], {"kv_unified": True}, "kvu"),
    (["-no-kvu"], {"kv_unified": False}, "no_kvu"),
    (["--no-kv-unified"], {"kv_unified": False}, "no_kvu"),
    (["--swa-full"], {"swa_full": True}, "swa_full"),
    (["--no-repack"], {"repack": False}, "no_repack"),
    (["-nr"], {"repack": False}, "no_repack"),
    (["--repack"], {}, "repack"),
    (["--fit", "off"], {"fit": False}, "fit"),
    (["-fit", "on"], {}, "fit"),
    (["--fit", "disabled"], {"fit": False}, "fit"),
    (["--load-mode", "none"], {"mmap": False}, "load_mode"),
    (["-lm", "mlock"], {"mmap": False}, "load_mode"),  # llama-model-loader.cpp:559: mlock alone does not mmap
    (["-lm", "dio"], {"mmap": False}, "load_mode"),
    (["-lm", "mmap+mlock"], {}, "load_mode"),
    (["--load-mode", "mmap"], {}, "load_mode"),
    (["-lm", "auto"], {}, "load_mode"),
    (["-nkvo"], {"offload_kqv": False}, "nkvo"),
    (["--no-kv-offload"], {"offload_kqv": False}, "nkvo"),
    (["-kvo"], {}, "kvo"),
    (["-ts", "3,1"], {"tensor_split": (3.0, 1.0)}, "ts"),
    (["--tensor-split", "1/1/2"], {"tensor_split": (1.0, 1.0, 2.0)}, "ts"),
    (["-ts", "0.6,0.4"], {"tensor_split": (0.6, 0.4)}, "ts"),
    (["--embedding"], {"embeddings": True}, "embedding"),
    (["--embeddings"], {"embeddings": True}, "embedding"),
]


@pytest.mark.parametrize("argv,expected,name", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_each_flag(argv, expected, name):
    parsed = parse_server_args(argv)
    assert changed(parsed.params) == expected
    assert parsed.explicit == {name}
    assert parsed.passthrough == []
    assert parsed.ignored == []
    assert parsed.model is None


def test_last_value_wins():
    assert params("-c", "1024", "--ctx-size", "2048").n_ctx == 2048
    assert params("-kvu", "-no-kvu").kv_unified is False
    assert params("-nkvo", "-kvo").offload_kqv is True
    assert params("-nr", "--repack").repack is True


def test_everything_together():
    parsed = parse_server_args(["-m", "/m/x.gguf", "-c", "32768", "-np", "2", "-ctk", "q8_0", "-ctv", "q8_0",
                                "-fa", "on", "-ngl", "20", "-b", "1024", "-ub", "256", "-no-kvu", "--swa-full",
                                "-nr", "--fit", "off", "-lm", "none", "-nkvo", "-ts", "3,1", "--embedding"])
    assert parsed.model == "/m/x.gguf"
    assert changed(parsed.params) == {
        "n_ctx": 32768, "n_parallel": 2, "cache_type_k": "q8_0", "cache_type_v": "q8_0", "flash_attn": "on",
        "n_gpu_layers": 20, "n_batch": 1024, "n_ubatch": 256, "kv_unified": False, "swa_full": True,
        "repack": False, "fit": False, "mmap": False, "offload_kqv": False, "tensor_split": (3.0, 1.0),
        "embeddings": True,
    }
    assert parsed.explicit == {"model", "ctx", "np", "ctk", "ctv", "fa", "ngl", "b", "ub", "no_kvu", "swa_full",
                               "no_repack", "fit", "load_mode", "nkvo", "ts", "embedding"}
    assert parsed.passthrough == []


def test_model_flag():
    assert parse_server_args(["--model", "a.gguf"]).model == "a.gguf"
    assert parse_server_args(["-m", "b.gguf", "-c", "512"]).model == "b.gguf"


def test_base_params_are_kept():
    base = Params(n_ctx=1000, cache_type_k="q8_0", devices=(Device("CUDA0"),))
    p = parse_server_args(["-c", "2000"], base=base).params
    assert (p.n_ctx, p.cache_type_k, p.devices) == (2000, "q8_0", (Device("CUDA0"),))
    assert base.n_ctx == 1000


# ---------------------------------------------------------------------------------------------------------------
# Defaults and Params.resolved()
# ---------------------------------------------------------------------------------------------------------------


def test_defaults():
    parsed = parse_server_args([])
    assert parsed.params == Params(cpu_repack=host_repack_rules())
    assert parse_server_args([], base=Params()).params.cpu_repack == {}
    p = parsed.params
    assert (p.n_ctx, p.n_parallel, p.kv_unified, p.n_batch, p.n_ubatch) == (0, -1, None, 2048, 512)
    assert (p.cache_type_k, p.cache_type_v, p.flash_attn, p.n_gpu_layers) == ("f16", "f16", "auto", -1)
    assert (p.swa_full, p.repack, p.mmap, p.offload_kqv, p.fit, p.embeddings) == (False, True, True, True, True,
                                                                                  False)
    assert p.tensor_split is None and p.devices == ()
    assert parsed.explicit == set() and parsed.passthrough == [] and parsed.ignored == [] and parsed.model is None


def test_resolved_np_auto_is_four_unified_slots():
    r = Params().resolved()
    assert (r.n_parallel, r.kv_unified) == (4, True)


def test_resolved_np_auto_overrides_no_kv_unified():
    """server.cpp: np auto sets n_parallel = 4 and kv_unified = true, whatever -no-kvu said."""
    r = params("-no-kvu").resolved()
    assert (r.n_parallel, r.kv_unified) == (4, True)


def test_resolved_explicit_np():
    assert (params("-np", "3").resolved().n_parallel, params("-np", "3").resolved().kv_unified) == (3, False)
    r = params("-np", "3", "-kvu").resolved()
    assert (r.n_parallel, r.kv_unified) == (3, True)
    r = params("-np", "1", "-no-kvu").resolved()
    assert (r.n_parallel, r.kv_unified) == (1, False)


def test_resolved_ubatch_zero_means_batch():
    r = params("-b", "1024", "-ub", "0").resolved()
    assert (r.n_batch, r.n_ubatch) == (1024, 1024)


def test_resolved_embeddings_clamp_batch_to_ubatch():
    """server.cpp: with --embedding and n_batch > n_ubatch, n_batch = n_ubatch."""
    r = params("--embedding", "-b", "2048", "-ub", "512").resolved()
    assert (r.n_batch, r.n_ubatch) == (512, 512)
    r = params("--embedding", "-b", "256", "-ub", "512").resolved()
    assert (r.n_batch, r.n_ubatch) == (256, 512)
    r = params("-b", "2048", "-ub", "512").resolved()  # not without embeddings
    assert (r.n_batch, r.n_ubatch) == (2048, 512)


def test_resolved_embeddings_with_ubatch_zero():
    with pytest.raises(ArgsError, match="--ubatch-size 0 with --embedding"):
        params("--embedding", "-ub", "0").resolved()


def test_resolved_is_idempotent_and_keeps_other_fields():
    p = params("-c", "8192", "-ctk", "q8_0", "-fa", "on", "-ngl", "all", "-ts", "3,1", "--swa-full")
    r = p.resolved()
    assert r.resolved() == r
    assert changed(r) == {"n_ctx": 8192, "cache_type_k": "q8_0", "flash_attn": "on", "n_gpu_layers": -2,
                          "tensor_split": (3.0, 1.0), "swa_full": True, "n_parallel": 4, "kv_unified": True}


@pytest.mark.parametrize("p,phrase", [
    (Params(cache_type_k="q2_k"), "unsupported KV cache type 'q2_k' (allowed: f32, f16, bf16, q8_0, q4_0, q4_1, "
                                  "iq4_nl, q5_0, q5_1)"),
    (Params(cache_type_v="F16"), "unsupported KV cache type 'F16'"),
    (Params(flash_attn="yes"), "--flash-attn must be on, off or auto, not 'yes'"),
    (Params(n_batch=0), "batch sizes must be positive"),
    (Params(n_ubatch=-1), "batch sizes must be positive"),
])
def test_resolved_rejects(p, phrase):
    with pytest.raises(ArgsError) as exc:
        p.resolved()
    assert phrase in str(exc.value)


# ---------------------------------------------------------------------------------------------------------------
# Flags autoctx does not model
# ---------------------------------------------------------------------------------------------------------------


def test_passthrough_exact():
    parsed = parse_server_args(["--port", "8080", "--jinja", "--host", "0.0.0.0", "-c", "4096", "-t", "8",
                                "--metrics", "-a", "my-model"])
    assert parsed.passthrough == ["--port", "8080", "--jinja", "--host", "0.0.0.0", "-t", "8", "--metrics", "-a",
                                  "my-model"]
    assert parsed.ignored == ["--port", "--jinja", "--host", "-t", "--metrics", "-a"]
    assert changed(parsed.params) == {"n_ctx": 4096}
    assert parsed.explicit == {"ctx"}


def test_passthrough_value_that_looks_like_a_flag():
    """A flag known to take a value takes the next word even when it starts with '-'."""
    parsed = parse_server_args(["--alias", "-weird-name", "-c", "100"])
    assert parsed.passthrough == ["--alias", "-weird-name"]
    assert parsed.params.n_ctx == 100


def test_passthrough_boolean_flag_does_not_eat_a_word():
    with pytest.raises(ArgsError, match="unexpected argument 'stray'"):
        parse_server_args(["--jinja", "stray"])


def test_passthrough_unknown_flag_guesses_its_value():
    parsed = parse_server_args(["--not-a-real-flag", "value", "--other-unknown", "-c", "10"])
    assert parsed.passthrough == ["--not-a-real-flag", "value", "--other-unknown"]
    assert parsed.ignored == ["--not-a-real-flag", "--other-unknown"]
    assert parsed.params.n_ctx == 10


def test_passthrough_equals_form_is_split_for_the_server():
    """llama-server has no --flag=value form (arg.cpp looks up the whole token), so it is passed as two words."""
    parsed = parse_server_args(["--port=8080", "--host=127.0.0.1"])
    assert parsed.passthrough == ["--port", "8080", "--host", "127.0.0.1"]
    assert parsed.ignored == ["--port", "--host"]


def test_passthrough_underscore_spelling_is_recognised():
    parsed = parse_server_args(["--ubatch_size", "128", "--cache_type_k", "q8_0", "--threads_batch", "4"])
    assert (parsed.params.n_ubatch, parsed.params.cache_type_k) == (128, "q8_0")
    assert parsed.passthrough == ["--threads_batch", "4"]
    assert parsed.ignored == ["--threads-batch"]


def test_rerank_means_embeddings_and_is_passed_through():
    """--rerank sets embedding (and pooling = rank): modelled as embeddings, kept for the server."""
    parsed = parse_server_args(["--rerank"])
    assert parsed.params.embeddings is True
    assert parsed.passthrough == ["--rerank"]
    assert parsed.ignored == []
    assert parse_server_args(["--reranking"]).params.embeddings is True


# ---------------------------------------------------------------------------------------------------------------
# Bad values
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,phrase", [
    (["-c", "abc"], "-c expects an integer, got 'abc'"),
    (["--ctx-size", "-5"], "--ctx-size must be >= 0"),
    (["-c"], "-c expects a value"),
    (["--ctx-size="], "--ctx-size expects an integer, got ''"),
    (["-ctk", "q3_k"], "-ctk: unsupported cache type 'q3_k' (allowed: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, "
                       "q5_0, q5_1)"),
    (["--cache-type-v", "fp8"], "--cache-type-v: unsupported cache type 'fp8'"),
    (["-fa", "maybe"], "-fa expects on|off|auto, got 'maybe'"),
    (["-fa"], "-fa expects a value"),
    (["--fit", "auto"], "--fit expects on|off, got 'auto'"),
    (["-np", "0"], "-np must be a positive number of slots, or -1 for auto"),
    (["--parallel", "two"], "--parallel expects an integer, got 'two'"),
    (["-ub", "-1"], "-ub must be >= 0 (0 = the batch size)"),
    (["-b", "0"], "-b must be >= 1"),
    (["--batch-size", "1.5"], "--batch-size expects an integer, got '1.5'"),
    (["-ngl", "most"], "-ngl expects an integer, got 'most'"),
    (["--load-mode", "fast"], "--load-mode: unknown load mode 'fast'"),
    (["-ts", "3,x"], "-ts expects comma-separated numbers, got '3,x'"),
    (["--port"], "--port expects a value"),
    (["model.gguf", "-c", "10"], "unexpected argument 'model.gguf'"),
    (["-"], "unexpected argument '-'"),
])
def test_bad_values(argv, phrase):
    assert phrase in args_error(*argv)


def test_args_error_exit_code():
    with pytest.raises(ArgsError) as exc:
        parse_server_args(["-c", "x"])
    assert exc.value.exit_code == 2


# ---------------------------------------------------------------------------------------------------------------
# to_server_args and the round trip
# ---------------------------------------------------------------------------------------------------------------


def test_to_server_args_defaults_exact():
    assert to_server_args(Params()) == ["-c", "0", "-np", "-1", "-ctk", "f16", "-ctv", "f16", "-fa", "auto",
                                        "-ngl", "-1", "-b", "2048", "-ub", "512", "--cache-ram", "8192",
                                        "--ctx-checkpoints", "32", "--fit", "on"]


def test_to_server_args_everything_exact():
    p = Params(n_ctx=8192, n_parallel=2, kv_unified=False, n_batch=1024, n_ubatch=256, cache_type_k="q8_0",
               cache_type_v="q4_0", flash_attn="on", n_gpu_layers=-2, swa_full=True, repack=False, mmap=False,
               offload_kqv=False, fit=False, tensor_split=(3.0, 1.0), embeddings=True)
    assert to_server_args(p, model="/m/x.gguf") == [
        "-m", "/m/x.gguf", "-c", "8192", "-np", "2", "-ctk", "q8_0", "-ctv", "q4_0", "-fa", "on", "-ngl", "-2",
        "-b", "1024", "-ub", "256", "-no-kvu", "--swa-full", "--no-repack", "--load-mode", "none",
        "--no-kv-offload", "-ts", "3,1", "--embedding", "--cache-ram", "8192", "--ctx-checkpoints", "32", "--fit",
        "off"]


ROUND_TRIP = [
    host(),
    host(n_ctx=8192, n_parallel=1, kv_unified=False),
    host(n_ctx=131072, n_parallel=4, kv_unified=True, cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="on"),
    host(n_gpu_layers=20, n_batch=4096, n_ubatch=1024, swa_full=True, repack=False, mmap=False, fit=False),
    host(n_gpu_layers=-2, offload_kqv=False, tensor_split=(0.6, 0.4), flash_attn="off"),
    host(tensor_split=(1 / 3, 2 / 3, 1e-7)),
    host(embeddings=True, n_batch=512, n_ubatch=512, cache_type_k="bf16"),
    host(n_ubatch=0),
]


@pytest.mark.parametrize("p", ROUND_TRIP)
def test_round_trip(p):
    parsed = parse_server_args(to_server_args(p, model="m.gguf"))
    assert parsed.params == p
    assert parsed.model == "m.gguf"
    assert parsed.passthrough == []


def test_round_trip_keeps_devices_from_base():
    p = with_devices(Params(n_ctx=4096), [Device("CUDA0"), Device("CUDA1")])
    assert p.devices == (Device("CUDA0"), Device("CUDA1"))
    assert parse_server_args(to_server_args(p), base=replace(Params(), devices=p.devices)).params == p
    # and with a base, the host's repack rules are not imposed
    assert parse_server_args(to_server_args(p), base=replace(Params(), devices=p.devices)).params.cpu_repack == {}


def test_without_flags_drops_modelled_flags_and_their_values():
    from autoctx.runtimes.llamacpp.args import without_flags

    argv = ["-m", "x.gguf", "-c", "32768", "--ctx-size=4096", "-ctk", "f16", "--no-repack", "-fa", "auto", "--fit",
            "off"]
    assert without_flags(argv, {"ctx", "no_repack"}) == ["-m", "x.gguf", "-ctk", "f16", "-fa", "auto", "--fit", "off"]
    assert without_flags(argv, set()) == argv
