"""Who owns a launched server: no orphan, no temp log, no leaked descriptor, the exit status a shell expects.

These use a stand-in binary (a shell script that never answers /health, or exits at once), so they need no llama.cpp
build; the real-server versions are in tests/test_serve.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autoctx.runtimes.llamacpp.server import LlamaServer
from tests.launchers import sigint_as_a_terminal_gives_it


def fake_server(tmp_path: Path, body: str) -> str:
    """An executable that answers --version like llama-server and otherwise runs `body` (sh)."""
    path = tmp_path / "llama-server"
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "version: 1 (fake)"; exit 0; fi\n{body}\n')
    path.chmod(0o755)
    return str(path)


# never answers /health; its command line keeps the arguments it was given (the tests' markers)
SLEEPER = f'exec {sys.executable} -c "import time; time.sleep(300)" "$@"'


def processes_with(marker: str, but: int = 0) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            alive = p.status() != psutil.STATUS_ZOMBIE
            if p.pid != but and alive and any(marker in a for a in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def start_cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), AUTOCTX_DATA_DIR=str(tmp_path / "data"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "autoctx.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=sigint_as_a_terminal_gives_it)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_while_the_server_loads_stops_it_and_exits_as_a_shell_expects(tmp_path, gemma_path, sig, status):
    marker = f"marker-{sig}-{os.getpid()}"
    binary = fake_server(tmp_path, SLEEPER)
    # `check` starts the server and polls /health, which the stand-in never answers
    proc = start_cli(["check", gemma_path, "--llama-server", binary, "--", "--alias", marker], tmp_path)
    server = wait_for(lambda: processes_with(marker, but=proc.pid))[0]
    assert server.ppid() == proc.pid
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert not processes_with(marker)  # the server went with autoctx: no orphan re-parented to init
    assert list((tmp_path / "tmp").iterdir()) == []  # and its temporary log went too


def test_a_server_that_exits_at_once_leaves_no_log_and_one_error(tmp_path, gemma_path):
    binary = fake_server(tmp_path, 'echo "error: unknown argument: --bogus" >&2; exit 1')
    proc = start_cli(["check", gemma_path, "--llama-server", binary, "--", "--bogus"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.splitlines()[-2:] == [
        "autoctx: error: llama-server exited with status 1 before it was ready; last lines:",
        "error: unknown argument: --bogus"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_fifty_launches_leak_no_descriptor_and_no_log(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    binary = fake_server(tmp_path, "exit 3")
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with LlamaServer(binary, ["-m", "x.gguf"]) as s:
            s.start()
            assert s.wait_ready(10) is False and s.returncode() == 3
    assert len(os.listdir("/proc/self/fd")) == fds
    assert [p.name for p in tmp_path.iterdir()] == ["llama-server"]


def test_an_exception_inside_the_block_stops_the_server(tmp_path):
    marker = f"inside-{os.getpid()}"
    binary = fake_server(tmp_path, SLEEPER)
    with pytest.raises(RuntimeError):
        with LlamaServer(binary, ["--alias", marker]) as s:
            s.start()
            wait_for(lambda: processes_with(marker))
            log = s.log_path
            raise RuntimeError("after the load")
    assert not processes_with(marker) and not log.exists()


def test_kept_log_survives_close(tmp_path):
    binary = fake_server(tmp_path, "echo loaded; exit 0")
    s = LlamaServer(binary, [], log_path=None)
    s.start()
    s.proc.wait()
    kept = s.keep_log()
    s.close()
    assert kept.read_text() == "loaded\n"
    kept.unlink()


@pytest.mark.parametrize("value", ["abc", "0", "70000", ""])
def test_a_bad_port_is_said_in_the_users_terms(tmp_path, gemma_path, value):
    binary = fake_server(tmp_path, "exit 0")
    proc = start_cli(["check", gemma_path, "--llama-server", binary, "--", "--port", value], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err == f"autoctx: error: --port expects a TCP port number 1-65535, got {value!r}\n"  # before any warning


def test_the_server_starts_with_no_signal_held_back(tmp_path):
    """autoctx holds signals back around the fork; the server must not inherit that (it would ignore Ctrl-C)."""
    binary = fake_server(tmp_path, "exec grep -E '^Sig(Blk|Ign)' /proc/self/status")
    with LlamaServer(binary, []) as s:
        s.start()
        s.proc.wait()
        assert "SigBlk:\t0000000000000000\n" in s.log_text()
