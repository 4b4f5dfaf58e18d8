"""Shared fixtures: the real llama-server (built from the pinned sdist), the real Gemma-3-270M GGUF, shape-only GGUFs.

Building llama-server (with the ggml-rpc-server worker the RPC tests start) the first time takes ~18 minutes on 2
cores (scripts/llama-server-path caches it); the Makefile's `test` target builds it before pytest starts, so a test
never waits on it silently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def llama_server() -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "llama-server-path")], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="session")
def gemma_path() -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gemma-gguf-path")], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="session")
def shape_file(tmp_path_factory):
    """shape_file(name) -> path of a shape-only GGUF for autoctx.catalog's entry (written once per session)."""
    from autoctx.catalog import get_shape
    from tests.shapes_writer import write_shape_gguf

    folder = tmp_path_factory.mktemp("shapes")
    made: dict[str, str] = {}

    def make(name: str) -> str:
        if name not in made:
            made[name] = str(write_shape_gguf(get_shape(name), folder / f"{name}.gguf"))
        return made[name]

    return make


@pytest.fixture(scope="session")
def spec_of(shape_file, gemma_path):
    """spec_of(name) -> ModelSpec: "gemma"/"gemma-3-270m..." is the real GGUF, other names are catalog entries."""
    from autoctx.model import load_spec

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_spec(gemma_path if name.startswith("gemma-3-270m") or name == "gemma"
                                    else shape_file(name))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def rpc_endpoints(tmp_path_factory):
    """Two real ggml-rpc-server workers on 127.0.0.1 (tests/rpc_workers.py) for a test module: ["127.0.0.1:PORT", ...].
    Stopped when the module is done; none may have died during its tests, none may outlive them."""
    from tests import rpc_workers as rw

    binary = rw.worker_binary()
    folder = tmp_path_factory.mktemp("rpc")
    procs: list[subprocess.Popen] = []
    try:
        ports = []
        for k in range(2):
            proc, port = rw.start_worker(binary, folder, k)
            procs.append(proc)
            ports.append(port)
        yield [f"127.0.0.1:{p}" for p in ports]
        for proc in procs:
            assert proc.poll() is None, "an RPC worker died during the tests"
    finally:
        for proc in procs:
            rw.stop(proc)
        assert all(proc.poll() is not None for proc in procs)
        assert rw.orphans([p.pid for p in procs]) == []  # no worker or llama-server outlives the module


@pytest.fixture
def rpc_worker(tmp_path):
    """rpc_worker() -> (Popen, "127.0.0.1:PORT"): one more real worker for this test alone (one it may kill); every one
    started is stopped and reaped when the test ends."""
    from tests import rpc_workers as rw

    binary = rw.worker_binary()
    procs: list[subprocess.Popen] = []

    def start():
        proc, port = rw.start_worker(binary, tmp_path, len(procs))
        procs.append(proc)
        return proc, f"127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            rw.stop(proc)
        assert rw.orphans([p.pid for p in procs]) == []
