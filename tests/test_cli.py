"""The `autoctx` command as a user runs it: a separate process, exact JSON, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MiB = 1024 * 1024


def autoctx(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_estimate_json_gemma_exact_bytes(gemma_path):
    r = autoctx("estimate", gemma_path, "-c", "8192", "--no-repack", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"]["architecture"] == "gemma3"
    assert d["model"]["n_ctx_train"] == 32768
    assert d["model"]["n_vocab"] == 262144
    assert (d["model"]["swa_layers"], d["model"]["kv_layers"], d["model"]["n_swa"]) == (15, 18, 512)
    assert d["args"]["n_parallel"] == 4 and d["args"]["kv_unified"] is True  # np auto
    assert (d["args"]["n_ctx"], d["args"]["kv_cells"], d["args"]["swa_cells"]) == (8192, 8192, 2560)
    got = [(b["device"], b["kind"], b["name"], b["bytes"]) for b in d["buffers"]]
    assert got == [
        ("CPU", "model", "CPU_Mapped", 246587904),   # the tensor data span of the file
        ("CPU", "kv", "CPU", 25165824),              # 3 full layers x 8192 cells x 256 x (K+V) f16
        ("CPU", "kv", "CPU", 39321600),              # 15 SWA layers x 2560 cells
        ("CPU", "output", "CPU", 4194304),           # 262144 logits x 4 slots x f32
        ("CPU", "compute", "CPU", 30167040),         # closed form; llama-server printed 28.78 MiB
    ]
    assert d["total_bytes"] == sum(b[3] for b in got)


def test_estimate_table_and_ignored_flag_warning(gemma_path):
    r = autoctx("estimate", gemma_path, "-c", "4096", "-np", "1", "--no-repack", "--port", "8080", "--jinja")
    assert r.returncode == 0
    assert "warning: not modelled (passed through as they are): --port --jinja" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[2].split()[:6] == ["device", "model", "kv", "compute", "output", "total"]
    assert lines[3].split() == ["CPU", "235.16", "27.00", "23.27", "1.00", "286.43"]


@pytest.mark.parametrize("args,message,code", [
    (["estimate", "/nonexistent.gguf"], "/nonexistent.gguf: cannot open", 1),
    (["estimate", "/etc/passwd"], "not a GGUF file", 1),
    (["estimate", "GEMMA", "-c", "abc"], "-c expects an integer, got 'abc'", 2),
    (["estimate", "GEMMA", "-ctv", "q8_0", "-fa", "off"], "a quantized V cache needs flash attention", 2),
    (["estimate", "GEMMA", "-ctk", "q3_k"], "unsupported cache type 'q3_k'", 2),
    (["estimate", "GEMMA", "-fa", "maybe"], "-fa expects on|off|auto", 2),
    (["estimate"], "Missing argument 'MODEL'", 2),
    (["frobnicate"], "No such command 'frobnicate'", 2),
])
def test_bad_input_is_one_line_and_nonzero(gemma_path, args, message, code):
    r = autoctx(*[gemma_path if a == "GEMMA" else a for a in args])
    assert r.returncode == code
    assert r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_unsupported_architecture_names_it(tmp_path):
    from tests.shapes_writer import write_bare_header

    path = write_bare_header(tmp_path / "weird.gguf", "frobnet", 1024)
    r = autoctx("estimate", str(path))
    assert r.returncode == 1
    assert "architecture 'frobnet' is not supported" in r.stderr


@pytest.mark.server
def test_check_against_real_server(llama_server, gemma_path):
    r = autoctx("check", gemma_path, "-c", "4096", "-np", "1", "--no-warmup", "--llama-server", llama_server,
                "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rows = {(c["device"], c["kind"]): c for c in d["comparison"]}
    assert rows[("CPU", "kv")]["actual_mib"] == 27.0 == rows[("CPU", "kv")]["predicted_mib"]
    assert rows[("CPU", "output")]["actual_mib"] == 1.0
    assert all(c["ok"] for c in d["comparison"])
    assert d["argv"][0] == llama_server and d["argv"][1:3] == ["-m", gemma_path]


def test_check_without_server_binary(gemma_path, tmp_path):
    r = autoctx("check", gemma_path, "-c", "4096", "--llama-server", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"autoctx: error: llama-server not found or not executable: {tmp_path / 'nope'}"


@pytest.mark.server
def test_check_reports_a_failed_load(llama_server, gemma_path, tmp_path):
    missing = tmp_path / "missing-template.jinja"
    r = autoctx("check", gemma_path, "-c", "4096", "--chat-template-file", str(missing), "--llama-server",
                llama_server)
    assert r.returncode == 1
    warning, first, *rest = r.stderr.strip().splitlines()
    assert warning == "autoctx: warning: not modelled (passed through as they are): --chat-template-file"
    assert first.startswith("autoctx: error: llama-server exited with status 1 before it was ready; last lines:")
    assert any("LLAMA_ARG_CHAT_TEMPLATE_FILE" in line for line in rest)  # the server's own last lines are shown


# --- plan ------------------------------------------------------------------------------------------------------

def test_plan_emit_args_exact(gemma_path):
    r = autoctx("plan", gemma_path, "--device", "cpu", "--free", "cpu=2GiB", "--emit", "args")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-m", gemma_path, "-c", "32768", "-np", "1", "-ctk", "f16", "-ctv", "f16", "-fa",
                                "auto", "-ngl", "0", "-b", "2048", "-ub", "512", "-no-kvu", "--cache-ram", "0",
                                "--ctx-checkpoints", "32", "--fit", "off"]


def test_plan_emit_modelfile_with_quantized_kv(shape_file):
    model = shape_file("llama-3.1-8b")
    r = autoctx("plan", model, "--free", "cuda0=8GiB", "--kv-types", "f16,q8_0", "--emit", "modelfile")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"FROM {model}"
    ctx = int(lines[1].split()[-1])
    assert lines[1] == f"PARAMETER num_ctx {ctx}" and 30000 < ctx < 131072 and ctx % 256 == 0
    assert "#   OLLAMA_KV_CACHE_TYPE=q8_0 OLLAMA_FLASH_ATTENTION=1 ollama serve" in lines


def test_plan_json_and_svg_chart(shape_file, tmp_path):
    model = shape_file("qwen2.5-32b")
    chart = tmp_path / "chart.svg"
    r = autoctx("plan", model, "--free", "cuda0=16GiB", "--free", "cuda1=16GiB", "--json", "--chart", str(chart))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) >= {"plan", "buffers", "budget", "llama_server_args", "modelfile", "reasons"}
    assert d["budget"] == [{"device": "CUDA0", "free_bytes": 16 * 1024**3, "margin_bytes": 1024**3},
                           {"device": "CUDA1", "free_bytes": 16 * 1024**3, "margin_bytes": 1024**3}]
    args = d["llama_server_args"]
    assert args[args.index("-ts") + 1] == "33,32"  # 64 blocks + output, whole layers (planner._Search.split)
    assert {b["device"] for b in d["buffers"] if b["kind"] == "kv"} == {"CUDA0", "CUDA1"}
    svg = chart.read_text()
    assert svg.startswith("<svg") and "polyline" in svg and f"plan: {d['plan']['num_ctx']}" in svg


def test_plan_human_output(gemma_path):
    r = autoctx("plan", gemma_path, "--device", "cpu", "--free", "cpu=300MiB", "--margin", "16MiB")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "KV q8_0" in out and "f16 would fit only" in out and "WARNING" not in out  # q8_0 reaches --min-ctx
    assert "'=' budget 0.28 GiB" in out and "llama-server -m " in out


@pytest.mark.parametrize("args,message", [
    (["--free", "cuda0"], "--free expects DEVICE=SIZE, got 'cuda0'"),
    (["--free", "gpu7=8GiB"], "unknown device 'gpu7'"),
    (["--free", "cuda0=lots"], "bad size 'lots'"),
    (["--kv-type", "q3_k"], "unknown KV cache type 'q3_k'"),
    (["--free", "cpu=100MiB", "--device", "cpu"], "even 4096 tokens with KV q4_0 do not fit (missing CPU:"),
])
def test_plan_bad_input(gemma_path, args, message):
    r = autoctx("plan", gemma_path, *args)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], r.stderr
