"""The Ollama flow behind `autoctx run` and `autoctx modelfile`: start a server if asked, plan for the server's real
settings (with the profile's correction), and talk to the model through the API when the `ollama` CLI is absent."""

from __future__ import annotations

import sys

from ...budgets import budgets_from


def ensure_server(model, free, device, margin, max_ctx, min_ctx, say) -> None:
    """Start `ollama serve` when none answers, with the best KV type for this model (quality first)."""
    from ...planner import PlanOptions, plan as run_plan
    from ...probe.cpu import host_repack_rules
    from ...profiles import data_dir
    from ...resolve import resolve_ollama
    from .server import NoServer, ollama_host, server_version, start_server

    try:
        server_version(ollama_host(), timeout=2)
        return
    except NoServer:  # a server that answers wrongly is not replaced: its error line stands
        pass
    spec = resolve_ollama(model, shipped=True)
    budgets = budgets_from(free or [], device, margin, warn=say)
    opts = PlanOptions(runtime="ollama", max_ctx=max_ctx or None, min_ctx=min_ctx,
                       kv_fallback=(("q4_0", "q4_0"),), cpu_repack=host_repack_rules())  # one type for K and V
    kv = run_plan(spec, budgets, opts).cache_type_k
    data_dir().mkdir(parents=True, exist_ok=True)
    log = str(data_dir() / "ollama-serve.log")
    pid = start_server(kv, log)
    say(f"started `ollama serve` (pid {pid}) with OLLAMA_KV_CACHE_TYPE={kv} OLLAMA_FLASH_ATTENTION=1; log {log}")


def ollama_plan(model, free, device, margin, max_ctx, min_ctx, say, timeout: float | None = None):
    """The server's settings, the model (from the store) and the plan for them; suggests a quantized KV cache."""
    from dataclasses import replace as dc_replace

    from ...planner import PlanOptions, plan as run_plan
    from ...probe.cpu import host_repack_rules
    from ...resolve import resolve_ollama
    from .server import enable_kv_instructions, ollama_host, server_settings
    from .store import parse_name

    parse_name(model)  # a bad name (a path, `..`) is refused before anything is opened or asked
    srv = server_settings(ollama_host(), timeout=min(10.0, timeout or 10.0))
    for n in srv.notes:
        say(n)
    spec = resolve_ollama(model)
    from ...profiles import ProfileStore, apply_corrections
    from .run import profile_key

    budgets, desc, driver = budgets_from(free or [], device, margin, describe=True, warn=say)
    key = profile_key(spec, desc, driver, srv.version)
    store = ProfileStore()
    budgets, corrections = apply_corrections(budgets, store.get(key))
    for w in store.warnings:
        say(f"warning: {w}")
    kv = srv.kv_cache_type
    opts = PlanOptions(runtime="ollama", max_ctx=max_ctx or srv.context_length or None, min_ctx=min_ctx,
                       kv_forced=(kv, kv), n_parallel=srv.num_parallel,
                       flash_attn="on" if kv != "f16" else srv.flash_attention, cpu_repack=host_repack_rules())
    from ...extras import Extras, ollama_projector

    proj = ollama_projector(model, spec)  # Ollama loads it with --mmproj: counted on the GPU it offloads to
    if proj is not None:
        opts = dc_replace(opts, beside={"mmproj": proj[0]}, extras=Extras(projector=proj[1]))
    p = run_plan(spec, budgets, opts)
    p.reasons += corrections
    p.profile_key = key
    if kv == "f16":
        alt = run_plan(spec, budgets, dc_replace(opts, kv_forced=("q8_0", "q8_0"), flash_attn="on"))
        if alt.num_ctx >= 1.25 * p.num_ctx:
            say(f"with a q8_0 KV cache the server could give {alt.num_ctx} tokens instead of {p.num_ctx}; the KV "
                f"type is server-wide, enable it with:\n  {enable_kv_instructions('q8_0')}")
    return srv, spec, p


def api_run(api, model: str, prompt: list[str]) -> None:
    """`ollama run` without the CLI: stream a generate for a prompt (stdin appended), or chat interactively."""
    text = " ".join(prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped}\n\n{text}".strip() if text else piped
    if text:
        for part in api.generate(model, text):
            sys.stdout.write(part)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    history: list[dict] = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return
        if line.strip() in ("/bye", "/exit"):
            return
        history.append({"role": "user", "content": line})
        reply = ""
        for part in api.chat(model, history):
            reply += part
            sys.stdout.write(part)
            sys.stdout.flush()
        print()
        history.append({"role": "assistant", "content": reply})
