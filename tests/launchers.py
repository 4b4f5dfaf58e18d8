"""Launchers injected into the serve loop by the tests (serve_llamacpp's `launch`): a real llama-server, with extra
arguments on the first launch only (e.g. a context no machine can hold), to prove the out-of-memory step-down."""

from __future__ import annotations

import signal

from autoctx.runtimes.llamacpp.server import LlamaServer


def first_launch_with(*extra: str):
    """launch(binary, argv) -> LlamaServer: the first one with EXTRA appended; `launch.argvs` records every argv."""
    argvs: list[list[str]] = []

    def launch(binary: str, argv: list[str]) -> LlamaServer:
        argvs.append(list(argv))
        return LlamaServer(binary, [*argv, *extra] if len(argvs) == 1 else argv)

    launch.argvs = argvs
    return launch


def sigint_as_a_terminal_gives_it() -> None:
    """preexec_fn for a CLI the tests signal: the child starts with SIGINT at its default, as from an interactive
    shell. Under a background job (`make test &`, nohup, some CI runners) it inherits SIG_IGN; Python then installs
    no KeyboardInterrupt handler, and a program is right to keep ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
