"""Around `autoctx run`'s loop (autoctx/loop.py over runtimes.ollama.runtime): start a server if asked, and talk to the
model through the API when the `ollama` CLI is absent."""

from __future__ import annotations

import sys

from ...budgets import budgets_from


def ensure_server(model: str, opts, free, device, margin, say) -> None:
    """Start `ollama serve` when none answers, with the best KV type for this model (quality first); `opts`: the
    plan's options for Ollama (one KV type for K and V)."""
    from ...planner import plan as run_plan
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
    kv = run_plan(spec, budgets, opts).cache_type_k
    data_dir().mkdir(parents=True, exist_ok=True)
    log = str(data_dir() / "ollama-serve.log")
    pid = start_server(kv, log)
    say(f"started `ollama serve` (pid {pid}) with OLLAMA_KV_CACHE_TYPE={kv} OLLAMA_FLASH_ATTENTION=1; log {log}")


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
