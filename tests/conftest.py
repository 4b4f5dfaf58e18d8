"""Shared fixtures: the real llama-server (built from the pinned sdist), the real Gemma-3-270M GGUF, shape-only GGUFs;
the `slow` rule and the build gate.

The real llama-server (with the ggml-rpc-server worker the RPC tests start) takes ~18 minutes to build on 2 cores
(scripts/llama-server-path caches it). No test builds it silently: when it is not built, the tests that need it skip
and say how to build it (`make llama-server`), unless AUTOCTX_BUILD_LLAMA=1 lets the fixture build it (`make test`
sets it, after building it first). The fast loop is `pytest -m "not server"`: no build, under a minute; it leaves out
the `slow` tests too (see pytest_collection_modifyitems).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
BUILD_ENV = "AUTOCTX_BUILD_LLAMA"
HOW_TO_BUILD = ("the pinned llama-server is not built: run `make llama-server` (or scripts/llama-server-path; ~18 min "
                f"on 2 cores, once), or set {BUILD_ENV}=1 to let the tests build it; `pytest -m \"not server\"` needs "
                "no build")


def _build_script():
    loader = SourceFileLoader("llama_server_path", str(ROOT / "scripts" / "llama-server-path"))
    spec = spec_from_loader(loader.name, loader)
    assert spec is not None
    mod = module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def built_binary(name: str = "llama-server") -> str | None:
    """The cached pinned build's binary when it is built (with the pinned flags and targets), else None."""
    lsp = _build_script()
    return str(lsp.binary(name)) if lsp.built() else None


def pinned_binary(name: str = "llama-server") -> str:
    """The pinned build's binary; built only when AUTOCTX_BUILD_LLAMA=1, else the test skips saying how to build."""
    path = built_binary(name)
    if path is not None:
        return path
    if os.environ.get(BUILD_ENV) != "1":
        pytest.skip(HOW_TO_BUILD)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "llama-server-path"), "--bin", name],
                         stdout=subprocess.PIPE, text=True, check=True)  # its progress goes to the terminal
    return out.stdout.strip()


def pytest_report_header(config):
    path = built_binary()
    return f"llama-server: {path}" if path else f"llama-server: not built; the server tests skip ({HOW_TO_BUILD})"


def pytest_collection_modifyitems(config, items):
    """A `slow` test (tens of seconds: the fuzz runs, the wheel install) runs in a plain `pytest` and in `make test`,
    and is left out by a -m expression that leaves out the server tests (the fast loop, `-m "not server"`) unless
    the expression names `slow` itself (`-m "slow and not server"`)."""
    from _pytest.mark.expression import Expression

    expr = config.option.markexpr
    if not expr or "slow" in expr or Expression.compile(expr).evaluate(lambda name, **kw: name == "server"):
        return
    keep = [i for i in items if i.get_closest_marker("slow") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("slow") is not None])
        items[:] = keep


@pytest.fixture(scope="session")
def llama_server() -> str:
    """The pinned llama-server (see pinned_binary: skips with how to build it when it is not built)."""
    return pinned_binary()


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

    binary = pinned_binary("ggml-rpc-server")
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

    binary = pinned_binary("ggml-rpc-server")
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
