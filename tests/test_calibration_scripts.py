"""The measuring scripts: scripts/gpu-calibrate (CUDA build command, sweep plan, recording, JSON), scripts/
gpu-carry-prepare (carried model headers) and scripts/measure-compute (the compute points' grid, their
train/held-out split, and that it reproduces the file from the real server).

No GPU has run gpu-calibrate yet: its CUDA path is checked here by the commands it builds, its sweep by running the
same code on the CPU build (`--backend cpu`), its recording on a log recorded from that build.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

from autoctx.memory import estimate
from autoctx.runtimes.llamacpp.args import parse_server_args

from .conftest import DATA, ROOT

MiB = 1024 * 1024


_loader = SourceFileLoader("gpu_calibrate", str(ROOT / "scripts" / "gpu-calibrate"))
gc = module_from_spec(spec_from_loader(_loader.name, _loader))
_loader.exec_module(gc)
mc = gc.load_script("measure-compute")
lsp = gc.load_script("llama-server-path")


# --- the CUDA build -------------------------------------------------------------------------------------------

def test_cuda_configure_shares_the_cpu_flags_and_adds_one_architecture(tmp_path):
    cpu = lsp.configure_args(tmp_path / "src", tmp_path / "b")
    cuda = lsp.configure_args(tmp_path / "src", tmp_path / "b", backend="cuda", cuda_arch="90")
    assert "-DGGML_RPC=ON" in cpu and not any("CUDA" in a for a in cpu)  # the cached CPU build is unchanged
    for flag in ("-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_RPC=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_NUMBER=11434"):
        assert flag in cuda
    assert [a for a in cpu if a != "-DGGML_RPC=ON"] == [a for a in cuda if "CUDA" not in a and "RPC" not in a]
    for bad in (None, "", "sm_90", "90;89"):
        with pytest.raises(ValueError):
            lsp.configure_args(tmp_path, tmp_path, backend="cuda", cuda_arch=bad)
    with pytest.raises(ValueError):
        lsp.configure_args(tmp_path, tmp_path, backend="rocm")


def test_build_commands_build_only_llama_server_for_the_gpus_architecture(tmp_path):
    configure, build = gc.build_commands(lsp, tmp_path / "src", tmp_path / "b", gc.cuda_arch("9.0"), 16, "cmake",
                                         "/opt/cuda/bin/nvcc", "/usr/bin/ninja", ["-DCUDA_cublas_LIBRARY=/x.so"])
    assert configure[:4] == ["cmake", "-G", "Ninja", "-DCMAKE_MAKE_PROGRAM=/usr/bin/ninja"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in configure and "-DGGML_CUDA_NCCL=OFF" in configure
    assert configure[-2:] == ["-DCUDA_cublas_LIBRARY=/x.so", "-DCMAKE_CUDA_COMPILER=/opt/cuda/bin/nvcc"]
    assert build == ["cmake", "--build", str(tmp_path / "b"), "--config", "Release", "-j", "16", "--target",
                     "llama-server"]
    no_ninja, _ = gc.build_commands(lsp, tmp_path / "src", tmp_path / "b", "90", 16)
    assert "-G" not in no_ninja and not any(a.startswith("-DCMAKE_CUDA_COMPILER") for a in no_ninja)


def test_compute_capability_names_one_architecture():
    assert [gc.cuda_arch(c) for c in ("9.0", "8.9", "12.0", " 10.0\n")] == ["90", "89", "120", "100"]
    for bad in ("", "9", "sm_90", "9.x"):
        with pytest.raises(SystemExit):
            gc.cuda_arch(bad)


def test_library_hints_use_the_toolkit_else_the_pip_cublas_and_the_driver(tmp_path):
    full = tmp_path / "cuda"
    (full / "targets/x86_64-linux/include").mkdir(parents=True)
    (full / "targets/x86_64-linux/include/cublas_v2.h").touch()
    (full / "lib64/stubs").mkdir(parents=True)
    (full / "lib64/stubs/libcuda.so").touch()
    assert gc.library_hints(full, python_roots=[]) == ([], {}, {"cublas": "toolkit", "cuda_driver": "toolkit"})

    bare = tmp_path / "bare"
    bare.mkdir()
    pip = tmp_path / "site" / "nvidia"
    (pip / "cu13/include").mkdir(parents=True)
    (pip / "cu13/lib").mkdir(parents=True)
    for f in ("include/cublas_v2.h", "lib/libcublas.so.13", "lib/libcublasLt.so.13"):
        (pip / "cu13" / f).touch()
    drv = tmp_path / "driver"
    drv.mkdir()
    (drv / "libcuda.so.1").touch()
    flags, env, where = gc.library_hints(bare, python_roots=[pip], driver_dirs=(str(tmp_path / "none"), str(drv)))
    lib = pip / "cu13/lib"
    assert flags == [f"-DCUDA_cublas_LIBRARY={lib}/libcublas.so.13", f"-DCUDA_cublasLt_LIBRARY={lib}/libcublasLt.so.13",
                     f"-DCMAKE_BUILD_RPATH={lib}", f"-DCUDA_cuda_driver_LIBRARY={drv}/libcuda.so.1"]
    assert env["CPATH"].split(os.pathsep)[0] == str(pip / "cu13/include")
    assert where == {"cublas": str(lib), "cuda_driver": str(drv / "libcuda.so.1")}
    flags, env, where = gc.library_hints(bare, python_roots=[], driver_dirs=())
    assert (flags, env) == ([], {}) and where["cublas"].startswith("not found")


# --- the sweep ------------------------------------------------------------------------------------------------

def test_the_sweep_puts_full_offload_first_and_every_point_is_a_valid_server_command():
    n_layers = {"gemma-3-270m-q4_k_m": 18, "llama-3.1-8b": 32, "qwen3-30b-a3b": 48}
    points = gc.plan(n_layers)
    assert len({(p["model"], tuple(p["args"])) for p in points}) == len(points)
    first = points[:12]
    assert {p["tier"] for p in first} == {"full offload"} and [p["model"] for p in first[::4]] == list(n_layers)
    tiers = list(dict.fromkeys(p["tier"] for p in points))
    assert tiers[:3] == ["full offload", "no layers on the GPU", "partial offload"]
    for p in points:
        args = p["args"]
        parsed = parse_server_args(args).params  # raises on what llama-server would refuse (quantized V, no FA)
        assert args[-4:] == gc.BASE_ARGS
        ngl = args[args.index("-ngl") + 1]
        assert ngl == "all" or 0 <= int(ngl) <= n_layers[p["model"]]
        assert parsed.n_ctx in (4096, 32768)
    by_tier = Counter(p["tier"] for p in points)
    assert by_tier["no layers on the GPU"] == 12 and by_tier["partial offload"] == 12
    assert any("--no-op-offload" in p["args"] for p in points)
    assert {p["args"][p["args"].index("-ub") + 1] for p in points} == {"512", "2048"}


def test_a_point_starts_only_when_it_fits_before_the_deadline():
    assert gc.fits(now=100.0, deadline=200.0, expected_s=30.0)
    assert not gc.fits(now=170.0, deadline=200.0, expected_s=30.0)
    assert not gc.fits(now=0.0, deadline=10.0, expected_s=gc.UNSEEN_POINT_S)


# --- recording ------------------------------------------------------------------------------------------------

RECORDED = DATA / "calibrate" / "cpu_llama-3.1-8b_c4096.log"


def test_recording_a_logged_cpu_run():
    """A log recorded from the pinned CPU build by `gpu-calibrate --backend cpu`."""
    args = gc.point_args(4096)
    rec = gc.record_point("llama-3.1-8b", "full offload", args, RECORDED.read_text(), ready=True, returncode=None,
                          seconds=4.5)
    assert rec["ok"] and rec["args"] == args and rec["error"] == ""
    assert [(b["name"], b["kind"], b["mib"]) for b in rec["buffers"]] == [
        ("CPU_Mapped", "model", 4932.8), ("CPU", "output", 0.49), ("CPU", "kv", 512.0), ("CPU", "compute", 128.02)]
    assert rec["buffer_mib_by_device"] == {"CPU": 5573.31}
    assert rec["cparams"]["n_ctx"] == "4096" and rec["kv_caches"][0]["cells"] == 4096
    assert rec["memory"] is None and rec["overhead_mib"] is None
    assert any("compute buffer size" in ln for ln in rec["log_lines"])
    # the same run as the compute points' llama-3.1-8b -c 4096 -ub 512 -fa on -np 1 (a CPU build ignores -ngl)
    point = next(p for p in json.loads((DATA / "compute_points.json").read_text())["points"]
                 if p["model"] == "llama-3.1-8b" and p["args"][:8] == ["-c", "4096", "-ub", "512", "-fa", "on", "-np",
                                                                         "1"])
    assert [b["mib"] for b in rec["buffers"] if b["kind"] == "compute"] == [point["compute_mib"]]


def test_recording_gpu_buffers_and_the_overhead_nvml_sees():
    """GPU lines in llama.cpp's formats (numbers made up for the arithmetic; no GPU run is recorded yet)."""
    log = "\n".join([
        "llama_model_load_from_file_impl: using device CUDA0 (NVIDIA H100 80GB HBM3) (0000:00:05.0) - 80600 MiB free",
        "load_tensors: offloaded 33/33 layers to GPU",
        "load_tensors:   CPU_Mapped model buffer size =   281.81 MiB",
        "load_tensors:        CUDA0 model buffer size =  4403.49 MiB",
        "llama_context:  CUDA_Host  output buffer size =     0.49 MiB",
        "llama_kv_cache:      CUDA0 KV buffer size =   512.00 MiB",
        "sched_reserve:      CUDA0 compute buffer size =   258.50 MiB",
        "sched_reserve:  CUDA_Host compute buffer size =    16.01 MiB",
    ])
    gpu = 4403.49 + 512.0 + 258.5
    before = {"total": 81559 * MiB, "free": 80600 * MiB, "used": 959 * MiB}
    loaded = {**before, "free": before["free"] - round((gpu + 600.25) * MiB)}
    rec = gc.record_point("llama-3.1-8b", "full offload", gc.point_args(4096), log, ready=True, returncode=None,
                          seconds=3.0, memory={"before": before, "loaded": loaded, "after": before, "source": "nvml"},
                          process={"pid": 1, "gpu_used_bytes": 5800 * MiB})
    assert rec["buffer_mib_by_device"] == {"CPU": round(281.81 + 0.49 + 16.01, 2), "CUDA0": round(gpu, 2)}
    assert rec["buffer_mib_by_name"]["CUDA_Host"] == 16.5
    assert rec["offloaded"] == [33, 33]
    assert rec["devices_used"] == [{"name": "CUDA0", "description": "NVIDIA H100 80GB HBM3",
                                    "pci_bus_id": "0000:00:05.0", "free_mib": 80600}]
    assert rec["overhead_mib"] == 600.25
    bad = gc.record_point("m", "t", [], log + "\nggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB "
                          "on device 0: cudaMalloc failed: out of memory", ready=False, returncode=1, seconds=1.0)
    assert not bad["ok"] and bad["oom"] and bad["returncode"] == 1


def test_the_json_is_replaced_atomically_and_mirrored(tmp_path):
    out, mirror = tmp_path / "data" / "cuda_points.json", tmp_path / "OUT"
    doc = gc.new_doc("cuda")
    gc.write_json(doc, out, mirror)
    doc["points"].append({"model": "x"})
    gc.write_json(doc, out, mirror)
    for f in (out, mirror / "cuda_points.json"):
        assert json.loads(f.read_text())["points"] == [{"model": "x"}]
        assert f.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["cuda_points.json"]  # no temporary file left


def test_the_cuda_points_file_follows_the_schema():
    doc = json.loads((DATA / "cuda_points.json").read_text())
    assert set(gc.new_doc("cuda")) <= set(doc) and doc["schema"] == gc.SCHEMA
    required = {"model", "tier", "args", "ok", "buffers", "buffer_mib_by_device", "memory", "process",
                "overhead_mib", "log_lines"}
    for p in doc["points"]:  # none yet: no GPU has run the script
        assert required <= set(p)
        assert p["model"] in gc.MODELS
    if doc["points"]:
        assert doc["machine"]["compute_cap"] and doc["build"]["version"]


def test_a_budget_that_is_spent_leaves_a_cut_file(tmp_path):
    """The deadline stops the sweep before a point that does not fit; the file says so."""
    out = tmp_path / "p.json"
    rc = gc.main(["--backend", "cpu", "--out", str(out), "--models", "llama-3.1-8b", "--budget", "0",
                  "--llama-server", "/bin/false", "--work", str(tmp_path / "w"), "--carry", str(tmp_path / "none")])
    doc = json.loads(out.read_text())
    assert rc == 0 and doc["points"] == [] and doc["status"].startswith("cut: budget")


# --- carried model headers ------------------------------------------------------------------------------------

def test_a_carried_header_becomes_the_same_gguf(tmp_path):
    from autoctx.gguf import read_gguf
    from autoctx.catalog import get_shape
    from tests.shapes_writer import write_shape_gguf

    prep = gc.load_script("gpu-carry-prepare")
    manifest = prep.models(tmp_path / "carry", ("llama-3.1-8b",), gc.GEMMA)
    entry = manifest["llama-3.1-8b"]
    assert entry["n_layer"] == 32 and (tmp_path / "carry/models/manifest.json").is_file()
    path, n_layer, source = gc.materialize("llama-3.1-8b", tmp_path / "models", tmp_path / "carry")
    fresh = write_shape_gguf(get_shape("llama-3.1-8b"), tmp_path / "fresh.gguf")
    assert (n_layer, source) == (32, "autoctx.catalog")
    assert path.stat().st_size == Path(fresh).stat().st_size == entry["size"]
    assert path.stat().st_blocks * 512 < 16 * MiB  # the weights are a hole
    a, b = read_gguf(path), read_gguf(fresh)
    assert a.data_offsets == b.data_offsets and a.tensor_bytes == b.tensor_bytes
    with open(path, "rb") as x, open(fresh, "rb") as y:
        assert x.read(a.data_offsets[0]) == y.read(b.data_offsets[0])
    head = gzip.decompress((tmp_path / "carry/models" / entry["head"]).read_bytes())
    assert hashlib.sha256(head).hexdigest() == entry["head_sha256"]
    (tmp_path / "carry/models" / entry["head"]).write_bytes(gzip.compress(head[:-1] + b"\1"))
    with pytest.raises(SystemExit, match="damaged"):
        gc.materialize("llama-3.1-8b", tmp_path / "models2", tmp_path / "carry")


@pytest.mark.server
def test_the_cpu_backend_runs_the_sweep_code_on_the_real_server(tmp_path, llama_server):
    out = tmp_path / "cpu_points.json"
    rc = gc.main(["--backend", "cpu", "--out", str(out), "--models", "llama-3.1-8b", "--limit", "2", "--llama-server",
                  llama_server, "--work", str(tmp_path / "w"), "--carry", str(tmp_path / "none"),
                  "--mirror", str(tmp_path / "OUT")])
    doc = json.loads(out.read_text())
    assert rc == 0 and doc["status"] == "complete" and len(doc["points"]) == 2
    first = doc["points"][0]
    assert first["ok"] and first["args"] == gc.point_args(4096)
    assert {(b["kind"], b["mib"]) for b in first["buffers"]} >= {("compute", 128.02), ("kv", 512.0)}
    assert first["process"]["vmrss_bytes"] > 0 and first["memory"] is None
    assert gzip.decompress((tmp_path / "OUT" / "server_logs.txt.gz").read_bytes()).count(b"===== point") == 2
    # a second call resumes: the recorded points are kept and not run again
    rc = gc.main(["--backend", "cpu", "--out", str(out), "--models", "llama-3.1-8b", "--limit", "1", "--llama-server",
                  llama_server, "--work", str(tmp_path / "w"), "--carry", str(tmp_path / "none")])
    doc2 = json.loads(out.read_text())
    assert [p["args"] for p in doc2["points"]][:2] == [p["args"] for p in doc["points"]]
    assert len(doc2["points"]) == 3 and doc2["points"][2]["args"] == gc.point_args(4096, fa="off")


# --- the compute points: regenerated, split into train and held-out --------------------------------------------

COMPUTE = json.loads((DATA / "compute_points.json").read_text())


def test_the_compute_grid_is_the_files_points_in_order():
    assert mc.compute_grid() == [(p["model"], p["args"]) for p in COMPUTE["points"]]


def test_every_point_has_its_split_and_each_model_has_both():
    split = mc.split_of(mc.compute_grid())
    assert [p["split"] for p in COMPUTE["points"]] == [split[(p["model"], tuple(p["args"]))]
                                                       for p in COMPUTE["points"]]
    per_model = Counter((p["model"], p["split"]) for p in COMPUTE["points"])
    for model in {p["model"] for p in COMPUTE["points"]}:
        n = per_model[(model, "train")] + per_model[(model, "held-out")]
        assert per_model[(model, "held-out")] == -(-n // 5) and per_model[(model, "train")] > 0
    assert "predate" in COMPUTE["split"]  # the file says that the constants were fitted before the split


@pytest.mark.slow
def test_held_out_points_are_predicted_like_the_training_points(spec_of):
    """The points the split holds out: compute within 10 % (most within 1 %), KV exact.

    The closed form's constants predate the split (the file's header says so): this becomes a true held-out check
    for constants fitted on the training points alone from now on."""
    held = [p for p in COMPUTE["points"] if p["split"] == "held-out"]
    assert len(held) == 30
    errors = []
    for p in held:
        est = estimate(spec_of(p["model"]), parse_server_args(p["args"]).params)
        pred = est.kind_bytes("compute") / MiB
        assert abs(pred - p["compute_mib"]) <= 0.10 * p["compute_mib"], (p["model"], p["args"], pred)
        assert sum(b.bytes for b in est.buffers if b.kind == "kv") / MiB == pytest.approx(p["kv_mib"], abs=0.011)
        errors.append(abs(pred - p["compute_mib"]) / p["compute_mib"])
    assert sum(e <= 0.01 for e in errors) >= 0.75 * len(errors)


@pytest.mark.server
def test_measure_compute_reproduces_the_files_points(tmp_path, llama_server):
    """One Gemma point and one shape point measured again equal the file's, to the printed 0.01 MiB."""
    ctx = mc.Context(llama_server, tmp_path)
    for p in (COMPUTE["points"][0], next(p for p in COMPUTE["points"] if p["model"] == "gemma-3-4b")):
        got = mc.measure_compute_point(ctx, p["model"], p["args"])
        assert got == {"compute_mib": p["compute_mib"], "kv_mib": p["kv_mib"]}
