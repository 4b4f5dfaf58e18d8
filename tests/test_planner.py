"""The planner on simulated machines (pure: no probe, no server)."""

from __future__ import annotations

import pytest

from autoctx.planner import Budget, PlanError, PlanOptions, default_margin, plan
from autoctx.runtimes.llamacpp.runtime import plan_args
from autoctx.runtimes.ollama.runtime import modelfile as ollama_modelfile

GiB = 1024**3
MiB = 1024**2


def gpus(*sizes_gib: float, margin=GiB) -> list[Budget]:
    return [Budget(f"CUDA{i}", int(s * GiB), margin) for i, s in enumerate(sizes_gib)]


def assert_fits_and_is_maximal(p, budgets):
    """Every device within free − margin, and 256 more tokens with the same settings would not fit."""
    for b in budgets:
        assert p.estimate.device_bytes(b.device) <= b.usable, b.device
    if p.num_ctx < p.spec.n_ctx_train:
        from dataclasses import replace

        from autoctx.memory import estimate

        bigger = estimate(p.spec, replace(p.params, n_ctx=(p.num_ctx + 256) * p.n_parallel))
        assert any(bigger.device_bytes(b.device) > b.usable for b in budgets)


def test_one_8gib_gpu_llama_8b_takes_q8_0_not_a_silent_q4_0(spec_of):
    spec = spec_of("llama-3.1-8b")
    budgets = gpus(8)
    p = plan(spec, budgets)
    assert p.n_gpu_layers == 33 and (p.cache_type_k, p.cache_type_v) == ("q8_0", "q8_0")
    assert set(p.max_ctx_by_kv) == {"f16", "q8_0"}  # q4_0 is a fallback: not tried while q8_0 reaches --min-ctx
    assert 4096 <= p.max_ctx_by_kv["f16"] < p.max_ctx_by_kv["q8_0"] < 131072
    assert p.num_ctx == p.max_ctx_by_kv["q8_0"] and p.num_ctx % 256 == 0
    assert_fits_and_is_maximal(p, budgets)
    assert p.flash_attn == "on"  # quantized V needs it: said explicitly
    assert "f16 would fit only" in p.reasons[1] and not any("WARNING" in r for r in p.reasons)
    asked = plan(spec, budgets, PlanOptions(kv_order=(("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))))
    assert (asked.cache_type_k, asked.num_ctx) == ("q4_0", asked.max_ctx_by_kv["q4_0"])  # asked for: no warning
    assert asked.num_ctx > p.num_ctx and not any("WARNING" in r for r in asked.reasons)


def test_q4_0_only_when_q8_0_cannot_reach_the_minimum_context_and_then_loudly(spec_of):
    spec = spec_of("llama-3.1-8b")
    budgets = gpus(8)
    q8 = plan(spec, budgets).max_ctx_by_kv["q8_0"]
    p = plan(spec, budgets, PlanOptions(min_ctx=q8 + 4096))
    assert (p.n_gpu_layers, p.cache_type_k, p.cache_type_v) == (33, "q8_0", "q4_0")
    assert p.num_ctx >= q8 + 4096
    assert p.reasons[1] == (f"WARNING: KV cache q8_0/q4_0: a 4-bit cache costs measurable quality; f16 fits only "
                             f"{p.max_ctx_by_kv['f16']} tokens, q8_0 fits only {q8} tokens, below --min-ctx "
                             f"{q8 + 4096} (--kv-types f16,q8_0 refuses it)")
    refused = plan(spec, budgets + [Budget("CPU", 64 * GiB, GiB)],
                   PlanOptions(min_ctx=q8 + 4096, kv_order=(("f16", "f16"), ("q8_0", "q8_0")), kv_fallback=()))
    assert refused.cache_type_k == "q8_0" and refused.n_gpu_layers < 33  # asked for quality: layers go instead


def test_one_24gib_gpu_keeps_f16_when_the_target_fits(spec_of):
    spec = spec_of("llama-3.1-8b")
    p = plan(spec, gpus(24), PlanOptions(max_ctx=32768))
    assert (p.num_ctx, p.cache_type_k, p.cache_type_v) == (32768, "f16", "f16")
    assert p.reasons[0] == "context 32768: the --max-ctx target fits"
    full = plan(spec, gpus(24))  # 16 GiB of f16 KV at 128k + 4.8 GiB of weights fit in 23 GiB usable
    assert (full.num_ctx, full.cache_type_k) == (131072, "f16")
    smaller = plan(spec, gpus(20))  # 19 GiB usable: f16 stops short of 128k, q8_0 reaches it
    assert (smaller.num_ctx, smaller.cache_type_k) == (131072, "q8_0")
    assert smaller.max_ctx_by_kv["f16"] < 131072
    assert_fits_and_is_maximal(smaller, gpus(20))


def test_two_gpus_split_in_whole_layers(spec_of):
    spec = spec_of("qwen2.5-32b")
    budgets = [Budget("CUDA0", 16 * GiB, GiB), Budget("CUDA1", 12 * GiB, GiB)]
    p = plan(spec, budgets)
    assert p.tensor_split == (38.0, 27.0)  # 64 blocks + the output layer, as counts llama.cpp splits exactly
    assert plan_args(p)[plan_args(p).index("-ts") + 1] == "38,27"
    layers = p.estimate.layer_device
    assert (layers.count("CUDA0"), layers.count("CUDA1"), p.estimate.output_device) == (38, 26, "CUDA1")
    assert any("-ts 38,27): each GPU keeps the same room per layer" in r for r in p.reasons)
    assert_fits_and_is_maximal(p, budgets)


def test_moe_split_fills_both_devices(spec_of):
    """--n-cpu-moe N leaves the first N blocks' experts in RAM: a split in proportion to memory would give the first
    device those light blocks (qwen3-30b-a3b on 2 x 8 GiB: 805 MiB used of 7 GiB, experts of 30 blocks in RAM); the
    split by room per layer fills both and keeps the experts of 12 blocks only in RAM."""
    spec = spec_of("qwen3-30b-a3b")
    budgets = [Budget("CUDA0", 8 * GiB, GiB), Budget("CUDA1", 8 * GiB, GiB), Budget("CPU", 64 * GiB, 2 * GiB)]
    p = plan(spec, budgets)
    assert (p.n_gpu_layers, p.n_cpu_moe, p.tensor_split, p.num_ctx) == (49, 12, (30.0, 19.0), 14080)
    used = [p.estimate.resident_bytes(d) for d in ("CUDA0", "CUDA1")]
    assert all(6.9 * GiB < u <= 7 * GiB for u in used), used
    assert_fits_and_is_maximal(p, budgets)


def test_70b_on_24gib_offloads_fewer_layers(spec_of):
    spec = spec_of("llama-3.1-70b")
    budgets = gpus(24) + [Budget("CPU", 64 * GiB, 2 * GiB)]
    p = plan(spec, budgets, PlanOptions(min_ctx=8192))
    assert 0 < p.n_gpu_layers < spec.n_layer + 1
    assert p.num_ctx >= 8192
    assert any("run on the CPU" in r for r in p.reasons)
    assert "PARAMETER num_gpu" in ollama_modelfile(p)
    assert_fits_and_is_maximal(p, budgets)
    # one more layer on the GPU would not leave room for the minimum context with the order's most compact KV type
    # (q8_0: with layers on the CPU anyway, quality is not traded for a few more GPU layers)
    from dataclasses import replace

    from autoctx.memory import estimate

    assert (p.cache_type_k, p.cache_type_v) == ("q8_0", "q8_0") and not any("WARNING" in r for r in p.reasons)
    more = estimate(spec, replace(p.params, n_gpu_layers=p.n_gpu_layers + 1, n_ctx=8192, cache_type_k="q8_0",
                                  cache_type_v="q8_0", flash_attn="on"))
    assert more.device_bytes("CUDA0") > budgets[0].usable


def test_nothing_fits_says_how_much_is_missing(spec_of):
    with pytest.raises(PlanError, match=r"do not fit \(missing CPU: \d+\.\d\d GiB"):
        plan(spec_of("llama-3.1-70b"), gpus(4) + [Budget("CPU", 8 * GiB, GiB)])


def test_cpu_plan_and_emitted_args(spec_of):
    spec = spec_of("gemma")
    p = plan(spec, [Budget("CPU", 2 * GiB, GiB)])
    assert (p.num_ctx, p.cache_type_k, p.n_gpu_layers) == (32768, "f16", 0)
    assert plan_args(p) == ["-m", spec.path, "-c", "32768", "-np", "1", "-ctk", "f16", "-ctv", "f16",
                                     "-fa", "auto", "-ngl", "0", "-b", "2048", "-ub", "512", "-no-kvu",
                                     "--cache-ram", "0", "--ctx-checkpoints", "32", "--fit", "off"]
    assert ollama_modelfile(p) == f"FROM {spec.path}\nPARAMETER num_ctx 32768\n"


def test_forced_kv_type_and_parallel_slots(spec_of):
    spec = spec_of("llama-3.1-8b")
    p = plan(spec, gpus(12), PlanOptions(kv_forced=("q8_0", "q8_0"), n_parallel=2))
    assert (p.cache_type_k, p.n_parallel) == ("q8_0", 2)
    args = plan_args(p)
    assert args[args.index("-c") + 1] == str(2 * p.num_ctx) and "-no-kvu" in args
    assert p.estimate.n_ctx_seq == p.num_ctx
    mf = ollama_modelfile(p)
    assert "OLLAMA_KV_CACHE_TYPE=q8_0 OLLAMA_FLASH_ATTENTION=1" in mf and "kv_cache_type" not in mf


def test_mla_skips_mixed_kv_types_with_llama_cpps_reason(spec_of):
    p = plan(spec_of("deepseek-v2-lite"), gpus(12),
             PlanOptions(max_ctx=16384, kv_order=(("q8_0", "q4_0"), ("f16", "f16"))))
    assert p.reasons[1] == ("KV q8_0/q4_0 not possible for this model: this MLA model does not support different K "
                            "(q8_0) and V (q4_0) cache types")
    assert p.cache_type_k == "f16"


def test_min_ctx_is_capped_by_training_context(spec_of):
    spec = spec_of("llama-2-7b")  # n_ctx_train 4096
    p = plan(spec, gpus(6), PlanOptions(min_ctx=8192))
    assert p.num_ctx == 4096


def test_default_margins():
    assert default_margin("CUDA0", 24 * GiB) == GiB
    assert default_margin("CPU", 16 * GiB) == GiB
    assert default_margin("CPU", 64 * GiB) == int(3.2 * GiB)


def test_step_down_takes_three_quarters_then_the_next_kv_type(spec_of):
    from dataclasses import replace

    from autoctx.loop import step_down

    spec = spec_of("llama-3.1-8b")
    p = plan(spec, gpus(12))
    nxt = step_down(p, PlanOptions())
    assert nxt.max_ctx == int(p.num_ctx * 0.75) // 256 * 256
    fixed = PlanOptions(max_ctx=p.num_ctx, min_ctx=p.num_ctx, fixed_ctx=True)
    nxt = step_down(replace(p, cache_type_k="q8_0", cache_type_v="q8_0"), fixed)
    assert (nxt.kv_order, nxt.kv_fallback) == ((), (("q8_0", "q4_0"), ("q4_0", "q4_0")))  # still a said fallback
    with pytest.raises(Exception, match="cannot step down below"):
        step_down(replace(p, cache_type_k="q4_0", cache_type_v="q4_0"), fixed)


def test_user_arguments_fix_the_plan_choices(spec_of):
    from autoctx.runtimes.llamacpp.args import parse_server_args
    from autoctx.runtimes.llamacpp.runtime import merged_argv, user_overrides

    parsed = parse_server_args(["-c", "20000", "-np", "2", "-ctk", "q8_0", "-ub", "256", "-ngl", "10", "--jinja"])
    opts = user_overrides(parsed, PlanOptions())
    assert (opts.max_ctx, opts.min_ctx, opts.fixed_ctx) == (10000, 10000, True)
    assert (opts.n_parallel, opts.kv_forced, opts.n_ubatch, opts.fixed_ngl) == (2, ("q8_0", "f16"), 256, 10)
    p = plan(spec_of("llama-3.1-8b"), gpus(24), opts)
    assert (p.num_ctx, p.n_gpu_layers, p.cache_type_k, p.cache_type_v) == (10240, 10, "q8_0", "f16")
    argv = merged_argv(plan_args(p), ["-c", "20000", "-np", "2", "-ctk", "q8_0", "-ub", "256", "-ngl",
                                               "10", "--jinja"])
    assert argv.count("-c") == 1 and argv[-11:] == ["-c", "20000", "-np", "2", "-ctk", "q8_0", "-ub", "256",
                                                     "-ngl", "10", "--jinja"]


def _most_layers_by_brute_force(spec, budgets, ctx, kv, opts):
    """Every layer count, tried with memory.estimate directly: the most GPU layers with which ctx tokens fit."""
    from autoctx.planner import _Search

    s = _Search(spec, budgets, opts)
    fitting = [n for n in range(spec.n_layer + 2) if s.fits(ctx, kv, n)]
    return max(fitting, default=-1)


def test_the_layer_search_finds_what_a_bisection_missed(spec_of):
    """Issue 9's case: with 2.25 GiB of GPU and 5.25 GiB of RAM, -ngl 6 fits both (5 under the compute model before
    the per-device one); the old bisection said nothing fits (fewer GPU layers means more CPU memory: "fits" is not
    monotone in the layer count)."""
    spec = spec_of("llama-3.1-8b")
    budgets = [Budget("CUDA0", int(2.25 * GiB), GiB), Budget("CPU", int(5.25 * GiB), GiB)]
    opts = PlanOptions(repack=False)
    p = plan(spec, budgets, opts)
    assert p.n_gpu_layers == _most_layers_by_brute_force(spec, budgets, 4096, ("q8_0", "q8_0"), opts) == 6
    assert p.num_ctx >= 4096 and (p.cache_type_k, p.cache_type_v) == ("q8_0", "q8_0")
    assert_fits_and_is_maximal(p, budgets)


def test_layer_search_property_against_brute_force(spec_of):
    """Budgets built so that -ngl k fits both devices with 16 MiB to spare: the plan keeps at least k layers on the GPU,
    and exactly as many as trying every count finds (the order's most compact type at --min-ctx)."""
    from autoctx.memory import estimate
    from autoctx.planner import _Search

    spec = spec_of("llama-3.1-8b")
    kv = ("q8_0", "q8_0")
    quality = PlanOptions(repack=False, kv_fallback=())  # the order only: the layer lever alone
    probe = _Search(spec, [Budget("CUDA0", 64 * GiB, 0), Budget("CPU", 64 * GiB, 0)], quality)
    for k in range(0, spec.n_layer + 2, 3):
        est = estimate(spec, probe.params(4096, kv, k))
        budgets = [Budget(d, est.resident_bytes(d) + 16 * MiB, 0) for d in ("CUDA0", "CPU")]
        p = plan(spec, budgets, quality)
        assert p.n_gpu_layers >= k
        assert p.n_gpu_layers == _most_layers_by_brute_force(spec, budgets, 4096, kv, quality)
        assert all(p.estimate.resident_bytes(b.device) <= b.usable for b in budgets)
        assert plan(spec, budgets, PlanOptions(repack=False)).n_gpu_layers >= k  # with the fallback types too
