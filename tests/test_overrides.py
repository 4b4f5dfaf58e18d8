"""Tensor overrides (-ot, --cpu-moe, --n-cpu-moe, --n-cpu-ffn) in the memory model, and the planner's expert lever.

Pure: no server. The same rules against the real llama-server (RPC devices): tests/test_overrides_server.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from autoctx.memory import (CPU_ALIGNMENT, FFN_DENSE_REGEX, FFN_EXPS_REGEX, REPACK_X86_AVX2, Device, Params,
                            _alloc_size, buft_overrides, estimate, pad, tensor_devices)
from autoctx.planner import Budget, PlanOptions, _Search, plan, token_reads
from autoctx.runtimes.llamacpp.args import parse_server_args, to_server_args
from autoctx.runtimes.llamacpp.runtime import plan_args
from autoctx.runtimes.ollama.runtime import modelfile as ollama_modelfile

GiB = 1024**3
MiB = 1024**2
EXPS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def autoctx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, timeout=300)


def parse(*argv: str, devices=()) -> Params:
    return replace(parse_server_args(list(argv), base=Params()).params, devices=tuple(devices))


def placed(spec, p: Params) -> dict[str, str]:
    """tensor name -> device, as estimate places it."""
    est = estimate(spec, p)
    return {t.name: d for t, d in zip(spec.tensors, tensor_devices(spec, est.params, est.layer_device,
                                                                    est.output_device))}


def is_expert(name: str) -> bool:
    import re

    return re.search(EXPS, name) is not None


def test_flags_keep_the_command_line_order_and_expand_as_llama_server_does():
    argv = ["-ot", r"blk\.47\.ffn_down_exps=CUDA0,exps=CPU", "--cpu-moe", "-ncmoe", "2",
            "--override-tensor=token_embd=CPU", "--n-cpu-ffn", "1", "-cmoe"]
    parsed = parse_server_args(argv, base=Params())
    p = parsed.params
    assert p.tensor_overrides == (("-ot", r"blk\.47\.ffn_down_exps=CUDA0,exps=CPU"), ("--cpu-moe", ""),
                                  ("--n-cpu-moe", "2"), ("-ot", "token_embd=CPU"), ("--n-cpu-ffn", "1"),
                                  ("--cpu-moe", ""))
    assert {"ot", "cpu_moe", "n_cpu_moe", "n_cpu_ffn"} <= parsed.explicit
    assert FFN_EXPS_REGEX == EXPS and FFN_DENSE_REGEX == r"\.ffn_(up|down|gate)\."  # common/common.h
    assert buft_overrides(replace(p, devices=(Device("CUDA0"),))) == [
        (r"blk\.47\.ffn_down_exps", "CUDA0"), ("exps", "CPU"), (EXPS, "CPU"),
        (r"blk\.0" + EXPS, "CPU"), (r"blk\.1" + EXPS, "CPU"), ("token_embd", "CPU"),
        (r"blk\.0\.ffn_(up|down|gate)\.", "CPU"), (EXPS, "CPU")]
    # written back in the same order, beside the other flags
    argv, i = to_server_args(p), to_server_args(p).index("-ot")
    assert argv[i:i + 10] == ["-ot", r"blk\.47\.ffn_down_exps=CUDA0,exps=CPU", "--cpu-moe", "--n-cpu-moe", "2",
                              "-ot", "token_embd=CPU", "--n-cpu-ffn", "1", "--cpu-moe"]
    assert argv[:i] + argv[i + 10:] == to_server_args(Params())
    assert buft_overrides(parse("--n-cpu-moe", "0")) == []  # no pattern at all (has_tensor_overrides false)


def test_rpc_buffer_names_are_buffer_types():
    rpc = (Device("RPC0", endpoint="127.0.0.1:50052"), Device("RPC1", endpoint="127.0.0.1:50053"))
    p = parse("-ot", "attn=RPC0[127.0.0.1:50053]", devices=rpc)
    assert buft_overrides(p) == [("attn", "RPC0[127.0.0.1:50053]")]  # the second worker's first device: RPC1


@pytest.mark.parametrize("args,message", [
    (["-ot", "(=CPU"], "autoctx: error: -ot: bad regular expression '(': missing ), unterminated subpattern at "
                       "position 0"),
    (["-ot", "exps"], "autoctx: error: -ot exps: 'exps' is not PATTERN=BUFFER_TYPE"),
    (["-ot", "exps=CPU,"], "autoctx: error: -ot exps=CPU,: '' is not PATTERN=BUFFER_TYPE"),
    (["-ot", "exps=CUDA1", "--devices", "CUDA0"], "autoctx: error: -ot exps=CUDA1: unknown buffer type 'CUDA1' "
                                                  "(available: CPU, CUDA0)"),
    (["-ot", "exps=CUDA0"], "autoctx: error: -ot exps=CUDA0: unknown buffer type 'CUDA0' (available: CPU; GPUs and "
                            "RPC devices are named with --devices or --rpc)"),
    (["--n-cpu-moe", "-1"], "autoctx: error: --n-cpu-moe must be >= 0 (a number of blocks)"),
    (["-ncffn", "x"], "autoctx: error: -ncffn expects an integer, got 'x'"),
])
def test_bad_overrides_are_one_line(shape_file, args, message):
    r = autoctx("estimate", shape_file("qwen2.5-0.5b"), *args)
    assert r.returncode != 0 and r.stderr.splitlines() == [message]


def test_plan_refuses_an_unknown_buffer_type_and_ollama(shape_file):
    path = shape_file("qwen2.5-0.5b")
    r = autoctx("plan", path, "--free", "cuda0=4GiB", "--free", "cpu=8GiB", "-ot", "exps=ROCm0")
    assert r.returncode != 0 and r.stderr.splitlines() == [
        "autoctx: error: -ot exps=ROCm0: unknown buffer type 'ROCm0' (available: CPU, CUDA0)"]
    r = autoctx("plan", path, "--free", "cuda0=4GiB", "--runtime", "ollama", "--n-cpu-moe", "2")
    assert r.returncode != 0 and r.stderr.splitlines() == [
        "autoctx: error: -ot/--cpu-moe/--n-cpu-moe/--n-cpu-ffn are llama-server flags: an Ollama Modelfile has none"]


def test_estimate_n_cpu_moe_48_moves_every_expert_off_the_gpu(shape_file, spec_of):
    """Issue 9: `estimate --n-cpu-moe 48` gave the same table as without. Now CUDA0 keeps the attention, norms and
    routers of the 48 blocks and the output layer; the experts are CPU_Mapped ranges of the file; the KV cache stays."""
    path = shape_file("qwen3-30b-a3b")

    def buffers(*extra):
        r = autoctx("estimate", path, "--devices", "CUDA0", "-c", "8192", "-np", "1", *extra, "--json")
        assert r.returncode == 0, r.stderr
        return [(b["device"], b["kind"], b["name"], b["bytes"]) for b in json.loads(r.stdout)["buffers"]
                if b["kind"] in ("model", "kv")]

    assert buffers() == [("CUDA0", "model", "CUDA0", 18375698432), ("CPU", "model", "CPU_Mapped", 175030272),
                         ("CUDA0", "kv", "CUDA0", 805306368)]
    moved = buffers("--n-cpu-moe", "48")
    assert moved == [("CUDA0", "model", "CUDA0", 822523904), ("CPU", "model", "CPU_Mapped", 18295455744),
                     ("CUDA0", "kv", "CUDA0", 805306368)]
    assert buffers("--cpu-moe") == moved
    spec = spec_of("qwen3-30b-a3b")
    cuda = Device("CUDA0")
    experts = sum(_alloc_size(cuda, t.type_name, t.nbytes, t.shape[0]) for t in spec.tensors if is_expert(t.name))
    assert 18375698432 - 822523904 == experts  # exactly the experts' CUDA allocations left CUDA0
    assert len([t for t in spec.tensors if is_expert(t.name)]) == 3 * 48


def test_the_first_matching_pattern_wins(spec_of):
    spec = spec_of("qwen3-30b-a3b")
    cuda = (Device("CUDA0"),)
    first = placed(spec, parse("-ot", r"blk\.47\.ffn_down_exps=CUDA0", "--cpu-moe", devices=cuda))
    assert first["blk.47.ffn_down_exps.weight"] == "CUDA0"
    assert {d for n, d in first.items() if is_expert(n) and n != "blk.47.ffn_down_exps.weight"} == {"CPU"}
    assert {d for n, d in first.items() if n.startswith("blk.") and not is_expert(n)} == {"CUDA0"}
    later = placed(spec, parse("--cpu-moe", "-ot", r"blk\.47\.ffn_down_exps=CUDA0", devices=cuda))
    assert later["blk.47.ffn_down_exps.weight"] == "CPU"  # --cpu-moe came first: its pattern wins
    # an override moves tensors of CPU layers onto a device, and the input layer too
    ngl2 = placed(spec, parse("-ngl", "2", "-ot", r"blk\.0\.attn_q\.=CUDA0,token_embd=CUDA0", devices=cuda))
    assert ngl2["blk.0.attn_q.weight"] == ngl2["token_embd.weight"] == ngl2["blk.47.attn_q.weight"] == "CUDA0"
    assert ngl2["blk.0.attn_k.weight"] == ngl2["blk.46.attn_q.weight"] == "CPU"


def test_n_cpu_ffn_moves_the_dense_ffn_of_the_first_blocks(spec_of):
    spec = spec_of("llama-3.1-8b")
    where = placed(spec, parse("--n-cpu-ffn", "3", devices=(Device("CUDA0"),)))
    inputs = [t.name for t, li in zip(spec.tensors, spec.tensor_layer) if li < 0]  # token_embd, rope_freqs
    on_cpu = sorted(n for n, d in where.items() if d == "CPU")
    assert on_cpu == sorted(inputs + [f"blk.{i}.ffn_{w}.weight" for i in range(3) for w in ("gate", "up", "down")])


def _cpu_model_buffers(spec, p):
    return {b.name: b.bytes for b in estimate(spec, p).buffers if b.kind == "model" and b.device == "CPU"}


def test_cpu_overrides_follow_the_cpu_buffer_list(spec_of):
    """An override to the CPU goes through the same buffer-type list as a CPU layer (llama-model-loader.cpp): beside a
    CUDA device the experts are a mapped range (mmap) or in CUDA_Host (no mmap), never repacked; with --no-host, or
    beside RPC devices (no host buffer type), the repackable ones go to CPU_REPACK (x86 AVX2 rules)."""
    spec = spec_of("qwen3-30b-a3b")
    moved = [t for t in spec.tensors if is_expert(t.name) and t.name.startswith(("blk.0.", "blk.1."))]
    emb = next(t for t in spec.tensors if t.name == "token_embd.weight")
    base = parse("--n-cpu-moe", "2", devices=(Device("CUDA0"),))
    base = replace(base, cpu_repack=dict(REPACK_X86_AVX2), n_ctx=4096, n_parallel=1)
    mapped = _cpu_model_buffers(spec, base)
    assert set(mapped) == {"CPU_Mapped"}  # with a CUDA device nothing is repacked
    host = _cpu_model_buffers(spec, replace(base, mmap=False))
    assert host == {"CUDA_Host": sum(pad(t.nbytes, CPU_ALIGNMENT) for t in (*moved, emb))}
    repacked = [t for t in moved if t.type_name in REPACK_X86_AVX2 and t.shape[1] % 8 == 0]
    assert repacked and len(repacked) < len(moved)  # q4_K experts are repacked, the Q6_K down experts are not
    no_host = _cpu_model_buffers(spec, replace(base, mmap=False, no_host=True))
    assert no_host == {"CPU": sum(pad(t.nbytes, CPU_ALIGNMENT) for t in (*moved, emb) if t not in repacked),
                       "CPU_REPACK": sum(pad(t.nbytes, CPU_ALIGNMENT) for t in repacked)}
    rpc = replace(base, mmap=False, devices=(Device("RPC0", endpoint="127.0.0.1:50052"),))
    assert _cpu_model_buffers(spec, rpc) == no_host


def test_a_token_embd_override_takes_the_tied_output_copy_with_it(spec_of):
    """Qwen2.5-0.5B has no output.weight: the output device gets a copy of token_embd. An override that finds
    token_embd sends input and output copy to one buffer type, where the copy is the same tensor (create_tensor)."""
    spec = spec_of("qwen2.5-0.5b")
    devs = (Device("RPC0", endpoint="h:1"), Device("RPC1", endpoint="h:2"))
    emb = next(t for t in spec.tensors if t.name == "token_embd.weight")
    size = pad(emb.nbytes, CPU_ALIGNMENT)  # RPC workers on CPUs: CPU sizes

    def model(p):
        return {b.device: b.bytes for b in estimate(spec, p).buffers if b.kind == "model"}

    plain = model(parse("-ts", "1,1", devices=devs))
    moved = model(parse("-ts", "1,1", "-ot", "token_embd=RPC0[h:1]", devices=devs))
    assert moved["RPC0"] == plain["RPC0"] + size  # the input copy
    assert moved["RPC1"] == plain["RPC1"] - size  # the output copy is that same tensor now
    assert "CPU" not in moved


# ------------------------------------------------------------------------------------------------------------------
# The planner's expert lever
# ------------------------------------------------------------------------------------------------------------------

QWEN3_12G = [Budget("CUDA0", 12 * GiB, GiB), Budget("CPU", 32 * GiB, int(1.6 * GiB))]


def _smallest_fitting_n(spec, budgets, opts, kv=("q8_0", "q8_0"), ctx=4096):
    s = _Search(spec, budgets, opts)
    return next((n for n in range(spec.n_layer + 1) if s.fits(ctx, kv, spec.n_layer + 1, n)), None)


def test_moe_plan_keeps_attention_and_kv_on_the_gpu_with_n_cpu_moe(shape_file, spec_of):
    """Issue 9's case: `plan qwen3:30b --free cuda0=12GiB --free cpu=32GiB` put 27 of 48 layers on the GPU. Now
    every block's attention and KV cache stay on the GPU and the experts of the first 20 blocks go to the CPU: the
    smallest N with which --min-ctx (4096) fits with q8_0, the order's most compact type."""
    r = autoctx("plan", shape_file("qwen3-30b-a3b"), "--free", "cuda0=12GiB", "--free", "cpu=32GiB", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    args = d["llama_server_args"]
    assert args[args.index("-ngl") + 1] == "49" and args[args.index("--n-cpu-moe") + 1] == "20"
    assert (d["plan"]["n_gpu_layers"], d["plan"]["n_cpu_moe"]) == (49, 20)
    # the context is then the largest that fits there: q8_0 (9216 tokens) beats f16 (4864), neither reaches 40960
    assert (d["plan"]["num_ctx"], d["plan"]["cache_type_k"], d["plan"]["cache_type_v"]) == (9216, "q8_0", "q8_0")
    assert d["max_ctx_by_kv"] == {"f16": 4864, "q8_0": 9216}
    assert {b["device"] for b in d["buffers"] if b["kind"] == "kv"} == {"CUDA0"}
    assert d["reasons"][2] == ("all 48 layers' attention and KV cache + output on the GPU, the experts of the first "
                               "20 on the CPU (--n-cpu-moe 20): the fewest that leave room for 4096 tokens")
    assert d["reasons"][3].startswith("each generated token reads 436 MiB of weights from CPU memory (23.8 % of "
                                      "1,831 MiB): expect generation several times slower than a full offload")
    spec = spec_of("qwen3-30b-a3b")
    opts = PlanOptions(cpu_repack={})  # the CLI's host rules do not matter beside CUDA: nothing is repacked
    assert _smallest_fitting_n(spec, QWEN3_12G, opts) == 20  # 19 leaves no room for 4096 tokens
    p = plan(spec, QWEN3_12G, opts)
    where = dict(zip((t.name for t in spec.tensors), tensor_devices(spec, p.estimate.params, p.estimate.layer_device,
                                                                    p.estimate.output_device)))
    assert {n for n, dev in where.items() if dev == "CPU"} == {"token_embd.weight"} | {
        f"blk.{i}.ffn_{w}_exps.weight" for i in range(20) for w in ("gate", "up", "down")}


def test_expert_count_property_against_brute_force(spec_of):
    """Budgets built so that -ngl all --n-cpu-moe k fits with 16 MiB to spare: the plan keeps every layer on the GPU
    with at most k blocks' experts on the CPU, exactly the smallest N that trying every count finds."""
    spec = spec_of("qwen3-30b-a3b")
    kv = ("q8_0", "q8_0")
    opts = PlanOptions(repack=False, kv_fallback=())
    probe = _Search(spec, [Budget("CUDA0", 64 * GiB, 0), Budget("CPU", 64 * GiB, 0)], opts)
    for k in (0, 7, 19, 33, 48):
        est = estimate(spec, probe.params(4096, kv, spec.n_layer + 1, k))
        budgets = [Budget("CUDA0", est.resident_bytes("CUDA0") + 16 * MiB, 0), Budget("CPU", 64 * GiB, 0)]
        p = plan(spec, budgets, opts)
        assert p.n_gpu_layers == spec.n_layer + 1 and p.n_cpu_moe <= k
        assert p.n_cpu_moe == _smallest_fitting_n(spec, budgets, opts)
        assert all(p.estimate.resident_bytes(b.device) <= b.usable for b in budgets)


def test_fewer_layers_only_when_every_expert_in_ram_leaves_no_room(spec_of):
    """A GPU too small for every layer's attention even with --cpu-moe: no (all layers, N) placement fits, so the
    plan keeps every expert in RAM and takes layers off (llama.cpp's fit does the same), the most GPU layers that fit
    (every count tried from the top) — the placement with the fewest RAM bytes per token among those — and then
    brings back the experts of those layers that still fit (none here)."""
    spec = spec_of("qwen3-30b-a3b")
    budgets = [Budget("CUDA0", int(1.6 * GiB), GiB), Budget("CPU", 32 * GiB, int(1.6 * GiB))]
    opts = PlanOptions(repack=False, kv_fallback=())
    p = plan(spec, budgets, opts)
    s = _Search(spec, budgets, opts)
    kv = ("q8_0", "q8_0")
    assert not any(s.fits(4096, kv, spec.n_layer + 1, n) for n in range(spec.n_layer + 1))
    fitting = [ngl for ngl in range(spec.n_layer + 2) if s.fits(4096, kv, ngl, spec.n_layer)]
    assert (p.n_gpu_layers, p.n_cpu_moe) == (max(fitting), 48) == (8, 48)  # 7 blocks' attention and the output
    assert not any(s.fits(4096, kv, 8, n) for n in (0, *range(42, 48)))  # none of their experts fits back
    assert s.reads(8, 48)[0] == min(s.reads(ngl, 48)[0] for ngl in fitting) == token_reads(spec, p.estimate.params)[0]
    assert "only 7 of 48 layers (and the experts of the first 48 blocks) fit on the GPU" in p.reasons[2]
    assert [pl for pl in s.placements(spec.n_layer + 1, fewer=True)][:3] == [(49, 48), (48, 48), (47, 48)]


def test_token_reads_count_a_share_of_the_experts(spec_of):
    spec = spec_of("qwen3-30b-a3b")
    s = _Search(spec, QWEN3_12G, PlanOptions())
    exp0 = sum(t.nbytes * 8 // 128 for t in spec.tensors if is_expert(t.name) and t.name.startswith("blk.0."))
    blk0 = sum(t.nbytes for t in spec.tensors if t.name.startswith("blk.0.") and not is_expert(t.name))
    assert (spec.n_expert_used, spec.n_expert) == (8, 128)
    assert s.reads(49, 0)[0] == 0
    assert s.reads(49, 1)[0] == exp0  # experts of block 0: 8 of 128 read per token
    assert s.reads(48, 0)[0] == blk0 + exp0  # block 0 on the CPU: its dense weights whole
    assert s.reads(49, 0)[1] == s.reads(0, 0)[1] == s.reads(0, 0)[0]


def test_dense_models_and_ollama_keep_the_layer_lever(spec_of):
    spec = spec_of("qwen3-30b-a3b")
    ollama = plan(spec, QWEN3_12G, PlanOptions(runtime="ollama", repack=False))  # a Modelfile has no --n-cpu-moe
    assert ollama.n_cpu_moe == 0 and ollama.n_gpu_layers < spec.n_layer + 1
    assert "PARAMETER num_gpu" in ollama_modelfile(ollama)
    dense = plan(spec_of("llama-3.1-8b"), [Budget("CUDA0", 4 * GiB, GiB), Budget("CPU", 32 * GiB, GiB)])
    assert dense.n_cpu_moe == 0 and "--n-cpu-moe" not in plan_args(dense)


def test_user_overrides_are_kept_and_the_plan_is_redone_around_them(spec_of):
    from autoctx.runtimes.llamacpp.runtime import merged_argv, user_overrides

    user = ["--n-cpu-moe", "30", "--jinja"]
    opts = user_overrides(parse_server_args(user), PlanOptions(repack=False))
    assert opts.tensor_overrides == (("--n-cpu-moe", "30"),)
    p = plan(spec_of("qwen3-30b-a3b"), QWEN3_12G, opts)
    assert p.n_cpu_moe == 0 and p.params.tensor_overrides == (("--n-cpu-moe", "30"),)  # no lever of its own
    assert p.n_gpu_layers == 49 and p.num_ctx > 9216  # 30 blocks' experts off the GPU leave more room than 20
    argv = merged_argv(plan_args(p), user)
    assert argv.count("--n-cpu-moe") == 1 and argv[-3:] == user
    # the user's overrides are what the plan's estimate placed
    assert token_reads(p.spec, p.estimate.params)[0] == _Search(p.spec, QWEN3_12G, PlanOptions()).reads(49, 30)[0]


def test_plan_cli_takes_the_override_flags(shape_file):
    r = autoctx("plan", shape_file("qwen3-30b-a3b"), "--free", "cuda0=12GiB", "--free", "cpu=32GiB", "--cpu-moe",
                "-ot", r"blk\.47\.ffn_down_exps=CUDA0", "--emit", "args")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split()
    assert argv[argv.index("-ngl") + 1] == "49"
    i = argv.index("-ot")  # -ot first (matched first), then --cpu-moe, as the plan modelled them
    assert argv[i:i + 3] == ["-ot", "'blk\\.47\\.ffn_down_exps=CUDA0'", "--cpu-moe"]
    assert "--n-cpu-moe" not in argv


def test_bench_fit_gives_llama_fit_params_only_the_flags_it_takes():
    """scripts/bench_fit.py sizes a plan with llama-fit-params, which refuses llama-server-only flags (-no-kvu...)."""
    import importlib.util
    from pathlib import Path

    where = Path(__file__).resolve().parents[1] / "scripts" / "bench_fit.py"
    loader = importlib.util.spec_from_file_location("bench_fit", where)
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
    argv = ["-c", "5888", "-np", "1", "-ctk", "q8_0", "-no-kvu", "-ngl", "49", "--n-cpu-moe", "19", "--cache-ram",
            "8192", "--ctx-checkpoints", "32", "--fit", "off", "-ot", "x=CPU", "--cpu-moe"]
    assert bench.fit_args(argv) == ["-c", "5888", "-np", "1", "-ctk", "q8_0", "-ngl", "49", "--n-cpu-moe", "19",
                                    "-ot", "x=CPU", "--cpu-moe"]


def test_fewer_layers_then_the_experts_that_still_fit(spec_of):
    """When the output layer's weights leave the second GPU no room (a vocabulary of 2**32 - 1), a split in proportion
    to memory fits only 2 GPU layers (on the first GPU, with their experts: N = 0 reads less from RAM than N = 48 at
    that count). The split by room per layer puts every block and the output layer on the first GPU (-ts 49,0) and
    the experts of 32 blocks in RAM: it reads less from RAM per token than either."""
    from autoctx.planner import GPU_MARGIN, default_margin
    from tests.test_planner import assert_fits_and_is_maximal

    spec = replace(spec_of("qwen3-30b-a3b"), n_vocab=(1 << 32) - 1)
    budgets = [Budget("CUDA0", 24 * GiB, GPU_MARGIN), Budget("CUDA1", 16 * GiB, GPU_MARGIN),
               Budget("CPU", 64 * GiB, default_margin("CPU", 64 * GiB))]
    p = plan(spec, budgets)
    assert (p.n_gpu_layers, p.n_cpu_moe, p.tensor_split, p.estimate.output_device) == (49, 32, (49.0, 0.0), "CUDA0")
    assert_fits_and_is_maximal(p, budgets)
    s = _Search(spec, budgets, PlanOptions())
    s.balance = False  # in proportion to memory
    assert not s.fits(4096, ("q8_0", "q8_0"), 3, spec.n_layer) and s.fits(4096, ("q8_0", "q8_0"), 2, spec.n_layer)
    assert s.reads(49, 32)[0] < s.reads(2, 0)[0] < s.reads(2, 48)[0]


def test_the_expert_counts_stop_before_nextn_blocks(spec_of):
    """A NextN/MTP block is not loaded (unless an MTP context is asked for): no --n-cpu-moe count is spent on it."""
    spec = spec_of("qwen3-30b-a3b")
    full = _Search(spec, QWEN3_12G, PlanOptions()).placements(49, fewer=False)
    assert [n for _, n in full] == list(range(49))
    mtp = replace(spec, n_layer_nextn=1)  # the last block taken for a NextN block
    assert [n for _, n in _Search(mtp, QWEN3_12G, PlanOptions()).placements(49, fewer=False)] == list(range(48))
