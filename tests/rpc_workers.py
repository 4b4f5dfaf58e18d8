"""Real llama.cpp RPC workers for the tests: the pinned build's ggml-rpc-server (scripts/llama-server-path --bin
ggml-rpc-server) bound to 127.0.0.1 on ephemeral ports, one thread each, started and stopped by the tests.

tests/conftest.py's `rpc_endpoints` fixture (two workers per test module) and `rpc_worker` (one more worker for a
test of its own, e.g. one it kills) use these; every worker is stopped and reaped at teardown, and the teardown
checks with psutil that none of them, and no llama-server started by the tests, outlives them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from autoctx.runtimes.llamacpp.server import free_port

MiB = 1024 * 1024

ROOT = Path(__file__).resolve().parents[1]


def worker_binary() -> str:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "llama-server-path"), "--bin", "ggml-rpc-server"],
                          capture_output=True, text=True, check=True).stdout.strip()


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (/proc/net/tcp: local address 0100007F:PORT, state 0A)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in lines))


def start_worker(binary: str, folder: Path, k: int) -> tuple[subprocess.Popen, int]:
    """One ggml-rpc-server on 127.0.0.1, on a port that was free a moment ago (retried if another process took it)."""
    for attempt in range(5):
        port = free_port()
        log = open(folder / f"rpc-worker-{k}-{attempt}.log", "w")
        proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port), "-t", "1"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not listening(port):
            time.sleep(0.05)
        if proc.poll() is None and listening(port):
            return proc, port
        stop(proc)
    raise RuntimeError(f"ggml-rpc-server did not start; see {folder}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def orphans(pids: list[int]) -> list[str]:
    """The given workers still alive, and any llama-server among this process's descendants: none should be."""
    out = []
    for p in [psutil.Process(p) for p in pids if psutil.pid_exists(p)] + psutil.Process().children(recursive=True):
        try:
            alive = p.status() != psutil.STATUS_ZOMBIE
            if alive and (p.pid in pids or p.name().startswith("llama-server")):
                out.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            continue
    return out


def load_on_workers(llama_server: str, path: str, endpoints: list[str], args: list[str], timeout: float,
                    every_device_used: bool = True):
    """Load `path` with `--rpc ENDPOINTS ARGS --fit off` in the real llama-server until it has allocated, and
    estimate the same argv with each device's free memory as the log gives it (the default split follows it) ->
    (Estimate, Measurement, argv). `every_device_used`: each listed device must appear in the log's device list."""
    from dataclasses import replace

    from autoctx.memory import estimate
    from autoctx.model import load_spec
    from autoctx.runtimes.llamacpp.args import parse_server_args
    from autoctx.runtimes.llamacpp.launch import measure_allocation
    from autoctx.runtimes.llamacpp.server import last_lines

    argv = ["--rpc", ",".join(endpoints), *args, "--fit", "off"]
    m = measure_allocation(llama_server, ["-m", path, *argv], timeout=timeout)
    assert m.ready, last_lines(m.log_text, 30)
    p = parse_server_args(argv).params
    free = {d.name: d.free_bytes for d in m.log.devices_used}
    p = replace(p, devices=tuple(replace(d, free_bytes=free[d.name] if every_device_used else free.get(d.name))
                                 for d in p.devices))
    return estimate(load_spec(path), p), m, argv


def printed(m, kind: str) -> list[tuple[str, str, float]]:
    """The buffers of `kind` llama-server printed: (device, buffer name, MiB), sorted."""
    return sorted((b.device, b.name, b.mib) for b in m.log.buffers if b.kind == kind)


def predicted(est, kind: str) -> list[tuple[str, str, float]]:
    """The estimate's buffers of `kind` as llama-server prints them (MiB to 0.01), sorted."""
    return sorted((b.device, b.name, round(b.bytes / MiB, 2)) for b in est.buffers if b.kind == kind)
