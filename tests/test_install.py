"""Installed the way users install it: a wheel in a fresh virtual environment, run from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment: ~20 s

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_shipped_profiles_and_plans_before_a_pull(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("autoctx-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OLLAMA_HOST")}
    env.update(OLLAMA_MODELS=str(tmp_path / "empty-store"), OLLAMA_HOST="127.0.0.1:9")  # nothing pulled, no server
    args = ["plan", "qwen2.5:32b", "--free", "cuda0=24GiB", "--json"]
    r = subprocess.run([str(venv / "bin" / "autoctx"), *args], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shipped = site / "autoctx" / "data" / "profiles" / "ollama" / "qwen2.5_32b.toml"
    assert got["model"]["name"] == "qwen2.5:32b" and got["model"]["path"] == "shipped:qwen2.5:32b"
    assert got["model"]["source"].startswith(f"shipped profile {shipped} (weights ")
    assert (site / "autoctx" / "data" / "catalog" / "qwen2.5-32b.toml").is_file()  # the catalog is package data
    assert not list(site.glob("numpy*")) and not list(site.glob("gguf*"))  # run time needs neither
    # the same plan as the checkout gives: the wheel lacks nothing the planner reads
    here = subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    mine = json.loads(here.stdout)
    assert {k: v for k, v in got.items() if k != "model"} == {k: v for k, v in mine.items() if k != "model"}
    assert got["plan"]["n_gpu_layers"] == 65 and got["buffers"][0] == mine["buffers"][0]


def test_shell_completion_completes_commands():
    env = dict(os.environ, _AUTOCTX_COMPLETE="complete_bash", COMP_WORDS="autoctx pl", COMP_CWORD="1")
    autoctx = str(Path(sys.executable).parent / "autoctx")  # the console script: completion keys on its name
    r = subprocess.run([autoctx], capture_output=True, text=True, env=env)
    assert r.stdout.split() == ["plan"]
    # typer detects the calling shell (shellingham: `sh` under make) unless told to take the shell named here
    env = {k: v for k, v in os.environ.items() if not k.startswith("_AUTOCTX_")}
    script = subprocess.run([autoctx, "--show-completion", "bash"], capture_output=True, text=True,
                            env=dict(env, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert "_AUTOCTX_COMPLETE=complete_bash" in script.stdout, (script.returncode, script.stderr)
