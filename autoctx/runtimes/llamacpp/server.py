"""Start llama-server with an argv list and read what it allocated.

`measure_allocation` runs the server only until it has allocated everything (it prints "listening on"), then
stops it: the load-and-report step that the tests, the benchmark and `autoctx serve --check` share.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from ...errors import AutoctxError
from .logparse import ServerLog, parse_server_log

READY_MARKERS = ("server is listening", "listening on http")


class ServerError(AutoctxError):
    """llama-server could not be found, did not start, or exited."""


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Measurement:
    argv: list[str]
    log_text: str
    log: ServerLog
    ready: bool
    returncode: int | None  # None: we stopped it after it was ready
    seconds: float


def measure_allocation(binary: str, args: list[str], timeout: float = 120.0, env: dict[str, str] | None = None
                       ) -> Measurement:
    """Run `binary args... --port P -lv 4` until ready (or exit), stop it, and parse its log."""
    argv = [binary, *args]
    if "--port" not in args:
        argv += ["--port", str(free_port())]
    if "-lv" not in args and "--log-verbosity" not in args and "-v" not in args:
        argv += ["-lv", "4"]
    t0 = time.monotonic()
    with tempfile.TemporaryFile(mode="w+b") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        ready = False
        pos = 0
        tail = b""
        try:
            while time.monotonic() - t0 < timeout:
                rc = proc.poll()
                out.seek(pos)
                chunk = out.read()
                pos += len(chunk)
                tail = (tail + chunk)[-4096:]
                if any(m.encode() in tail for m in READY_MARKERS):
                    ready = True
                    break
                if rc is not None:
                    break
                time.sleep(0.05)
        finally:
            returncode = proc.poll()
            if returncode is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
    if not ready and returncode is None:
        raise ServerError(f"llama-server did not finish loading within {timeout:.0f} s: {' '.join(argv)}")
    return Measurement(argv, text, parse_server_log(text), ready, None if ready else returncode,
                       time.monotonic() - t0)


def last_lines(text: str, n: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])
