"""`autoctx serve` against the real llama-server: verify, step down on out-of-memory, profiles, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.launchers import sigint_as_a_terminal_gives_it

pytestmark = pytest.mark.server


def run(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def env(tmp_path, llama_server):
    e = dict(os.environ)
    e.update(AUTOCTX_LLAMA_SERVER=llama_server, AUTOCTX_DATA_DIR=str(tmp_path / "data"))
    return e


def test_check_json_verifies_and_saves_a_profile_that_the_next_run_uses(gemma_path, env, tmp_path):
    r = run(["serve", gemma_path, "--device", "cpu", "--check", "--json"], env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["plan"]["num_ctx"] == 32768 and d["plan"]["cache_type_k"] == "f16"
    assert d["argv"][:4] == ["-m", gemma_path, "-c", "32768"] and d["argv"][-2:] == ["--fit", "off"]
    rows = {(c["device"], c["kind"]): c for c in d["comparison"]}
    assert rows[("CPU", "kv")]["predicted_mib"] == rows[("CPU", "kv")]["actual_mib"] == 111.0
    assert all(c["ok"] for c in d["comparison"]) and d["flags"] == []
    assert d["attempts"] == ["attempt 1: loaded num_ctx 32768 KV f16/f16"]
    prof_path = d["profile"]
    assert prof_path.startswith(str(tmp_path / "data" / "profiles"))
    import tomllib

    prof = tomllib.loads(open(prof_path).read())
    assert prof["runs"] == 1 and prof["measured"]["CPU"]["kv"] == 111 * 1024**2
    assert prof["predicted"]["CPU"]["kv"] == 111 * 1024**2
    again = json.loads(run(["serve", gemma_path, "--device", "cpu", "--check", "--json"], env).stdout)
    assert again["profile"] == prof_path
    assert tomllib.loads(open(prof_path).read())["runs"] == 2
    if prof["correction"]:  # the compute buffer is predicted within ~0.01 MiB: the correction is said and applied
        assert any(r.startswith(f"profile {prof['id']}: CPU measured") for r in again["reasons"])
    listed = run(["profile", "list"], env)
    assert listed.stdout.startswith(prof["id"]) and "runs 2" in listed.stdout


def test_user_arguments_win_and_the_plan_is_redone_around_them(gemma_path, env):
    r = run(["serve", gemma_path, "--device", "cpu", "--check", "--json", "--", "-c", "8192", "-ctk", "q8_0",
             "--jinja"], env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["plan"]["num_ctx"], d["plan"]["cache_type_k"], d["plan"]["cache_type_v"]) == (8192, "q8_0", "f16")
    assert d["argv"][-5:] == ["-c", "8192", "-ctk", "q8_0", "--jinja"]
    assert all(c["ok"] for c in d["comparison"])


def _serve_with_fault(llama_server, gemma_path, **kw):
    """serve_llamacpp on 15 GiB of RAM whose first launch asks for 20M tokens (~57 GiB of KV cache)."""
    from autoctx.model import load_spec
    from autoctx.planner import Budget, PlanOptions
    from autoctx.probe.cpu import host_repack_rules
    from autoctx.loop import serve_llamacpp

    from .launchers import first_launch_with

    said: list[str] = []
    launch = first_launch_with("-c", "20000000")
    res = serve_llamacpp(load_spec(gemma_path), [Budget("CPU", 16 * 1024**3, 1024**3)],
                         PlanOptions(min_ctx=4096, cpu_repack=host_repack_rules()), [], llama_server,
                         say=said.append, launch=launch, **kw)
    return res, said, launch


def test_out_of_memory_steps_down_and_relaunches(llama_server, gemma_path):
    res, said, launch = _serve_with_fault(llama_server, gemma_path)
    try:
        d = res.report()
        assert d["attempts"][0].startswith("attempt 1: llama-server ran out of memory loading num_ctx 32768 KV "
                                           "f16/f16 (ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate "
                                           "buffer")
        assert d["attempts"][1] == "attempt 2: loaded num_ctx 24576 KV f16/f16"
        assert said[0].startswith("attempt 1: llama-server ran out of memory")
        assert d["plan"]["num_ctx"] == 24576 and all(c["ok"] for c in d["comparison"])
        assert [a[a.index("-c") + 1] for a in launch.argvs] == ["32768", "24576"]  # the fault rode on launch 1 only
    finally:
        res.server.close()


def test_out_of_memory_every_time_gives_up_with_one_line(llama_server, gemma_path):
    from autoctx.errors import AutoctxError

    with pytest.raises(AutoctxError) as e:
        _serve_with_fault(llama_server, gemma_path, max_tries=1)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("llama-server still ran out of memory after 1 attempts: attempt 1:")


def test_foreground_serving_forwards_sigterm(gemma_path, env):
    proc = subprocess.Popen([sys.executable, "-m", "autoctx.cli", "serve", gemma_path, "--device", "cpu",
                             "--no-profile", "--", "-c", "4096"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        if "serving on http://127.0.0.1:" in line or not line:
            break
    assert "serving on" in line, line
    url = line.split("serving on ", 1)[1].split()[0]
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc == 0  # llama-server's own exit status after a graceful SIGTERM
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)


def test_server_timeout_is_one_error_and_the_last_log_lines(shape_file, env):
    model = shape_file("llama-3.1-70b")  # loading its 42 GiB sparse file takes far longer than 1 s
    r = run(["serve", model, "--free", "cpu=64GiB", "--check", "--no-profile", "--timeout", "1", "--",
             "--no-repack", "-c", "2048"], env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "autoctx: error: llama-server did not answer /health within 1 s; last lines:"
    assert len(lines) > 1


def test_margin_eaten_after_load_steps_down(llama_server, gemma_path):
    """The device library reports less free memory than the margin after the first load: step down, relaunch."""
    from autoctx.model import load_spec
    from autoctx.planner import Budget, PlanOptions
    from autoctx.probe.cpu import host_repack_rules
    from autoctx.loop import serve_llamacpp
    from autoctx.runtimes.llamacpp.runtime import AfterLoad

    calls = []

    def after_load(pid, used):
        assert used == []  # a CPU build prints no "using device" line
        calls.append(pid)
        return AfterLoad(free={"CPU": 0 if len(calls) == 1 else 8 * 1024**3})

    said = []
    res = serve_llamacpp(load_spec(gemma_path), [Budget("CPU", 2 * 1024**3, 1024**3)],
                         PlanOptions(cpu_repack=host_repack_rules()),
                         ["-c", "8192"], llama_server, after_load=after_load, say=said.append)
    try:
        assert said == ["attempt 1: margin eaten (CPU: 0 MiB free after loading, below the 1024 MiB margin); "
                        "stepping down"]
        assert res.attempts[-1] == "attempt 2: loaded num_ctx 8192 KV q8_0/q8_0"  # the user's -c stays fixed...
        assert res.plan.cache_type_k == "q8_0"  # ...so the step down takes the next KV type
        assert len(calls) == 2 and calls[0] != calls[1] and res.ok
    finally:
        res.server.stop()


def test_after_load_reads_the_servers_gpu_memory_from_the_probe():

    from autoctx.probe.devices import DeviceInfo, GpuProcess, ProbeResult
    from autoctx.runtimes.llamacpp.runtime import probe_after_load

    gpu = DeviceInfo("CUDA0", "cuda", "RTX 4090", 24 * 1024**3, 10 * 1024**3, 14 * 1024**3,
                     processes=(GpuProcess(4242, "llama-server", 13 * 1024**3), GpuProcess(7, "Xorg", 1024**3)))
    cpu = DeviceInfo("CPU", "cpu", "x", 64 * 1024**3, 50 * 1024**3, 14 * 1024**3)
    after = probe_after_load(4242, (), probe_fn=lambda: ProbeResult([gpu, cpu]))
    assert after.free == {"CUDA0": 10 * 1024**3, "CPU": 50 * 1024**3}
    assert after.process == {"CUDA0": 13 * 1024**3}


def test_profile_generate_saves_a_profile(gemma_path, env):
    r = run(["profile", "generate", gemma_path, "--device", "cpu", "--", "-c", "4096"], env)
    assert r.returncode == 0, r.stderr
    assert "profile saved: " in r.stdout
    shown = run(["profile", "show", gemma_path], env)
    assert shown.returncode == 0 and "num_ctx = 4096" in shown.stdout and "runs = 1" in shown.stdout


def _servers_of(model: str) -> list:
    """llama-server processes started for `model` (a path unique to the test)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            if p.info["name"] == "llama-server" and model in (p.info["cmdline"] or []) and \
                    p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_loading_stops_the_real_server(shape_file, env, tmp_path, sig, status):
    """The model's 16 GiB sparse file keeps llama-server loading for seconds: the signal lands mid-load."""
    model = str(tmp_path / "m.gguf")
    os.symlink(shape_file("llama-3.1-8b"), model)  # a path only this test's server has on its command line
    env = dict(env, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "autoctx.cli", "serve", model, "--free", "cpu=64GiB", "--check",
                             "--no-profile", "--", "--no-repack", "-c", "4096", "--load-mode", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=sigint_as_a_terminal_gives_it)
    deadline = time.time() + 120
    while not _servers_of(model) and time.time() < deadline:
        time.sleep(0.05)
    (server,) = _servers_of(model)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert not server.is_running() or server.status() == "zombie"
    assert not _servers_of(model)
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no llama-server-*.log left in TMPDIR


def test_a_profile_that_cannot_be_saved_is_a_warning_and_leaves_no_server(gemma_path, env, tmp_path):
    blocked = tmp_path / "data"
    blocked.write_text("a file where the profile folder would go")
    model = str(tmp_path / "g.gguf")
    os.symlink(gemma_path, model)
    env = dict(env, AUTOCTX_DATA_DIR=str(blocked), TMPDIR=str(tmp_path))
    r = run(["serve", model, "--device", "cpu", "--check", "--", "-c", "4096"], env)
    assert r.returncode == 0, r.stderr
    assert "autoctx: warning: profile not saved (" in r.stderr
    assert "profile saved" not in r.stdout
    assert not _servers_of(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "g.gguf"]
