"""Ollama's memory, measured: the test Ollama server runs the real pinned llama-server with the argv Ollama builds and
answers /api/ps from the buffers it printed; `autoctx run` verifies and learns from those numbers (real Gemma-3-270M).
Per-GPU attribution comes from the runner's per-process memory (an injected NVML with two GPUs), never all of
size_vram on the first GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest

from autoctx.planner import Budget, plan
from autoctx.probe.devices import DeviceInfo, NvmlBackend, probe
from autoctx.runtimes.ollama.memory import MiB, predicted_ps_sizes, ps_sizes
from autoctx.runtimes.ollama.run import LoadCheck, loaded_memory, runner_memory

from .fake_ollama import FakeOllama
from .test_ollama_run import autoctx
from .test_ollama_store import GEMMA_SHA256, store  # noqa: F401  (the store fixture)

GiB = 1024**3


# --- Ollama's accounting rule (llm/llama_server.go), on hand-made buffer lines ----------------------------------
def test_a_later_line_with_the_same_function_name_and_kind_replaces_the_earlier():
    """Gemma 3 prints its non-SWA and then its SWA KV buffer from llama_kv_cache, both `CPU KV`: /api/ps counts the
    second only."""
    s = ps_sizes([("load_tensors", "CPU_Mapped", "model", 235 * MiB), ("llama_kv_cache", "CPU", "KV", 96 * MiB),
                  ("llama_kv_cache", "CPU", "KV", 15 * MiB), ("sched_reserve", "CPU", "compute", 51 * MiB)],
                 300 * MiB, (0, 19))
    assert (s.size, s.size_vram) == ((235 + 15 + 51) * MiB, 0)


def test_partial_offload_trims_the_mapped_overlap():
    bufs = [("load_tensors", "CUDA0", "model", 3000 * MiB), ("load_tensors", "CPU_Mapped", "model", 4000 * MiB),
            ("load_tensors", "CPU_REPACK", "model", 100 * MiB), ("llama_kv_cache", "CUDA0", "KV", 500 * MiB),
            ("sched_reserve", "CUDA_Host", "compute", 100 * MiB), ("sched_reserve", "CUDA0", "compute", 200 * MiB)]
    # file-backed: CUDA0 3000 + CPU_Mapped 4000 = 7000 > the 5000 MiB file: total loses min(4000, 2000)
    s = ps_sizes(bufs, 5000 * MiB, (20, 33))
    assert s.size == (3000 + 4000 + 100 + 500 + 100 + 200 - 2000) * MiB
    assert s.size_vram == (3000 + 500 + 200) * MiB and s.vram_by_device == {"CUDA0": 3700 * MiB}
    assert ps_sizes(bufs, 8000 * MiB, (20, 33)).size == 7900 * MiB  # no overlap with a bigger file
    assert ps_sizes(bufs, None, (20, 33)).size == 7900 * MiB  # file size unknown: nothing trimmed


def test_full_offload_is_all_vram_and_devices_are_kept_apart():
    bufs = [("load_tensors", "CUDA0", "model", 10 * MiB), ("load_tensors", "CUDA1_Mapped", "model", 20 * MiB),
            ("load_tensors", "CPU_Mapped", "model", 5 * MiB), ("llama_kv_cache", "CUDA1", "KV", 7 * MiB),
            ("sched_reserve", "BLAS", "compute", 1 * MiB)]
    s = ps_sizes(bufs, 100 * MiB, (29, 29))
    assert (s.size, s.size_vram, s.vram_by_device) == (37 * MiB, 37 * MiB, {"CUDA0": 10 * MiB, "CUDA1": 27 * MiB})
    assert ps_sizes(bufs, 100 * MiB, (28, 29)).size == 43 * MiB


def test_predictions_are_counted_the_same_way(spec_of):
    """autoctx's predicted buffers for Gemma 3 on the CPU, as /api/ps would count them: the non-SWA KV buffer is
    replaced by the SWA one, like the logged lines."""
    spec = spec_of("gemma")
    p = plan(spec, [Budget("CPU", 2 * GiB, GiB)])
    kv = [b for b in p.estimate.buffers if b.kind == "kv"]
    assert [b.detail.split()[0] for b in kv] == ["non-SWA", "SWA"]
    s = predicted_ps_sizes(p.estimate, os.path.getsize(spec.path))
    assert (s.size, s.size_vram) == (p.estimate.device_bytes("CPU") - kv[0].bytes, 0)


# --- per-GPU attribution: the runner's own memory, per process --------------------------------------------------
class TwoGpuNVML:
    """pynvml's functions for two GPUs: the model's runner on both, another llama-server and Xorg on the first."""

    def __init__(self, runner_bytes=(10 * GiB, 6 * GiB)):
        p = SimpleNamespace
        self.gpus = [
            dict(name="NVIDIA RTX 4090", procs=[p(pid=100, usedGpuMemory=runner_bytes[0]),
                                                p(pid=200, usedGpuMemory=3 * GiB), p(pid=7, usedGpuMemory=GiB // 2)]),
            dict(name="NVIDIA RTX 4090", procs=[p(pid=100, usedGpuMemory=runner_bytes[1])]),
        ]

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return "550.54.14"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"]

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        return SimpleNamespace(total=24 * GiB, used=16 * GiB, free=8 * GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return self.gpus[h]["procs"]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


class NoCpu:
    name = "psutil"

    def devices(self):
        return [DeviceInfo("CPU", "cpu", "test CPU", 64 * GiB, 32 * GiB, 32 * GiB)]


NAMES = {100: "llama-server", 200: "llama-server", 7: "Xorg"}
BLOB = f"sha256-{'ab' * 32}"
CMDLINES = {100: ["/usr/lib/ollama/llama-server", "--model", f"/var/lib/ollama/models/blobs/{BLOB}", "-c", "8192"],
            200: ["/home/u/llama.cpp/llama-server", "-m", "/home/u/other.gguf"], 7: ["/usr/bin/Xorg"]}


def two_gpus(nvml=None):
    return lambda: probe(backends=[NvmlBackend(nvml=nvml or TwoGpuNVML(), env={}, process_name=NAMES.get)],
                         cpu=NoCpu())


def test_the_runner_is_the_process_whose_command_line_names_the_blob():
    rm = runner_memory(BLOB, two_gpus(), cmdline=CMDLINES.get)
    assert rm.per_gpu == {"CUDA0": 10 * GiB, "CUDA1": 6 * GiB}
    assert rm.lines == ["CUDA0: llama-server (pid 100) holds 10.00 GiB",
                        "CUDA0: llama-server (pid 200) holds 3.00 GiB (not this model's runner)",
                        "CUDA1: llama-server (pid 100) holds 6.00 GiB"]
    assert rm.notes == []


def test_unreadable_command_lines_attribute_only_a_single_runner():
    rm = runner_memory(BLOB, two_gpus(), cmdline=lambda pid: None)
    assert rm.per_gpu == {}
    assert rm.notes == [f"2 runner processes on the GPUs and none names {BLOB}: GPU memory not attributed"]
    one = TwoGpuNVML()
    one.gpus[0]["procs"] = one.gpus[0]["procs"][:1]
    assert runner_memory(BLOB, two_gpus(one), cmdline=lambda pid: None).per_gpu == {"CUDA0": 10 * GiB,
                                                                                       "CUDA1": 6 * GiB}


@pytest.fixture(scope="module")
def split_plan(shape_file):
    """llama-3.1-8b planned over two 6 GiB GPUs: layers on both."""
    from autoctx.model import load_spec

    spec = load_spec(shape_file("llama-3.1-8b"))
    p = plan(spec, [Budget("CUDA0", 6 * GiB, GiB), Budget("CUDA1", 6 * GiB, GiB), Budget("CPU", 32 * GiB, GiB)])
    assert p.estimate.device_bytes("CUDA0") > GiB and p.estimate.device_bytes("CUDA1") > GiB
    return spec, p


def test_each_gpu_is_measured_by_what_the_runner_holds_there(split_plan, tmp_path):
    from autoctx.profiles import ProfileKey, ProfileStore

    spec, p = split_plan
    check = LoadCheck(size=17 * GiB, size_vram=16 * GiB, context_length=p.num_ctx)
    per_gpu = runner_memory(BLOB, two_gpus(), cmdline=CMDLINES.get).per_gpu
    predicted, measured, notes = loaded_memory(spec, p, check, per_gpu)
    assert measured == {"CPU": {"total": GiB}, "CUDA0": {"total": 10 * GiB}, "CUDA1": {"total": 6 * GiB}}
    assert predicted == {"CPU": {"total": 0},  # every layer on a GPU: Ollama counts the whole model as VRAM
                         "CUDA0": {"total": p.estimate.device_bytes("CUDA0")},
                         "CUDA1": {"total": p.estimate.device_bytes("CUDA1")}}
    assert notes == []
    profiles = ProfileStore(tmp_path / "profiles")
    key = ProfileKey("ab" * 32, "2x RTX 4090", "550", "ollama 0.32.15")
    from autoctx.profiles import Profile

    _, path = profiles.record(Profile(key, spec.path, spec.name, spec.architecture),  # as loop.closed_loop does
                              {**p.as_dict(), "runtime": "ollama"}, predicted, measured)
    prof = tomllib.loads(open(path).read())
    assert prof["measured"]["CUDA1"] == {"total": 6 * GiB}  # not 0, and CUDA0 does not get all 16 GiB
    assert prof["correction"]["CUDA0"]["total"] == 10 * GiB - p.estimate.device_bytes("CUDA0")
    assert prof["correction"]["CUDA1"]["total"] == 6 * GiB - p.estimate.device_bytes("CUDA1")


def test_without_per_process_memory_several_gpus_are_not_guessed(split_plan):
    spec, p = split_plan
    check = LoadCheck(size=17 * GiB, size_vram=16 * GiB, context_length=p.num_ctx)
    predicted, measured, notes = loaded_memory(spec, p, check, None)
    assert measured == {"CPU": {"total": GiB}} and set(predicted) == {"CPU"}
    assert notes == ["2 GPUs and no per-process memory from the driver: how the 16.00 GiB in VRAM is split is "
                     "unknown, so no GPU is learned"]


def test_one_gpu_without_per_process_memory_takes_size_vram(spec_of):
    spec = spec_of("gemma")
    p = plan(spec, [Budget("CUDA0", 8 * GiB, GiB)])
    check = LoadCheck(size=900 * MiB, size_vram=800 * MiB, context_length=p.num_ctx)
    _, measured, _ = loaded_memory(spec, p, check, None)
    assert measured == {"CPU": {"total": 100 * MiB}, "CUDA0": {"total": 800 * MiB}}


# --- the argv Ollama builds ---------------------------------------------------------------------------------------
def test_the_runner_argv_is_ollamas(store):  # noqa: F811
    blob = str(store / "blobs" / f"sha256-{GEMMA_SHA256}")
    srv = FakeOllama(store, llama_server="/bin/llama-server")
    srv.extra_args = []
    m = srv.manifest("gemma3:270m")
    head = ["/bin/llama-server", "--model", blob, "--port", "5000", "--host", "127.0.0.1", "--no-webui", "--offline"]
    log = ["--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps"]
    assert srv.runner_argv(m, {"num_ctx": 8192}, 5000) == [*head, "-c", "8192", "-np", "1", *log, "--flash-attn",
                                                           "auto", "-ngl", "0"]
    srv.cpu_only = False  # a GPU host: no -ngl unless num_gpu is set (llama-server's own --fit places layers)
    assert srv.runner_argv(m, {"num_ctx": 8192}, 5000)[-2:] == ["--flash-attn", "auto"]
    srv.env = {"OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_NUM_PARALLEL": "3"}
    m["layers"].append({"mediaType": "application/vnd.ollama.image.projector", "digest": "sha256:" + "4" * 64})
    assert srv.runner_argv(m, {"num_ctx": 8192, "num_gpu": 20, "num_batch": 256, "num_thread": 6}, 5000) == [
        *head, "-c", "24576", "-np", "3", *log, "--mmproj", str(store / "blobs" / ("sha256-" + "4" * 64)),
        "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--flash-attn", "on", "-b", "256", "-ub", "256",
        "-ngl", "20", "-t", "6"]
    srv.env["OLLAMA_FLASH_ATTENTION"] = "false"
    argv = srv.runner_argv(m, {"num_ctx": 8192}, 5000)
    assert argv[argv.index("--flash-attn") + 1] == "off"
    srv.httpd.server_close()


# --- the real llama-server ----------------------------------------------------------------------------------------
@pytest.fixture
def runner_binary(request):
    """The pinned llama-server (the session fixture); $AUTOCTX_LLAMA_SERVER when set."""
    return os.environ.get("AUTOCTX_LLAMA_SERVER") or request.getfixturevalue("llama_server")


_LINE = re.compile(r"^(\w+):\s+(\S+)\s+(model|KV|compute|output|RS) buffer size =\s*([0-9.]+) MiB$")


def ollama_size_from_log(text: str) -> int:
    """/api/ps size for a CPU-only load, computed here from the log lines (not autoctx's parser): one value per
    (function, buffer, kind), the last one, as uint64(MiB × 1048576)."""
    last = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            last[m.group(1, 2, 3)] = int(float(m[4]) * MiB)
    assert last and all(name.startswith("CPU") for _, name, _ in last)
    return sum(last.values())


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def real_env(store, tmp_path, runner_binary):  # noqa: F811
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def make(srv):
        return dict(os.environ, OLLAMA_HOST=srv.url, OLLAMA_MODELS=str(store), AUTOCTX_DATA_DIR=str(tmp_path / "d"),
                    PATH=f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin")
    return make


def plan_json(env, *args):
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", "gemma3:270m", "--runtime", "ollama", "--json",
                        *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.server
def test_run_verifies_and_records_what_the_real_llama_server_allocated(store, runner_binary, real_env):  # noqa: F811
    with FakeOllama(store, llama_server=runner_binary) as srv:
        env = real_env(srv)
        r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "echo: hi\n"
        assert "WARNING" not in r.stderr  # the server loaded the planned context
        name = "gemma3:270m-autoctx"
        runner = srv.runners[name]
        assert runner.argv[1:] == [
            "--model", str(store / "blobs" / f"sha256-{GEMMA_SHA256}"), "--port", str(runner.port), "--host",
            "127.0.0.1", "--no-webui", "--offline", "-c", "32768", "-np", "1", "--log-verbosity", "4",
            "--no-log-prefix", "--no-log-timestamps", "--flash-attn", "auto", "-ngl", "0", "--no-warmup"]
        entry = srv.loaded[name]
        assert entry["context_length"] == 32768
        size = ollama_size_from_log(srv.logs[name])
        assert (entry["size"], entry["size_vram"]) == (size, 0)
        path = next(x for x in r.stderr.splitlines() if x.startswith("autoctx: loaded: ")).rsplit("profile ", 1)[1]
        prof = tomllib.loads(open(path).read())
        assert prof["measured"] == {"CPU": {"total": size}}
        # autoctx predicted exactly these buffers (the repacked weights included), but for the log's rounding to
        # 0.01 MiB per buffer
        d = plan_json(env, "--device", "cpu", "--free", "cpu=2GiB", "--kv-type", "f16")
        assert sum(b["bytes"] for b in d["buffers"] if b["name"] == "CPU_REPACK") > 0
        predicted = prof["predicted"]["CPU"]["total"]
        assert abs(predicted - size) <= 4 * MiB // 200
        assert prof["correction"].get("CPU", {}).get("total", 0) == size - predicted
        pid = runner.proc.pid
        assert running(pid)
        # keep_alive 0 unloads: the llama-server stops
        from autoctx.runtimes.ollama.client import OllamaAPI

        OllamaAPI(srv.url).load(name, keep_alive=0)
        assert not running(pid) and name not in srv.runners and OllamaAPI(srv.url).ps() == []


@pytest.mark.server
def test_a_server_setting_autoctx_cannot_see_is_learned_and_applied(store, runner_binary, real_env):  # noqa: F811
    """The server runs with OLLAMA_NUM_PARALLEL=2 in an environment autoctx cannot read (assumes Ollama's default,
    1): the real llama-server allocates two sequences; the profile learns the difference and the next plan keeps
    that much more free."""
    with FakeOllama(store, llama_server=runner_binary, env={"OLLAMA_NUM_PARALLEL": "2"}) as srv:
        env = real_env(srv)
        r = autoctx(env, "run", "--device", "cpu", "--free", "cpu=2GiB", "gemma3:270m", "hi")
        assert r.returncode == 0, r.stderr
        assert "server environment unknown" in r.stderr
        name = "gemma3:270m-autoctx"
        argv = srv.runners[name].argv
        assert argv[argv.index("-c") + 1: argv.index("-np") + 2] == ["65536", "-np", "2"]
        size = ollama_size_from_log(srv.logs[name])
        path = next(x for x in r.stderr.splitlines() if x.startswith("autoctx: loaded: ")).rsplit("profile ", 1)[1]
        prof = tomllib.loads(open(path).read())
        extra = prof["correction"]["CPU"]["total"]
        assert extra == size - prof["predicted"]["CPU"]["total"] > 0
        # the next plan: that much more margin on the CPU, and a smaller context where memory is the limit
        free = ["--device", "cpu", "--free", "cpu=1400MiB", "--margin", "1GiB"]
        plain = plan_json(env, *free, "--kv-type", "f16")
        dry = autoctx(env, "run", "--dry-run", *free, "gemma3:270m")
        assert dry.returncode == 0, dry.stderr
        assert f"CPU measured {extra / 2**20:.2f} MiB more than predicted over 1 run(s)" in dry.stdout
        with_profile = int(re.search(r"num_ctx=(\d+)", dry.stdout)[1])
        assert with_profile < plain["plan"]["num_ctx"]
        # a load with other options replaces the runner: the old llama-server stops
        old = srv.runners[name].proc.pid
        assert srv.load(name, {"num_ctx": 4096})["context_length"] == 4096
        assert not running(old) and srv.runners[name].argv[srv.runners[name].argv.index("-c") + 1] == "8192"
        pids = [rn.proc.pid for rn in srv.runners.values()]
        assert pids and all(running(p) for p in pids)
    assert not any(running(p) for p in pids)  # every llama-server stopped with the server
