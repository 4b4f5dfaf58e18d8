"""Find llama-server, and launch it only until it has allocated: `measure_allocation`.

`measure_allocation` runs the server until it has allocated everything (/health answers), then stops it: the
load-and-report step that `autoctx check`, the tests and the benchmark share (`autoctx serve` keeps the
`server.LlamaServer` running instead).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from .logparse import ServerLog, parse_server_log
from .server import LlamaServer, ServerError


def find_llama_server(explicit: str | None = None) -> str:
    """--llama-server PATH, else $AUTOCTX_LLAMA_SERVER, else llama-server on PATH."""
    for cand in (explicit, os.environ.get("AUTOCTX_LLAMA_SERVER")):
        if cand:
            if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
                raise ServerError(f"llama-server not found or not executable: {cand}")
            return cand
    found = shutil.which("llama-server")
    if not found:
        raise ServerError("llama-server not found: pass --llama-server PATH or set AUTOCTX_LLAMA_SERVER")
    return found


@dataclass
class Measurement:
    argv: list[str]
    log_text: str
    log: ServerLog
    ready: bool
    returncode: int | None  # None: we stopped it after it was ready
    seconds: float


def measure_allocation(binary: str, args: list[str], timeout: float = 120.0) -> Measurement:
    """Start llama-server with `args`, wait until /health answers (or it exits), stop it, and parse its log."""
    t0 = time.monotonic()
    with LlamaServer(binary, args) as server:  # stopped and its log removed on every way out
        server.start()
        ready = server.wait_ready(timeout)  # ServerError (with the log tail) on timeout
        returncode = None if ready else server.returncode()
        server.stop()
        text = server.log_text()
    return Measurement(server.argv, text, parse_server_log(text), ready, returncode, time.monotonic() - t0)
