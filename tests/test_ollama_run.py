"""`autoctx run` against a local server that follows Ollama's API, driven through the real `ollama` client, with a
real on-disk store built from the Gemma GGUF and a stand-in `ollama` executable that records what it was given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .fake_ollama import FakeOllama
from .test_ollama_store import GEMMA_SHA256, store  # noqa: F401  (the store fixture)


@pytest.fixture
def ollama(store):  # noqa: F811
    with FakeOllama(store) as srv:
        yield srv


@pytest.fixture
def env(ollama, store, tmp_path):  # noqa: F811
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    e = dict(os.environ, OLLAMA_HOST=ollama.url, OLLAMA_MODELS=str(store), AUTOCTX_DATA_DIR=str(tmp_path / "d"),
             PATH=f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin")
    return e


def stand_in(env, tmp_path, exit_code=0):
    """An `ollama` on PATH that records its argv and stdin."""
    record = tmp_path / "ollama-call.json"
    script = tmp_path / "bin" / "ollama"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        json.dump({{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}, open({str(record)!r}, "w"))
        print("stand-in answer")
        sys.exit({exit_code})
    """))
    script.chmod(0o755)
    return record


def autoctx(env, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=120)


def creates(srv):
    return [b for m, path, b in srv.requests if path == "/api/create"]


def test_dry_run_changes_nothing(env, ollama):
    r = autoctx(env, "run", "--dry-run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
    assert r.returncode == 0, r.stderr
    assert "would create: gemma3:270m-autoctx from gemma3:270m with num_ctx=32768" in r.stdout
    assert "would run: ollama run gemma3:270m-autoctx hi" in r.stdout
    assert "(Ollama 0.32.15; KV f16, 1 parallel;" in r.stdout
    assert creates(ollama) == [] and not ollama.loaded


def test_run_creates_the_derived_model_and_execs_ollama(env, ollama, tmp_path):
    record = stand_in(env, tmp_path, exit_code=3)
    r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "say", "hello", stdin="data\n")
    assert r.returncode == 3  # the exit status of `ollama run`
    assert r.stdout == "stand-in answer\n"
    call = json.loads(record.read_text())
    assert call == {"argv": ["run", "gemma3:270m-autoctx", "say", "hello"], "stdin": "data\n"}
    (req,) = creates(ollama)
    assert (req["model"], req["from"], req["parameters"]) == ("gemma3:270m-autoctx", "gemma3:270m", {"num_ctx": 32768})
    assert req["license"][0] == "autoctx-derived-model: gemma3:270m-autoctx"  # the exact ownership line
    assert req["license"][1].startswith("Made by autoctx from gemma3:270m: num_ctx 32768, KV f16 (server-wide)")
    assert ollama.loaded["gemma3:270m-autoctx"]["context_length"] == 32768
    assert "autoctx: created gemma3:270m-autoctx (num_ctx=32768, KV f16)" in r.stderr
    again = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "again")
    assert "autoctx: reused gemma3:270m-autoctx" in again.stderr and len(creates(ollama)) == 1


def test_never_overwrites_a_model_autoctx_did_not_make(env, ollama):
    ollama.create({"model": "gemma3:270m-autoctx", "from": "gemma3:270m", "parameters": {"num_ctx": 2048}})
    ollama.requests.clear()
    r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == ("autoctx: error: a model named gemma3:270m-autoctx already exists "
                                                 "and was not created by autoctx; pick another name with --name")
    assert creates(ollama) == []


def test_api_path_without_the_ollama_cli(env, ollama):
    r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hello", stdin="ctx\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "echo: ctx\n\n\nhello\n"
    gens = [b for m, path, b in ollama.requests if path == "/api/generate" and b.get("prompt")]
    assert gens[-1]["model"] == "gemma3:270m-autoctx"


def test_cpu_spill_is_loud(env, ollama, tmp_path):
    stand_in(env, tmp_path)
    ollama.cpu_only = False
    ollama.spill_bytes = 100 * 1024**2
    r = autoctx(env, "run", "--free", "cuda0=8GiB", "--free", "cpu=16GiB", "gemma3:270m", "hi")
    assert r.returncode == 0, r.stderr
    assert "autoctx: WARNING: CPU SPILL: 0.10 GiB of gemma3:270m-autoctx is in system RAM" in r.stderr


@pytest.mark.parametrize("case,message", [
    ("down", "no Ollama server at http://127.0.0.1:9"),
    ("refuse", "Ollama refused to create gemma3:270m-autoctx: permission denied"),
    ("unknown", "llama3.1:8b is not pulled"),
])
def test_bad_situations_are_one_line(env, ollama, case, message):
    model = "gemma3:270m"
    if case == "down":
        env["OLLAMA_HOST"] = "127.0.0.1:9"
    elif case == "refuse":
        ollama.refuse_create = True
    else:
        model = "llama3.1:8b"
    r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", model, "hi")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("autoctx: error: ") and message in last, r.stderr
    assert "Traceback" not in r.stderr


def test_modelfile_command_and_the_q8_suggestion(env, ollama, shape_file, store):  # noqa: F811
    r = autoctx(env, "modelfile", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "FROM gemma3:270m\nPARAMETER num_ctx 32768\n"
    # a model whose f16 cache is the limit: the server-wide q8_0 setting is suggested with the exact lines
    blob = store / "blobs" / ("sha256-" + "3" * 64)
    os.symlink(shape_file("llama-3.1-8b"), blob)
    m = {"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                          "digest": "sha256:" + "3" * 64, "size": os.path.getsize(blob)}]}
    d = store / "manifests" / "registry.ollama.ai" / "library" / "llama3.1"
    d.mkdir(parents=True)
    (d / "8b").write_text(json.dumps(m))
    r = autoctx(env, "modelfile", "--free", "cuda0=8GiB", "llama3.1:8b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("FROM llama3.1:8b\nPARAMETER num_ctx ")
    assert "with a q8_0 KV cache the server could give" in r.stderr
    assert 'Environment="OLLAMA_KV_CACHE_TYPE=q8_0"' in r.stderr


def test_pull_with_progress_then_run(env, ollama):
    ollama.pull_source = "gemma3:270m"
    r = autoctx(env, "run", "--pull", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:latest", "hi")
    assert r.returncode == 0, r.stderr
    assert "pulling gemma3:latest: pulling " in r.stderr and "100.0%" in r.stderr
    assert r.stdout == "echo: hi\n"
    assert (ollama.store / "manifests/registry.ollama.ai/library/gemma3/latest").is_file()


def test_evict_unloads_the_other_models_first(env, ollama):
    ollama.load("gemma3:270m", {})
    r = autoctx(env, "run", "--evict", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
    assert r.returncode == 0, r.stderr
    assert "autoctx: unloaded gemma3:270m (" in r.stderr
    assert list(ollama.loaded) == ["gemma3:270m-autoctx"]


def test_the_load_is_saved_into_a_profile_that_the_next_plan_applies(env, ollama, tmp_path):
    ollama.bytes_per_token = 8192  # more than llama.cpp's own buffers for this model
    r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("autoctx: loaded: "))
    path = line.rsplit("profile ", 1)[1]
    import tomllib

    prof = tomllib.loads(open(path).read())
    assert prof["key"]["model_digest"] == GEMMA_SHA256 and prof["key"]["runtime"] == "ollama 0.32.15"
    size = ollama.loaded["gemma3:270m-autoctx"]["size"]
    assert prof["measured"] == {"CPU": {"total": size}}
    # the fake server reports more than llama.cpp would allocate: the next plan keeps that much more free
    dry = autoctx(env, "run", "--dry-run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m")
    extra = prof["correction"]["CPU"]["total"]
    assert extra > 0 and f"measured {extra / 2**20:.2f} MiB more than predicted over 1 run(s)" in dry.stdout


def test_a_model_only_the_server_has_is_planned_from_api_show(env, ollama, tmp_path):
    env["OLLAMA_MODELS"] = str(tmp_path / "empty-store")  # this machine's store does not have it (remote server)
    r = autoctx(env, "plan", "gemma3:270m", "--device", "cpu", "--free", "cpu=2GiB", "--json", "--no-repack")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["plan"]["num_ctx"] == 32768
    weights = sum(b["bytes"] for b in d["buffers"] if b["kind"] == "model")
    assert weights == 246587904  # the tensor list gives the exact bytes
    shows = [b for m, path, b in ollama.requests if path == "/api/show"]
    assert shows and shows[-1] == {"model": "gemma3:270m", "verbose": True}


def test_start_server_when_none_answers(env, store, tmp_path):  # noqa: F811
    """No server on OLLAMA_HOST: `ollama serve` is started with the plan's KV type (a stand-in that serves the API)."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    record = tmp_path / "serve-env.json"
    fake = os.path.join(os.path.dirname(__file__), "fake_ollama.py")  # served in-process by the stand-in
    script = tmp_path / "bin" / "ollama"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        if sys.argv[1] == "serve":
            json.dump({{k: v for k, v in os.environ.items() if k.startswith("OLLAMA_")}}, open({str(record)!r}, "w"))
            sys.path.insert(0, {os.path.dirname(fake)!r})
            from fake_ollama import FakeOllama
            from pathlib import Path
            with FakeOllama(Path({str(store)!r}), port={port}) as srv:
                srv.thread.join()
        print("ran", *sys.argv[1:])
    """))
    script.chmod(0o755)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(__file__))
    r = autoctx(env, "run", "--start-server", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
    try:
        assert r.returncode == 0, r.stderr
        started = next(x for x in r.stderr.splitlines() if x.startswith("autoctx: started `ollama serve`"))
        assert "OLLAMA_KV_CACHE_TYPE=f16 OLLAMA_FLASH_ATTENTION=1" in started
        assert json.loads(record.read_text())["OLLAMA_KV_CACHE_TYPE"] == "f16"
        # the settings were then read from that process's environment
        assert "server environment unknown" not in r.stderr
        assert r.stdout == "ran run gemma3:270m-autoctx hi\n"
    finally:
        pid = int(started.split("pid ")[1].split(")")[0]) if "started" in locals() else None
        if pid:
            os.kill(pid, signal.SIGTERM)


def test_interactive_chat_at_a_terminal_without_the_cli(env, ollama):
    """No prompt and a terminal on stdin: a chat loop through /api/chat, ended by /bye."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "autoctx.cli", "run", "--device", "cpu", "--free", "cpu=2GiB",
                             "gemma3:270m"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    os.close(slave)
    os.write(master, b"hello there\n/bye\n")
    out, err = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0, err
    assert "echo: hello there" in out
    chats = [b for m, path, b in ollama.requests if path == "/api/chat"]
    assert chats[-1]["messages"] == [{"role": "user", "content": "hello there"}]
    assert chats[-1]["model"] == "gemma3:270m-autoctx"


def test_runner_memory_from_the_probe():
    from autoctx.probe.devices import DeviceInfo, GpuProcess, ProbeResult
    from autoctx.runtimes.ollama.run import runner_memory

    gpu = DeviceInfo("CUDA0", "cuda", "RTX 4090", 24 * 2**30, 4 * 2**30, 20 * 2**30,
                     processes=(GpuProcess(10, "llama-server", 19 * 2**30), GpuProcess(11, "Xorg", 2**30),
                                GpuProcess(12, "ollama", None)))
    rm = runner_memory(None, lambda: ProbeResult([gpu]))
    assert rm.lines == ["CUDA0: llama-server (pid 10) holds 19.00 GiB"]
    assert rm.per_gpu == {"CUDA0": 19 * 2**30}
