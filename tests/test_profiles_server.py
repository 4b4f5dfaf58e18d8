"""Profiles against the real llama-server: two `autoctx serve --check` runs at once both count; a profile with a
wrong-typed field is one warning line, and the run replaces it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest
import tomli_w

pytestmark = pytest.mark.server


def serve_cmd(gemma_path: str) -> list[str]:
    return [sys.executable, "-m", "autoctx.cli", "serve", gemma_path, "--check", "--device", "cpu", "--json"]


@pytest.fixture
def env(tmp_path, llama_server):
    e = dict(os.environ, AUTOCTX_LLAMA_SERVER=llama_server, AUTOCTX_DATA_DIR=str(tmp_path / "data"))
    return e


def test_two_concurrent_serves_both_count_in_the_profile(gemma_path, env, tmp_path):
    procs = [subprocess.Popen(serve_cmd(gemma_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    paths = {json.loads(out)["profile"] for out, _ in outs}
    assert len(paths) == 1  # one model, one machine: one profile
    path = paths.pop()
    prof = tomllib.loads(open(path).read())
    assert prof["runs"] == 2
    assert sorted(os.listdir(tmp_path / "data" / "profiles")) == [f".{prof['id']}.lock", f"{prof['id']}.toml"]

    # a wrong-typed field: one warning line, no traceback, and this run's profile replaces it
    with open(path, "wb") as fh:
        tomli_w.dump(dict(prof, runs="two"), fh)
    r = subprocess.run(serve_cmd(gemma_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warnings = [line for line in r.stderr.splitlines() if "ignoring profile" in line]
    assert warnings == [f"autoctx: warning: ignoring profile {path}: field runs should be a whole number >= 0, "
                        "not string 'two'"]
    assert tomllib.loads(open(path).read())["runs"] == 1
