"""What each command does, as library calls with plain values: cli.py declares the options and calls these, and a
command that runs another (profile generate: serve --check) calls it here, with these functions' own defaults.
Tables and JSON come from report.py; messages go to stderr, results to stdout. A function returns the command's exit
status (None: 0)."""

from __future__ import annotations

import json
import sys
from typing import Callable, Optional, Sequence

from .errors import ArgsError, AutoctxError
from .options import RUNTIMES, chart_mode, in_range, ollama_name_not_file, plan_options, seconds


def warn(msg: str) -> None:
    print(f"autoctx: warning: {msg}", file=sys.stderr)


def say(msg: str) -> None:
    print(f"autoctx: {msg}", file=sys.stderr)


def _estimate(model: str, server_args: Sequence[str], devices: str = ""):
    """Parse llama-server arguments, read the model, predict. Returns (Estimate, ParsedArgs)."""
    from .extras import load_extras
    from .memory import estimate as run_estimate
    from .model import load_spec
    from .runtimes.llamacpp.args import parse_devices, parse_server_args, with_devices

    parsed = parse_server_args(list(server_args))
    if parsed.ignored:
        warn("not modelled (passed through as they are): " + " ".join(dict.fromkeys(parsed.ignored)))
    params = parsed.params
    if devices:
        params = with_devices(params, parse_devices("--devices", devices))
    rpc = [d.name for d in params.devices if d.backend.remote and d.remote is None]
    if rpc:
        warn(f"{', '.join(rpc)}: RPC worker assumed to run its CPU (one device per --rpc server); name another "
             "worker backend in --devices, e.g. 'RPC0[host:port]@cuda'")
    path = parsed.model or model
    if ollama_name_not_file(path):
        raise AutoctxError(f"{path}: no such file; estimate and check read a GGUF file (plan, serve, run and modelfile "
                           "also take Ollama model names)")
    spec = load_spec(path)
    est = run_estimate(spec, params, extras=load_extras(params, spec))
    for note in est.notes:
        warn(note)
    return est, parsed


def estimate(model: str, server_args: Sequence[str] = (), as_json: bool = False, devices: str = "") -> None:
    from .report import estimate_json, estimate_table

    est, _ = _estimate(model, server_args, devices)
    print(json.dumps(estimate_json(est), indent=2) if as_json else estimate_table(est))


def check(model: str, server_args: Sequence[str] = (), as_json: bool = False, llama_server: str = "",
          timeout: float = 300.0) -> int:
    from .report import estimate_json, estimate_table
    from .runtimes.llamacpp.build import read_build
    from .runtimes.llamacpp.launch import find_llama_server, measure_allocation
    from .runtimes.llamacpp.server import ServerError, last_lines
    from .verify import compare, format_rows

    seconds("--timeout", timeout)
    argv = list(server_args)
    est, parsed = _estimate(model, argv)
    binary = find_llama_server(llama_server or None)
    build = read_build(binary, devices=False)
    if build.difference():
        warn(build.difference())
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
        print(estimate_table(est))
        print()
        print(f"llama-server ({' '.join(m.argv[1:])}) reported:")
        print(format_rows(rows))
    return 0 if all(r.ok for r in rows) else 4


def probe(as_json: bool = False, rpc: str = "", llama_server: str = "") -> None:
    from .probe.devices import join_listed, probe as run_probe
    from .report import probe_table

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
        warn(w)
    if as_json:
        print(json.dumps({"devices": [d.as_dict() for d in r.devices], "warnings": r.warnings,
                          "skipped": r.skipped}, indent=2))
        return
    print(probe_table(r.devices))


def plan(model: str, runtime: str = "llamacpp", as_json: bool = False, emit: str = "", free: Sequence[str] = (),
         device: str = "", margin: Sequence[str] = (), rpc: str = "", llama_server: str = "", max_ctx: int = 0,
         min_ctx: int = 4096, kv_types: Optional[str] = None, kv_type: str = "", parallel: int = 1,
         ubatch: int = 512, chart: str = "", no_repack: bool = False, override_tensor: Sequence[str] = (),
         cpu_moe: bool = False, n_cpu_moe: Optional[int] = None, n_cpu_ffn: Optional[int] = None, mmproj: str = "",
         no_mmproj_offload: bool = False, model_draft: str = "", lora: Sequence[str] = (),
         cache_ram: Optional[int] = None, ctx_checkpoints: Optional[int] = None) -> None:
    from .budgets import budgets_from
    from .planner import plan as run_plan
    from .report import command_line, plan_json, plan_text
    from .resolve import resolve
    from .runtimes.llamacpp.runtime import plan_args
    from .runtimes.ollama.runtime import modelfile as render_modelfile

    if runtime not in RUNTIMES:
        raise ArgsError(f"--runtime must be llamacpp or ollama, got {runtime!r}")
    if emit not in ("", "args", "modelfile"):
        raise ArgsError(f"--emit must be args or modelfile, got {emit!r}")
    opts = plan_options(runtime, max_ctx=max_ctx, min_ctx=min_ctx, kv_types=kv_types, kv_type=kv_type,
                        parallel=parallel, ubatch=ubatch, no_repack=no_repack, override_tensor=override_tensor,
                        cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe, n_cpu_ffn=n_cpu_ffn)
    if chart:
        chart_mode(chart)  # a bad --chart is said before the plan is made
    if rpc and runtime == "ollama":
        raise ArgsError("--rpc is llama-server's: Ollama does not plan across RPC workers")
    budgets = budgets_from(list(free), device, list(margin), warn=warn, rpc=rpc, llama_server=llama_server or None)
    spec = resolve(model)
    opts = _beside(opts, spec, runtime, mmproj, no_mmproj_offload, model_draft, list(lora), cache_ram,
                   ctx_checkpoints)
    if runtime == "ollama" and not mmproj and spec.source != "gguf":  # Ollama passes the tag's projector
        from .runtimes.ollama.projector import with_ollama_projector

        opts = with_ollama_projector(opts, model, spec)
    p = run_plan(spec, budgets, opts)
    args = plan_args(p)
    modelfile = render_modelfile(p)
    if chart:
        write_chart(chart, p)
    if emit == "args":
        print(command_line(args))
    elif emit == "modelfile":
        print(modelfile, end="")
    elif as_json:
        print(json.dumps(plan_json(spec, p, args, modelfile), indent=2))
    else:
        print(plan_text(spec, p, "llama-server " + command_line(args) if runtime == "llamacpp"
                        else modelfile.rstrip()))


def _beside(opts, spec, runtime: str, mmproj: str, no_offload: bool, draft: str, lora: list[str],
            cache_ram: Optional[int], checkpoints: Optional[int]):
    """plan's --mmproj/--model-draft/--lora/--cache-ram/--ctx-checkpoints as llama-server would take them
    (beside_options); a draft model comes with --spec-type draft-simple, without which llama-server frees it."""
    from .memory import Params
    from .runtimes.llamacpp.args import parse_server_args
    from .runtimes.llamacpp.runtime import beside_options

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


def write_chart(path: str, p) -> None:
    """Write the chart to a new temporary file in PATH's folder (mkstemp: O_EXCL, so no planted name such as
    PATH.tmp is ever opened) and rename it over PATH. A symbolic link at PATH itself is refused, never followed."""
    import os
    import tempfile

    from .report import png_chart, svg_chart

    mode = chart_mode(path)
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
            png_chart(p, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise AutoctxError(f"cannot write --chart {path}: {e.strerror or e}") from None
        raise


def serve(model: str, server_args: Sequence[str] = (), free: Sequence[str] = (), device: str = "",
          margin: Sequence[str] = (), rpc: str = "", max_ctx: int = 0, min_ctx: int = 4096,
          kv_types: Optional[str] = None, llama_server: str = "", check: bool = False, as_json: bool = False,
          max_tries: int = 3, timeout: float = 300.0, no_profile: bool = False,
          launch: Optional[Callable] = None) -> int:
    """Plan, start llama-server, verify, record; keep serving in the foreground (its exit status) or, with `check`,
    stop (0 verified, 4 a prediction missed). `launch(binary, argv)`: how each attempt's server is made."""
    import signal

    from .budgets import budget_flags, budgets_from
    from .loop import closed_loop, plan_once
    from .profiles import ProfileStore
    from .report import command_line, serve_text
    from .runtimes.llamacpp.args import parse_server_args
    from .runtimes.llamacpp.build import read_build
    from .runtimes.llamacpp.launch import find_llama_server
    from .runtimes.llamacpp.runtime import LlamaCpp, probe_after_load

    flags = budget_flags(list(free), device, list(margin), rpc)  # the command line is checked before anything starts
    opts = plan_options(max_ctx=max_ctx, min_ctx=min_ctx, kv_types=kv_types)
    in_range("--max-tries", max_tries, 1, 100)
    seconds("--timeout", timeout)
    if "rpc" in parse_server_args(list(server_args)).explicit:  # llama-server's arguments too
        raise ArgsError("give the RPC workers to autoctx (serve --rpc HOST:PORT,...), not after --: the plan places "
                        "layers on them")
    binary = find_llama_server(llama_server or None)
    build = read_build(binary)  # its release (vs the one autoctx mirrors) and its devices, in its names and order
    if build.difference():
        warn(build.difference())
    budgets, desc, driver = budgets_from(list(free), device, list(margin), describe=True, warn=warn,
                                         listed=build.devices, rpc=rpc, llama_server=binary)
    rt = LlamaCpp(binary, list(server_args), timeout=timeout, build=build, devices_desc=desc, driver=driver,
                  after_load=None if flags.free else probe_after_load, launch=launch)
    spec = rt.resolve(model)
    store = None if no_profile else ProfileStore()
    result = closed_loop(rt, plan_once(rt, spec, budgets, opts, store, say), store, max_tries, say, build=build)
    server = result.server
    with server:  # whatever happens from here on (a closed pipe, a signal), the server does not outlive autoctx
        if as_json:
            print(json.dumps(result.report(), indent=2))
        else:
            print(serve_text(result, command_line(server.argv[1:])))
            for f in result.flags:
                warn(f)
            if result.profile_path:
                print(f"profile saved: {result.profile_path}")
        sys.stdout.flush()
        if check:
            return 0 if result.ok else 4
        say(f"serving on {server.url} (Ctrl-C stops it); its log: {server.log_path}")
        status = server.serve_foreground()
        if status not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
            say(f"llama-server exited with status {status}; its log is kept: {server.keep_log()}")
        return status


def _ollama_checks(model: str, free: Sequence[str], device: str, margin: Sequence[str], max_ctx: int,
                   min_ctx: int, name: str = ""):
    """run's and modelfile's command line checked before the server is asked; the plan's options."""
    from .budgets import budget_args
    from .runtimes.ollama.store import parse_name

    parse_name(model)  # a path or a `..` name is refused before anything is opened
    if name:
        parse_name(name)
    budget_args(list(free), device, list(margin))
    return plan_options("ollama", max_ctx=max_ctx, min_ctx=min_ctx)


def _ollama_planned(model: str, opts, free: Sequence[str], device: str, margin: Sequence[str],
                    timeout: float | None = None, target: str = ""):
    """The Ollama runtime on the server's real settings, the model, and the first plan (the profile applied)."""
    from .budgets import budgets_from
    from .loop import plan_once
    from .profiles import ProfileStore
    from .runtimes.ollama.run import derived_name
    from .runtimes.ollama.runtime import Ollama

    rt = Ollama.connect(model, say, timeout, per_gpu=not free)
    spec = rt.resolve(model)
    budgets, rt.devices_desc, rt.driver = budgets_from(list(free), device, list(margin), describe=True, warn=say)
    rt.target = target or derived_name(spec.name)
    store = ProfileStore()
    return rt, store, plan_once(rt, spec, budgets, opts, store, say)


def run(model: str, prompt: Sequence[str] = (), dry_run: bool = False, name: str = "", free: Sequence[str] = (),
        device: str = "", margin: Sequence[str] = (), max_ctx: int = 0, min_ctx: int = 4096, pull_model: bool = False,
        evict: bool = False, start_server: bool = False, timeout: float = 0.0) -> None:
    """`ollama run` on a derived model planned for this machine: the same loop as serve, over Ollama."""
    import os
    import shutil

    from .loop import closed_loop
    from .report import command_line, settings
    from .runtimes.ollama.client import OllamaAPI, load_timeout
    from .runtimes.ollama.flow import api_run, ensure_server
    from .runtimes.ollama.run import derived_name, plan_parameters
    from .runtimes.ollama.server import ollama_host

    opts = _ollama_checks(model, free, device, margin, max_ctx, min_ctx, name)
    wait = load_timeout(timeout)
    if start_server and not dry_run:
        ensure_server(model, opts, list(free), device, list(margin), say)
    if pull_model or evict:
        from .resolve import NotPulled, ollama_store
        from .runtimes.ollama.run import pull, unload_others

        if pull_model:
            try:
                ollama_store(model)
            except NotPulled:
                pull(OllamaAPI(ollama_host(), wait), model, sys.stderr)
        if evict and not dry_run:
            for other, vram in unload_others(OllamaAPI(ollama_host(), wait), derived_name(model)):
                say(f"unloaded {other} ({vram / 2**30:.2f} GiB of GPU memory)")
    rt, store, first = _ollama_planned(model, opts, free, device, margin, wait, name)
    p, srv = first.plan, rt.srv
    if dry_run:
        params = " ".join(f"{k}={v}" for k, v in plan_parameters(p).items())
        print(settings(p))
        print(f"server: {srv.url} (Ollama {srv.version}; KV {srv.kv_cache_type}, {srv.num_parallel} parallel; "
              f"{srv.env_source})")
        print(f"would create: {rt.target} from {p.spec.name} with {params}")
        print(f"would run: ollama run {rt.target}" + "".join(f" {command_line([x])}" for x in prompt))
        return
    result = closed_loop(rt, first, store, 1, say)
    check = result.server
    on_gpu = f" ({check.size_vram / 2**30:.2f} GiB in GPU memory)" if p.n_gpu_layers else ""
    say(f"loaded: {check.size / 2**30:.2f} GiB{on_gpu}, context {check.context_length}; profile "
        f"{result.profile_path}")
    exe = shutil.which("ollama")
    if exe:
        sys.stdout.flush()
        os.execv(exe, ["ollama", "run", rt.target, *prompt])
    api_run(OllamaAPI(srv.url, wait), rt.target, list(prompt))


def modelfile(model: str, free: Sequence[str] = (), device: str = "", margin: Sequence[str] = (), max_ctx: int = 0,
              min_ctx: int = 4096) -> None:
    """The Modelfile `run` would create, planned for the Ollama server's real settings."""
    from .runtimes.ollama.runtime import modelfile as render_modelfile

    opts = _ollama_checks(model, free, device, margin, max_ctx, min_ctx)
    _, _, first = _ollama_planned(model, opts, free, device, margin)
    print(render_modelfile(first.plan, from_=first.plan.spec.name), end="")


def profile_list() -> None:
    from .profiles import ProfileStore
    from .report import profile_line

    store = ProfileStore()
    profs = store.all()
    for w in store.warnings:
        warn(w)
    for p in profs:
        print(profile_line(p))


def profile_show(ref: str) -> None:
    import tomli_w

    print(tomli_w.dumps(_select_profiles(ref, every=False)[1][0].to_toml_dict()), end="")


def profile_rm(ref: str, every: bool = False) -> None:
    from .profiles import ProfileError

    store, found = _select_profiles(ref, every=True)
    if len(found) > 1 and not every:
        raise ProfileError(f"{len(found)} profiles match {ref!r}: give one's id (autoctx profile list shows them), "
                           "or --all to remove them all")
    for prof in found:
        store.remove(prof)
        print(f"removed {prof.key.id}")


def profile_generate(model: str, server_args: Sequence[str] = (), device: str = "", llama_server: str = "") -> int:
    """Plan, load with llama-server, verify, save the profile: serve --check with serve's own defaults."""
    return serve(model, server_args, device=device, llama_server=llama_server, check=True)


def _select_profiles(ref: str, every: bool):
    """(store, the profiles REF names); other unreadable profiles are one warning line each."""
    from .profiles import ProfileStore

    store = ProfileStore()
    try:
        return store, store.select(ref, every=every)
    finally:
        for w in store.warnings:
            warn(w)
