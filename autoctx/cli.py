"""The `autoctx` command line: a thin layer over the library. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import signal
import sys
from typing import List, Optional

import typer

from .errors import ArgsError, AutoctxError, Terminated

app = typer.Typer(
    add_completion=True,  # autoctx --install-completion [bash|zsh|fish|powershell]
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Largest safe context for local LLMs on llama.cpp and Ollama, predicted exactly from the GGUF header.",
)

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--help"]}


@app.callback()
def _root() -> None:
    """autoctx: plan, estimate and verify llama.cpp / Ollama memory use."""


def _warn(msg: str) -> None:
    print(f"autoctx: warning: {msg}", file=sys.stderr)


def _mib(n: int) -> str:
    return f"{n / 1048576:,.2f}"


CTX_LIMIT = 2**32 - 1  # llama.cpp's n_ctx is a uint32_t
MAX_SLOTS = 256  # llama.cpp's LLAMA_MAX_SEQ (src/llama-cparams.h): more sequences are refused when the context is made
PLAN_BATCH = 2048  # the -b of every plan (PlanOptions.n_batch); llama.cpp lowers a larger -ub to it


def _in_range(flag: str, value: int, lo: int, hi: int, note: str = "") -> None:
    """An integer option out of its range: one line that names the flag, the range and the value."""
    if not lo <= value <= hi:
        raise ArgsError(f"{flag} must be between {lo} and {hi}{note}, got {value}")


def _seconds(flag: str, value: float) -> float:
    """A wait in seconds: above 0 and finite (nan and inf included in what is refused)."""
    if not 0 < value < float("inf"):
        raise ArgsError(f"{flag} must be a number of seconds above 0, got {value:g}")
    return value


def _context_flags(max_ctx: int, min_ctx: int) -> None:
    """--max-ctx (0: the model's trained context) and --min-ctx, as every planning command takes them."""
    _in_range("--max-ctx", max_ctx, 0, CTX_LIMIT, " (0: the model's trained context)")
    _in_range("--min-ctx", min_ctx, 1, CTX_LIMIT)
    if max_ctx and min_ctx > max_ctx:
        raise ArgsError(f"--min-ctx {min_ctx} is above --max-ctx {max_ctx}")


def _kv_list(flag: str, text: str, runtime: str = "llamacpp") -> tuple[tuple[str, str], ...]:
    """--kv-types: a comma-separated list of TYPE or K/V, at least one; Ollama's need K = V."""
    kinds = tuple(_kv_pair(t, flag) for t in text.split(",") if t.strip())
    if not kinds:
        raise ArgsError(f"{flag} is empty (e.g. {flag} f16,q8_0,q8_0/q4_0,q4_0)")
    if runtime == "ollama":  # one server-wide type for K and V (OLLAMA_KV_CACHE_TYPE)
        kinds = tuple(k for k in kinds if k[0] == k[1])
        if not kinds:
            raise ArgsError(f"{flag} {text!r}: Ollama uses one type for K and V; give at least one such type")
    return kinds


def _kv_policy(kinds: tuple[tuple[str, str], ...] | None, runtime: str = "llamacpp") -> dict:
    """PlanOptions' KV order: the user's list as given (no fallback), else the quality-first default."""
    from .planner import DEFAULT_KV_FALLBACK

    if kinds is not None:
        return {"kv_order": kinds, "kv_fallback": ()}
    if runtime == "ollama":  # one server-wide type for K and V
        return {"kv_fallback": tuple(k for k in DEFAULT_KV_FALLBACK if k[0] == k[1])}
    return {}


def _estimate(model: str, server_args: Optional[List[str]], devices: str = ""):
    """Parse llama-server arguments, read the model, predict. Returns (Estimate, ParsedArgs)."""
    from .memory import estimate as run_estimate
    from .model import load_spec
    from .runtimes.llamacpp.args import parse_devices, parse_server_args, with_devices

    parsed = parse_server_args(list(server_args or []))
    if parsed.ignored:
        _warn("not modelled (passed through as they are): " + " ".join(dict.fromkeys(parsed.ignored)))
    params = parsed.params
    if devices:
        params = with_devices(params, parse_devices("--devices", devices))
    rpc = [d.name for d in params.devices if d.backend.remote and d.remote is None]
    if rpc:
        _warn(f"{', '.join(rpc)}: RPC worker assumed to run its CPU (one device per --rpc server); name another "
              "worker backend in --devices, e.g. 'RPC0[host:port]@cuda'")
    path = parsed.model or model
    if _ollama_name_not_file(path):
        raise AutoctxError(f"{path}: no such file; estimate and check read a GGUF file (plan, serve, run and modelfile "
                           "also take Ollama model names)")
    from .extras import load_extras

    spec = load_spec(path)
    est = run_estimate(spec, params, extras=load_extras(params, spec))
    for note in est.notes:
        _warn(note)
    return est, parsed


@app.command(context_settings=PASSTHROUGH)
def estimate(
    model: str = typer.Argument(..., help="GGUF file (first part of a split model is enough)"),
    server_args: Optional[List[str]] = typer.Argument(None, help="llama-server arguments (memory-relevant subset)"),
    as_json: bool = typer.Option(False, "--json", help="print the estimate as JSON"),
    devices: str = typer.Option("", "--devices", help="devices llama.cpp would use, in its names and order, e.g. "
                                "CUDA0,CUDA1 or Vulkan0@4 (the device's alignment) or RPC0[host:port]@cuda (an RPC "
                                "worker and its backend); default: the --rpc servers' CPUs, else none (a CPU build)"),
) -> None:
    """What llama-server would allocate for MODEL with these arguments, per device and kind."""
    est, _ = _estimate(model, server_args, devices)
    if as_json:
        print(json.dumps(estimate_json(est), indent=2))
        return
    print_estimate_table(est)


@app.command(context_settings=PASSTHROUGH)
def check(
    model: str = typer.Argument(..., help="GGUF file"),
    server_args: Optional[List[str]] = typer.Argument(None, help="llama-server arguments"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
    llama_server: str = typer.Option("", "--llama-server", help="llama-server binary (default: "
                                     "$AUTOCTX_LLAMA_SERVER, then PATH)"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds to wait for the server to load"),
) -> None:
    """Start llama-server with these arguments until it has allocated, stop it, and print predicted vs actual.

    Exit status: 0 when every buffer is within tolerance (exact for model/KV/output, 10 % for compute),
    4 when a prediction missed, 1 when the server failed to load.
    """
    from .runtimes.llamacpp.build import read_build
    from .runtimes.llamacpp.launch import find_llama_server, measure_allocation
    from .runtimes.llamacpp.server import ServerError, last_lines
    from .verify import compare, format_rows

    _seconds("--timeout", timeout)
    argv = list(server_args or [])
    est, parsed = _estimate(model, argv)
    binary = find_llama_server(llama_server or None)
    build = read_build(binary, devices=False)
    if build.difference():
        _warn(build.difference())
    run_argv = argv if parsed.model else ["-m", model, *argv]
    m = measure_allocation(binary, run_argv, timeout=timeout)
    if not m.ready:
        raise ServerError(f"llama-server exited with status {m.returncode} before it was ready; last lines:\n"
                          + last_lines(m.log_text))
    rows = compare(est, m.log, other_build=not build.pinned)
    if as_json:
        print(json.dumps({**estimate_json(est), "argv": m.argv, "comparison": [r.as_dict() for r in rows],
                          "llama_server": build.as_dict()}, indent=2))
    else:
        print_estimate_table(est)
        print()
        print(f"llama-server ({' '.join(m.argv[1:])}) reported:")
        print(format_rows(rows))
    if not all(r.ok for r in rows):
        sys.exit(4)


@app.command()
def probe(
    as_json: bool = typer.Option(False, "--json", help="print the devices as JSON"),
    rpc: str = typer.Option("", "--rpc", help="HOST:PORT[,HOST:PORT...]: llama.cpp RPC workers, listed as "
                            "llama-server sees them"),
    llama_server: str = typer.Option("", "--llama-server", help="llama-server binary for --rpc (default: "
                                     "$AUTOCTX_LLAMA_SERVER, then PATH)"),
) -> None:
    """Free memory per device: NVIDIA (NVML), AMD (amdsmi or sysfs), system RAM, and RPC workers (--rpc)."""
    from .probe.devices import join_listed, probe as run_probe
    from .units import gib

    workers = ()
    if rpc:
        from .runtimes.llamacpp.args import rpc_devices
        from .runtimes.llamacpp.build import rpc_workers
        from .runtimes.llamacpp.launch import find_llama_server

        endpoints = [d.endpoint for d in rpc_devices("--rpc", rpc)]  # checked HOST:PORT items
        workers = rpc_workers(find_llama_server(llama_server or None), endpoints)
    r = run_probe()
    r.devices += join_listed([], workers)[0]  # each RPC device with the worker's own memory report
    for w in r.warnings:
        _warn(w)
    if as_json:
        print(json.dumps({"devices": [d.as_dict() for d in r.devices], "warnings": r.warnings,
                          "skipped": r.skipped}, indent=2))
        return
    print(f"{'device':<8}{'total':>14}{'free':>14}{'used':>14}  description")
    for d in r.devices:
        desc = f"RPC worker {d.description}" if d.kind == "rpc" else d.description
        print(f"{d.name:<8}{gib(d.total_bytes):>14}{gib(d.free_bytes):>14}{gib(d.used_bytes):>14}  {desc}"
              + (f" (driver {d.driver}{', ' + d.runtime if d.runtime else ''})" if d.driver else ""))
        for pr in d.processes:
            used = gib(pr.used_bytes) if pr.used_bytes is not None else "?"
            print(f"{'':<8}  pid {pr.pid} {pr.name}: {used}")


@app.command()
def plan(
    model: str = typer.Argument(..., help="GGUF file"),
    runtime: str = typer.Option("llamacpp", "--runtime", help="llamacpp or ollama"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    emit: str = typer.Option("", "--emit", help="print only the llama-server arguments (args) or the Modelfile"),
    free: Optional[List[str]] = typer.Option(None, "--free", help="DEVICE=SIZE, e.g. cuda0=24GiB or cpu=16GiB "
                                             "(repeatable); replaces the probe; an RPC device (rpc0=8GiB or "
                                             "HOST:PORT=8GiB) caps what its worker reports"),
    device: str = typer.Option("", "--device", help="cpu: plan for system RAM only"),
    margin: Optional[List[str]] = typer.Option(None, "--margin", help="SIZE to leave free on every device, or "
                                               "DEVICE=SIZE for one (cuda0, cpu, rpc0, HOST:PORT; repeatable); "
                                               "default: 1 GiB per GPU; 1 GiB or 5 % of RAM (a CPU RPC worker's too)"),
    rpc: str = typer.Option("", "--rpc", help="HOST:PORT[,HOST:PORT...]: llama.cpp RPC workers (ggml-rpc-server) to "
                            "plan across, first in llama.cpp's device order; HOST:PORT@cuda names a worker's backend "
                            "(default cpu)"),
    llama_server: str = typer.Option("", "--llama-server", help="llama-server binary that asks the --rpc workers "
                                     "(default: $AUTOCTX_LLAMA_SERVER, then PATH)"),
    max_ctx: int = typer.Option(0, "--max-ctx", help="largest context to consider (default: n_ctx_train)"),
    min_ctx: int = typer.Option(4096, "--min-ctx", help="smallest acceptable context"),
    kv_types: Optional[str] = typer.Option(None, "--kv-types", help="KV types to try, in order (K/V for different "
                                           "types); default f16,q8_0, then q8_0/q4_0,q4_0 only if q8_0 cannot reach "
                                           "--min-ctx (said loudly); a list given here has no fallback"),
    kv_type: str = typer.Option("", "--kv-type", help="force one KV type (e.g. q8_0 or q8_0/q4_0)"),
    parallel: int = typer.Option(1, "--parallel", help="slots (each gets num_ctx tokens)"),
    ubatch: int = typer.Option(512, "--ubatch", help="physical batch size"),
    chart: str = typer.Option("", "--chart", help="write the memory-vs-context chart to FILE.svg or FILE.png "
                              "(replaced atomically; a symbolic link at FILE is refused)"),
    no_repack: bool = typer.Option(False, "--no-repack", help="plan for llama-server --no-repack"),
    override_tensor: Optional[List[str]] = typer.Option(None, "-ot", "--override-tensor", help="plan for "
                                                        "llama-server -ot PATTERN=BUFFER_TYPE[,...] (repeatable; "
                                                        "matched before the flags below, the first match wins)"),
    cpu_moe: bool = typer.Option(False, "--cpu-moe", help="plan with every MoE expert on the CPU"),
    n_cpu_moe: Optional[int] = typer.Option(None, "--n-cpu-moe", help="plan with the experts of the first N blocks on "
                                            "the CPU (default: for a MoE model the plan picks N)"),
    n_cpu_ffn: Optional[int] = typer.Option(None, "--n-cpu-ffn", help="plan with the FFN of the first N blocks on "
                                            "the CPU"),
    mmproj: str = typer.Option("", "--mmproj", help="plan with this multimodal projector (a clip GGUF) loaded too; "
                               "on the first GPU unless --no-mmproj-offload"),
    no_mmproj_offload: bool = typer.Option(False, "--no-mmproj-offload", help="the projector on the CPU"),
    model_draft: str = typer.Option("", "--model-draft", "-md", help="plan with this draft model for speculative "
                                    "decoding (emits --spec-type draft-simple)"),
    lora: Optional[List[str]] = typer.Option(None, "--lora", help="plan with this LoRA adapter (repeatable)"),
    cache_ram: Optional[int] = typer.Option(None, "--cache-ram", help="llama-server's host prompt cache in MiB, "
                                            "counted in the RAM budget (-1 no limit, 0 off; default: the RAM left "
                                            "after the plan, at most 8192)"),
    ctx_checkpoints: Optional[int] = typer.Option(None, "--ctx-checkpoints", help="context checkpoints per slot, "
                                                  "counted in the RAM budget (default: up to 32, as many as fit)"),
) -> None:
    """The largest safe context, the KV cache type and the GPU layers for MODEL on this machine (or --free)."""
    from .budgets import budgets_from
    from .planner import PlanOptions, plan as run_plan
    from .probe.cpu import host_repack_rules
    from .report import plan_table, settings, svg_chart, text_chart

    if runtime not in ("llamacpp", "ollama"):
        raise ArgsError(f"--runtime must be llamacpp or ollama, got {runtime!r}")
    if emit not in ("", "args", "modelfile"):
        raise ArgsError(f"--emit must be args or modelfile, got {emit!r}")
    _context_flags(max_ctx, min_ctx)
    _in_range("--parallel", parallel, 1, MAX_SLOTS)
    _in_range("--ubatch", ubatch, 1, PLAN_BATCH, f" (the plan's batch size, -b {PLAN_BATCH})")
    kinds = None if kv_types is None else _kv_list("--kv-types", kv_types, runtime)
    forced = _kv_pair(kv_type, "--kv-type") if kv_type else None
    if forced and runtime == "ollama" and forced[0] != forced[1]:
        raise ArgsError(f"--kv-type {kv_type}: Ollama uses one type for K and V")
    overrides = _tensor_overrides(override_tensor or [], cpu_moe, n_cpu_moe, n_cpu_ffn)
    if overrides and runtime == "ollama":
        raise ArgsError("-ot/--cpu-moe/--n-cpu-moe/--n-cpu-ffn are llama-server flags: an Ollama Modelfile has none")
    if chart:
        _chart_mode(chart)  # a bad --chart is said before the plan is made
    if rpc and runtime == "ollama":
        raise ArgsError("--rpc is llama-server's: Ollama does not plan across RPC workers")
    budgets = budgets_from(free or [], device, margin, warn=_warn, rpc=rpc, llama_server=llama_server or None)
    opts = PlanOptions(runtime=runtime, max_ctx=max_ctx or None, min_ctx=min_ctx, **_kv_policy(kinds, runtime),
                       kv_forced=forced, n_parallel=parallel, n_ubatch=ubatch, repack=not no_repack,
                       cpu_repack=host_repack_rules(), tensor_overrides=overrides)
    from .resolve import resolve

    spec = resolve(model)
    opts = _beside(opts, spec, runtime, mmproj, no_mmproj_offload, model_draft, lora or [], cache_ram,
                   ctx_checkpoints)
    if runtime == "ollama" and not mmproj and spec.source != "gguf":  # Ollama passes the tag's projector
        from .extras import with_ollama_projector

        opts = with_ollama_projector(opts, model, spec)
    p = run_plan(spec, budgets, opts)
    args = p.llama_server_args()
    modelfile = p.modelfile()
    if chart:
        _write_chart(chart, p, svg_chart)
    if emit == "args":
        print(" ".join(_quote(a) for a in args))
        return
    if emit == "modelfile":
        print(modelfile, end="")
        return
    if as_json:
        print(json.dumps({"model": {"name": spec.name, "path": spec.path, "source": spec.source},
                          "plan": p.as_dict(), "buffers": [b.as_dict() for b in p.estimate.buffers],
                          "budget": [{"device": b.device, "free_bytes": b.free_bytes, "margin_bytes": b.margin_bytes,
                                      **({"endpoint": b.dev.endpoint} if b.dev and b.dev.endpoint else {}),
                                      **({"shares": b.shares} if b.shares else {})} for b in p.budgets],
                          "llama_server_args": args, "modelfile": modelfile, "reasons": p.reasons,
                          "max_ctx_by_kv": p.max_ctx_by_kv}, indent=2))
        return
    print(f"{spec.name if spec.source != 'gguf' else spec.path}: {spec.architecture}, {spec.n_layer} layers, "
          f"n_ctx_train {spec.n_ctx_train}")
    if spec.source.startswith("shipped profile"):
        print(f"  not pulled: architecture and weights from the {spec.source}")
    print(settings(p))
    print()
    print(plan_table(p))
    print()
    print(text_chart(p))
    print()
    print("llama-server " + " ".join(_quote(a) for a in args) if runtime == "llamacpp" else modelfile.rstrip())


@app.command(context_settings=PASSTHROUGH)
def serve(
    model: str = typer.Argument(..., help="GGUF file"),
    server_args: Optional[List[str]] = typer.Argument(None, help="-- then extra llama-server arguments (they win "
                                                      "over the plan, which is redone around them)"),
    free: Optional[List[str]] = typer.Option(None, "--free", help="DEVICE=SIZE (repeatable); replaces the probe; "
                                             "an RPC device (rpc0=8GiB, HOST:PORT=8GiB) caps its worker's report"),
    device: str = typer.Option("", "--device", help="cpu: plan for system RAM only"),
    margin: Optional[List[str]] = typer.Option(None, "--margin", help="SIZE to leave free on every device, or "
                                               "DEVICE=SIZE for one (cuda0, cpu, rpc0, HOST:PORT; repeatable)"),
    rpc: str = typer.Option("", "--rpc", help="HOST:PORT[,HOST:PORT...]: llama.cpp RPC workers to plan across and "
                            "load onto (HOST:PORT@cuda names a worker's backend; default cpu)"),
    max_ctx: int = typer.Option(0, "--max-ctx", help="largest context to consider"),
    min_ctx: int = typer.Option(4096, "--min-ctx", help="smallest acceptable context"),
    kv_types: Optional[str] = typer.Option(None, "--kv-types", help="KV types to try, in order (default f16,q8_0, "
                                           "then q8_0/q4_0,q4_0 only if needed, said loudly)"),
    llama_server: str = typer.Option("", "--llama-server", help="llama-server binary (default: "
                                     "$AUTOCTX_LLAMA_SERVER, then PATH)"),
    check: bool = typer.Option(False, "--check", help="stop the server after verification (for scripts and CI)"),
    as_json: bool = typer.Option(False, "--json", help="print the verification report as JSON"),
    max_tries: int = typer.Option(3, "--max-tries", help="launches before giving up on out-of-memory"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds to wait for /health"),
    no_profile: bool = typer.Option(False, "--no-profile", help="neither read nor write a profile"),
) -> None:
    """Plan, start llama-server, verify what it allocated, and keep serving (or stop with --check).

    Exit status: the server's own when serving; with --check 0 when verified, 4 when a prediction missed.
    """
    import os

    from .budgets import budget_flags, budgets_from
    from .planner import PlanOptions
    from .probe.cpu import host_repack_rules
    from .profiles import ProfileStore
    from .report import settings
    from .resolve import resolve
    from .runtimes.llamacpp.args import parse_server_args
    from .runtimes.llamacpp.build import read_build
    from .runtimes.llamacpp.launch import find_llama_server
    from .serve import probe_after_load, serve_llamacpp
    from .verify import format_rows

    flags = budget_flags(free or [], device, margin, rpc)  # the command line is checked before anything is started
    _context_flags(max_ctx, min_ctx)
    _in_range("--max-tries", max_tries, 1, 100)
    _seconds("--timeout", timeout)
    kinds = None if kv_types is None else _kv_list("--kv-types", kv_types)
    if "rpc" in parse_server_args(list(server_args or [])).explicit:  # llama-server's arguments too
        raise ArgsError("give the RPC workers to autoctx (serve --rpc HOST:PORT,...), not after --: the plan places "
                        "layers on them")
    binary = find_llama_server(llama_server or None)
    build = read_build(binary)  # its release (vs the one autoctx mirrors) and its devices, in its names and order
    if build.difference():
        _warn(build.difference())
    budgets, desc, driver = budgets_from(free or [], device, margin, describe=True, warn=_warn, listed=build.devices,
                                         rpc=rpc, llama_server=binary)
    opts = PlanOptions(max_ctx=max_ctx or None, min_ctx=min_ctx, **_kv_policy(kinds), cpu_repack=host_repack_rules())
    say = (lambda m: print(f"autoctx: {m}", file=sys.stderr))
    spec = resolve(model, pulled_only=True)
    if not os.path.isfile(spec.path):
        raise AutoctxError(f"{model}: serve needs the model's GGUF on this machine (a path or a pulled Ollama "
                           "model)")
    result = serve_llamacpp(spec, budgets, opts, list(server_args or []), binary, max_tries=max_tries,
                            timeout=timeout, store=None if no_profile else ProfileStore(), devices_desc=desc,
                            driver=driver, after_load=None if flags.free else probe_after_load, build=build, say=say)
    server = result.server
    with server:  # whatever happens from here on (a closed pipe, a signal), the server does not outlive autoctx
        if as_json:
            print(json.dumps(result.report(), indent=2))
        else:
            print(settings(result.plan))
            print(f"llama-server {' '.join(_quote(a) for a in server.argv[1:])}")
            print(format_rows(result.rows))
            for n in result.notes:
                if n.startswith(tuple(f"{b.device}:" for b in result.plan.budgets)):
                    print(n)
            for f in result.flags:
                print(f"autoctx: warning: {f}", file=sys.stderr)
            if result.profile_path:
                print(f"profile saved: {result.profile_path}")
        sys.stdout.flush()
        if check:
            sys.exit(0 if result.ok else 4)
        say(f"serving on {server.url} (Ctrl-C stops it); its log: {server.log_path}")
        status = server.serve_foreground()
        if status not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
            say(f"llama-server exited with status {status}; its log is kept: {server.keep_log()}")
        sys.exit(status)


RUN_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True, "help_option_names": ["--help"]}


@app.command(context_settings=RUN_SETTINGS)
def run(
    model: str = typer.Argument(..., help="Ollama model name, e.g. qwen2.5:32b"),
    prompt: Optional[List[str]] = typer.Argument(None, help="prompt, as for `ollama run`"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and the commands, change nothing"),
    name: str = typer.Option("", "--name", help="derived model name (default: MODEL-autoctx)"),
    free: Optional[List[str]] = typer.Option(None, "--free", help="DEVICE=SIZE (repeatable); replaces the probe"),
    device: str = typer.Option("", "--device", help="cpu: plan for system RAM only"),
    margin: str = typer.Option("", "--margin", help="memory to leave free on every device"),
    max_ctx: int = typer.Option(0, "--max-ctx", help="largest context to consider"),
    min_ctx: int = typer.Option(4096, "--min-ctx", help="smallest acceptable context"),
    pull_model: bool = typer.Option(False, "--pull", help="pull MODEL first if it is not in the local store"),
    evict: bool = typer.Option(False, "--evict", help="unload the other models the server holds, and plan with "
                               "their memory"),
    start_server: bool = typer.Option(False, "--start-server", help="when no Ollama server answers, start "
                                      "`ollama serve` with the KV cache type the plan wants"),
    timeout: float = typer.Option(0.0, "--timeout", help="seconds a load, generate or pull may wait for the "
                                  "server (default: $AUTOCTX_OLLAMA_TIMEOUT, else 600)"),
) -> None:
    """Like `ollama run MODEL [PROMPT]`, on a derived model with the largest safe num_ctx for this machine.

    autoctx's own flags go before MODEL. Messages go to stderr; stdout is the model's answer.
    """
    import os
    import shutil

    from .report import settings as plan_settings
    from .runtimes.ollama.client import OllamaAPI, load_timeout
    from .runtimes.ollama.flow import api_run, ensure_server, ollama_plan
    from .runtimes.ollama.run import derived_name, ensure_derived, load_and_verify, plan_parameters
    from .runtimes.ollama.server import ollama_host
    from .runtimes.ollama.store import parse_name

    from .budgets import budget_args

    say = (lambda m: print(f"autoctx: {m}", file=sys.stderr))
    parse_name(model)  # a path or a `..` name is refused before anything is opened
    if name:
        parse_name(name)
    budget_args(free or [], device, margin)  # the command line is checked before the server is asked
    _context_flags(max_ctx, min_ctx)
    seconds = load_timeout(timeout)
    if start_server and not dry_run:
        ensure_server(model, free, device, margin, max_ctx, min_ctx, say)
    if pull_model or evict:
        from .resolve import NotPulled, ollama_store
        from .runtimes.ollama.run import pull, unload_others

        if pull_model:
            try:
                ollama_store(model)
            except NotPulled:
                pull(OllamaAPI(ollama_host(), seconds), model, sys.stderr)
        if evict and not dry_run:
            for other, vram in unload_others(OllamaAPI(ollama_host(), seconds), derived_name(model)):
                say(f"unloaded {other} ({vram / 2**30:.2f} GiB of GPU memory)")
    srv, spec, p = ollama_plan(model, free, device, margin, max_ctx, min_ctx, say, timeout=seconds)
    kv = srv.kv_cache_type
    target = name or derived_name(spec.name)
    params = " ".join(f"{k}={v}" for k, v in plan_parameters(p).items())
    if dry_run:
        print(plan_settings(p))
        print(f"server: {srv.url} (Ollama {srv.version}; KV {kv}, {srv.num_parallel} parallel; {srv.env_source})")
        print(f"would create: {target} from {spec.name} with {params}")
        print(f"would run: ollama run {target}" + "".join(f" {_quote(x)}" for x in prompt or []))
        return
    api = OllamaAPI(srv.url, seconds)
    action = ensure_derived(api, spec.name, target, p)
    say(f"{action} {target} ({params}, KV {kv})")
    check = load_and_verify(api, target, p)
    for w in check.warnings:
        say(f"WARNING: {w}")
    from .profiles import ProfileStore
    from .runtimes.ollama.run import record_load

    on_gpu = f" ({check.size_vram / 2**30:.2f} GiB in GPU memory)" if p.n_gpu_layers else ""
    per_gpu = None
    if p.n_gpu_layers and not free:  # the driver's per-process memory of this model's runner, per GPU
        from .runtimes.ollama.run import runner_memory

        blob = os.path.basename(spec.path)
        rm = runner_memory(blob if blob.startswith("sha256-") else None)
        for line in rm.lines:
            say(f"driver: {line}")
        for n in rm.notes:
            say(n)
        per_gpu = rm.per_gpu
    path, notes = record_load(ProfileStore(), p.profile_key, spec, p, check, per_gpu)
    for n in notes:
        say(n)
    say(f"loaded: {check.size / 2**30:.2f} GiB{on_gpu}, context {check.context_length}; profile {path}")
    exe = shutil.which("ollama")
    if exe:
        sys.stdout.flush()
        os.execv(exe, ["ollama", "run", target, *(prompt or [])])
    api_run(api, target, list(prompt or []))


@app.command()
def modelfile(
    model: str = typer.Argument(..., help="Ollama model name"),
    free: Optional[List[str]] = typer.Option(None, "--free", help="DEVICE=SIZE (repeatable); replaces the probe"),
    device: str = typer.Option("", "--device", help="cpu: plan for system RAM only"),
    margin: str = typer.Option("", "--margin", help="memory to leave free on every device"),
    max_ctx: int = typer.Option(0, "--max-ctx", help="largest context to consider"),
    min_ctx: int = typer.Option(4096, "--min-ctx", help="smallest acceptable context"),
) -> None:
    """Print the Modelfile `autoctx run` would create, planned for the Ollama server's real settings."""
    from .budgets import budget_args
    from .runtimes.ollama.flow import ollama_plan
    from .runtimes.ollama.store import parse_name

    parse_name(model)
    budget_args(free or [], device, margin)  # the command line is checked before the server is asked
    _context_flags(max_ctx, min_ctx)
    _, spec, p = ollama_plan(model, free, device, margin, max_ctx, min_ctx,
                              lambda m: print(f"autoctx: {m}", file=sys.stderr))
    print(p.modelfile(from_=spec.name), end="")


profile_app = typer.Typer(help="Per-model profiles: plans, measurements and learned corrections.",
                          rich_markup_mode=None, no_args_is_help=True)
app.add_typer(profile_app, name="profile")


PROFILE_REF = "profile id prefix (at least 4 hex digits), model path or model name"


@profile_app.command("list")
def profile_list() -> None:
    """Stored profiles, one line each (a file that is not a readable profile: one warning line, skipped)."""
    from .profiles import ProfileStore

    store = ProfileStore()
    profs = store.all()
    for w in store.warnings:
        _warn(w)
    for p in profs:
        plan = p.plan
        print(f"{p.key.id}  {p.model_name or p.model_path}  num_ctx {plan.get('num_ctx')} "
              f"KV {plan.get('cache_type_k')}/{plan.get('cache_type_v')}  runs {p.runs}  {p.key.devices}")


@profile_app.command("show")
def profile_show(ref: str = typer.Argument(..., help=PROFILE_REF)) -> None:
    """One profile as TOML (REF must name exactly one)."""
    import tomli_w

    print(tomli_w.dumps(_one_profile(ref).to_toml_dict()), end="")


@profile_app.command("rm")
def profile_rm(
    ref: str = typer.Argument(..., help=PROFILE_REF),
    every: bool = typer.Option(False, "--all", help="remove every profile of the model REF names"),
) -> None:
    """Delete the profile REF names, and only it.

    An id prefix must be at least 4 hex digits and start only one profile's id. A model path or name that several
    profiles share (other devices, drivers or runtime builds) is refused unless --all is given; --all never widens
    an id prefix. An empty REF is an error.
    """
    from .profiles import ProfileError

    store, found = _select_profiles(ref, every=True)
    if len(found) > 1 and not every:
        raise ProfileError(f"{len(found)} profiles match {ref!r}: give one's id (autoctx profile list shows them), "
                           "or --all to remove them all")
    for prof in found:
        store.remove(prof)
        print(f"removed {prof.key.id}")


@profile_app.command("generate", context_settings=PASSTHROUGH)
def profile_generate(
    model: str = typer.Argument(..., help="GGUF file"),
    server_args: Optional[List[str]] = typer.Argument(None, help="-- then extra llama-server arguments"),
    device: str = typer.Option("", "--device", help="cpu: plan for system RAM only"),
    llama_server: str = typer.Option("", "--llama-server", help="llama-server binary"),
) -> None:
    """Plan, load with llama-server, verify, save the profile (serve --check)."""
    serve(model=model, server_args=server_args, free=None, device=device, margin=None, rpc="", max_ctx=0,
          min_ctx=4096, kv_types=None, llama_server=llama_server, check=True, as_json=False, max_tries=3,
          timeout=300.0, no_profile=False)


def _one_profile(ref: str):
    return _select_profiles(ref, every=False)[1][0]


def _select_profiles(ref: str, every: bool):
    """(store, the profiles REF names); other unreadable profiles are one warning line each."""
    from .profiles import ProfileStore

    store = ProfileStore()
    try:
        return store, store.select(ref, every=every)
    finally:
        for w in store.warnings:
            _warn(w)


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def _tensor_overrides(ot: List[str], cpu_moe: bool, n_cpu_moe: Optional[int],
                      n_cpu_ffn: Optional[int]) -> tuple[tuple[str, str], ...]:
    """plan's override options as memory.Params.tensor_overrides, in the order plan emits them (-ot first), checked
    as llama-server checks them."""
    from .memory import Params
    from .runtimes.llamacpp.args import parse_server_args

    argv = [a for v in ot for a in ("-ot", v)] + (["--cpu-moe"] if cpu_moe else [])
    argv += ["--n-cpu-moe", str(n_cpu_moe)] if n_cpu_moe is not None else []
    argv += ["--n-cpu-ffn", str(n_cpu_ffn)] if n_cpu_ffn is not None else []
    return parse_server_args(argv, base=Params()).params.tensor_overrides


def _kv_pair(text: str, flag: str = "--kv-type") -> tuple[str, str]:
    """TYPE (K and V) or K/V, e.g. q8_0 or q8_0/q4_0."""
    from .memory import KV_TYPES

    parts = [t.strip() for t in text.strip().lower().split("/")]
    if len(parts) > 2 or "" in parts:
        raise ArgsError(f"{flag}: {text!r} is not a KV cache type nor K/V (e.g. q8_0 or q8_0/q4_0)")
    for t in parts:
        if t not in KV_TYPES:
            raise ArgsError(f"{flag}: unknown KV cache type {t!r} (allowed: {', '.join(KV_TYPES)})")
    return parts[0], parts[-1]


def _ollama_name_not_file(text: str) -> bool:
    """TEXT names no file but reads as an Ollama model name (qwen2.5:32b), not as a path to a GGUF."""
    import os

    from .runtimes.ollama.store import BadModelName, parse_name

    if os.path.lexists(text) or text.endswith(".gguf") or ":" not in text:
        return False
    try:
        parse_name(text)
    except BadModelName:
        return False
    return True


def _chart_mode(path: str) -> int:
    """--chart checked before anything is planned or written: a .svg or .png name, not a symbolic link, nothing but
    a regular file there now. Returns the mode the chart gets (the old file's, else 0666 less the umask)."""
    import os
    import stat

    from .errors import AutoctxError

    if not path.endswith((".svg", ".png")):
        raise ArgsError(f"--chart must end in .svg or .png, got {path!r}")
    if path.endswith(".png"):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ArgsError("--chart FILE.png needs matplotlib (pip install matplotlib); FILE.svg needs nothing")
    if os.path.islink(path):
        raise ArgsError(f"--chart {path} is a symbolic link; autoctx does not write through links (remove it or give "
                        "the path it points to)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
    except OSError as e:
        raise AutoctxError(f"cannot write --chart {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ArgsError(f"--chart {path} is {what}; autoctx replaces only a regular file")
    return st.st_mode & 0o7777


def _write_chart(path: str, p, svg_chart) -> None:
    """Write the chart to a new temporary file in PATH's folder (mkstemp: O_EXCL, so no planted name such as
    PATH.tmp is ever opened) and rename it over PATH. A symbolic link at PATH itself is refused, never followed."""
    import os
    import tempfile

    from .errors import AutoctxError

    mode = _chart_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=path[-4:],
                                   dir=os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise AutoctxError(f"cannot write --chart {path}: {e.strerror}") from None
    try:
        if path.endswith(".svg"):
            with os.fdopen(fd, "w") as fh:
                fh.write(svg_chart(p))
        else:
            os.close(fd)
            from .report import png_chart

            png_chart(p, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise AutoctxError(f"cannot write --chart {path}: {e.strerror or e}") from None
        raise


def _beside(opts, spec, runtime: str, mmproj: str, no_offload: bool, draft: str, lora: List[str],
            cache_ram: Optional[int], checkpoints: Optional[int]):
    """plan's --mmproj/--model-draft/--lora/--cache-ram/--ctx-checkpoints as llama-server would take them
    (serve.beside_options); a draft model comes with --spec-type draft-simple, without which llama-server frees it."""
    from .memory import Params
    from .runtimes.llamacpp.args import parse_server_args
    from .serve import beside_options

    if runtime == "ollama" and (draft or lora or cache_ram is not None or checkpoints is not None):
        raise ArgsError("--model-draft/--lora/--cache-ram/--ctx-checkpoints are llama-server flags: an Ollama "
                        "Modelfile has none")
    argv = (["--mmproj", mmproj] if mmproj else []) + (["--no-mmproj-offload"] if no_offload else [])
    argv += ["-md", draft, "--spec-type", "draft-simple"] if draft else []
    argv += [a for f in lora for a in ("--lora", f)]
    argv += ["--cache-ram", str(cache_ram)] if cache_ram is not None else []
    argv += ["--ctx-checkpoints", str(checkpoints)] if checkpoints is not None else []
    if not argv:
        return opts
    return beside_options(parse_server_args(argv, base=Params()), opts, spec)


def estimate_json(est) -> dict:
    p = est.params
    args = p.as_dict()
    args.update({"n_ctx": est.n_ctx, "n_ctx_seq": est.n_ctx_seq, "n_batch": est.n_batch, "n_ubatch": est.n_ubatch,
                 "n_outputs_max": est.n_outputs_max, "flash_attn_resolved": est.flash_attn,
                 "kv_cells": est.kv_cells, "swa_cells": est.swa_cells, "n_gpu_layers_resolved": est.n_gpu_layers,
                 "requested_n_ctx": p.n_ctx})
    return {
        "model": est.spec.summary(),
        "args": args,
        "buffers": [b.as_dict() for b in est.buffers],
        "total_bytes": est.total_bytes,
        "after_health": [b.as_dict() for b in est.later],
        "notes": est.notes,
    }


def print_estimate_table(est) -> None:
    spec = est.spec
    print(f"{spec.path}")
    print(f"  {spec.architecture}, {spec.n_layer} layers, n_ctx_train {spec.n_ctx_train}, "
          f"ctx {est.n_ctx} ({est.n_ctx_seq}/seq x {est.params.n_parallel} slots"
          f"{', unified' if est.params.kv_unified else ''}), KV {est.params.cache_type_k}/{est.params.cache_type_v}, "
          f"flash-attn {'on' if est.flash_attn else 'off'}" + (f", SWA cache {est.swa_cells} cells" if est.swa_cells
                                                                 else ""))
    kinds = ["model", "kv", "compute", "output"]
    devices = list(dict.fromkeys(b.device for b in est.buffers))
    head = f"{'device':<10}" + "".join(f"{k:>12}" for k in kinds) + f"{'total':>12}"
    print(head + "   (MiB)")
    for d in devices:
        row = [est.kind_bytes(k, d) for k in kinds]
        print(f"{d:<10}" + "".join(f"{_mib(v):>12}" for v in row) + f"{_mib(sum(row)):>12}")
    print(f"{'total':<10}" + "".join(f"{_mib(est.kind_bytes(k)):>12}" for k in kinds) + f"{_mib(est.total_bytes):>12}")
    print_extra_buffers(est)


def print_extra_buffers(est) -> None:
    """The buffers beside the model (projector, draft, MTP, LoRA; included in the table above) and the host memory
    llama-server fills after /health (prompt cache, context checkpoints; not in the table), one line each."""
    beside = [b for b in est.buffers if b.detail.startswith(("projector", "draft", "LoRA", "MTP"))]
    if beside:
        print("beside the model (in the table above):")
        for b in beside:
            print(f"  {b.device:<8}{b.kind:<9}{_mib(b.bytes):>12}  {b.name}: {b.detail}")
    if est.later:
        print("after /health, in host memory (not in the table):")
        for b in est.later:
            print(f"  {b.device:<8}{b.kind:<13}{_mib(b.bytes):>12}  up to: {b.detail}")


def _error_line(msg: str) -> str:
    """`autoctx: error: MSG` on one line: line breaks and other unprintable characters (a path or a name the user
    typed) are shown escaped. A server's log tail, after "last lines:", is the one part kept on lines of its own."""
    head, sep, tail = msg.partition("last lines:\n")
    return "autoctx: error: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in head) + sep + tail


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    try:
        status = app(standalone_mode=False)  # Ctrl-C comes back as typer's Exit(130), returned here
        sys.exit(status if isinstance(status, int) else 0)
    except Terminated as e:
        sys.exit(e.exit_code)
    except AutoctxError as e:
        print(_error_line(str(e)), file=sys.stderr)
        sys.exit(e.exit_code)
    except (ValueError, OSError) as e:  # GGUFError is a ValueError
        print(_error_line(str(e)), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            print(_error_line(e.format_message()), file=sys.stderr)
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
