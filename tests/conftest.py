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


def pytest_sessionstart(session):
    """Byte-compile autoctx and the test helpers once: the tests start `python -m autoctx.cli` hundreds of times, and
    where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) each start would compile every module again
    (~0.1 CPU s each)."""
    import compileall

    for folder in ("autoctx", "tests"):
        compileall.compile_dir(ROOT / folder, quiet=1)


def pytest_report_header(config):
    path = built_binary()
    return f"llama-server: {path}" if path else f"llama-server: not built; the server tests skip ({HOW_TO_BUILD})"


# `slow` besides the ones marked in their files (the CLI fuzz, the bounded GGUF fuzz, the Ollama hardening cases, the
# wheel install, the held-out calibration): tests that took over 0.5 CPU s (with their subprocesses) on the 2-core
# machine, most of it starting `python -m autoctx.cli` and reading Gemma's 262k-token vocabulary, and the
# bad-input-is-one-line cases run one CLI process each (test_cli_fuzz covers every command's). Named here, by file
# and function (every parameter), so that the list stays in one place; a name that matches nothing is an error.
SLOW = {
    "test_bad_gguf.py": ["test_header_at_every_limit_is_bounded", "test_bad_model_is_one_error_line"],
    "test_calibration_scripts.py": ["test_a_carried_header_becomes_the_same_gguf"],
    "test_cli.py": ["test_plan_json_and_svg_chart", "test_bad_input_is_one_line_and_nonzero", "test_plan_bad_input"],
    "test_extras.py": ["test_cli_bad_files_one_line"],
    "test_fuzz_gguf.py": ["test_same_seed_same_cases", "test_the_worker_catches"],
    "test_lifetime.py": ["test_fifty_launches_leak_no_descriptor_and_no_log"],
    "test_memory.py": ["test_compute_buffer_matches_measured_points"],
    "test_ollama_run.py": [  # test_run_creates_the_derived_model_and_execs_ollama stays in the fast loop
        "test_api_path_without_the_ollama_cli", "test_the_load_is_saved_into_a_profile_that_the_next_plan_applies",
        "test_interactive_chat_at_a_terminal_without_the_cli", "test_evict_unloads_the_other_models_first",
        "test_pull_with_progress_then_run", "test_cpu_spill_is_loud", "test_start_server_when_none_answers",
        "test_never_overwrites_a_model_autoctx_did_not_make", "test_bad_situations_are_one_line",
        "test_modelfile_command_and_the_q8_suggestion"],
    "test_ollama_store.py": ["test_every_shipped_profile_plans_before_pull"],
    "test_overrides.py": ["test_bad_overrides_are_one_line"],
    "test_planner.py": ["test_layer_search_property_against_brute_force"],
    "test_profiles.py": ["test_two_processes_updating_one_profile_lose_no_update"],
    "test_rpc_plan.py": ["test_bad_rpc_flags_are_one_line"],
    "test_shapes.py": ["test_written_header_round_trips"],
}


def _mark_slow(items) -> None:
    modules = {}
    for item in items:
        file = Path(str(item.fspath)).name
        if getattr(item, "module", None) is not None:
            modules[file] = item.module
        if getattr(item, "originalname", item.name) in SLOW.get(file, ()):
            item.add_marker(pytest.mark.slow)
    missing = [f"{f}::{n}" for f, mod in modules.items() for n in SLOW.get(f, ()) if not hasattr(mod, n)]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {', '.join(missing)}")


def pytest_collection_modifyitems(config, items):
    """A `slow` test runs in a plain `pytest` and in `make test`, and is left out by a -m expression that leaves out
    the server tests (the fast loop, `-m "not server"`) unless the expression names `slow` itself (`-m "slow and
    not server"`)."""
    from _pytest.mark.expression import Expression

    _mark_slow(items)
    expr = config.option.markexpr
    if not expr or "slow" in expr or Expression.compile(expr).evaluate(lambda name, **kw: name == "server"):
        return
    keep = [i for i in items if i.get_closest_marker("slow") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("slow") is not None])
        items[:] = keep


def no_populate_shim(folder: Path) -> str | None:
    """tests/no_populate.c built into folder (the server tests preload it: llama.cpp maps a model with MAP_POPULATE,
    which makes a sparse 28 GiB shape file 17 GB of resident zero pages); None without a C compiler."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    out = folder / "libnopopulate.so"
    r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(ROOT / "tests" / "no_populate.c"), "-ldl"],
                       capture_output=True, text=True)
    return str(out) if r.returncode == 0 else None


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The pinned llama-server (see pinned_binary: skips with how to build it when it is not built). While the
    session runs, processes started by the tests preload no_populate_shim (LD_PRELOAD), so that the servers they
    start fault in only the model pages they touch: same buffers and logs, a fraction of the memory."""
    binary = pinned_binary()
    shim = no_populate_shim(tmp_path_factory.mktemp("shim"))
    before = os.environ.get("LD_PRELOAD")
    if shim:
        os.environ["LD_PRELOAD"] = f"{shim} {before}" if before else shim
    yield binary
    if before is None:
        os.environ.pop("LD_PRELOAD", None)
    else:
        os.environ["LD_PRELOAD"] = before


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
