"""Hostile or broken GGUF files given to `autoctx estimate` and `autoctx plan`, as a user runs them: one
`autoctx: error: ...` line on stderr naming the file (and the key), nothing on stdout, exit status 1, promptly.
And a header at every limit of the reader still reads and plans within the time bound."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import pytest

from tests import fuzz_gguf as fz

VT = gguf.GGUFValueType


def autoctx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *args], capture_output=True, text=True, timeout=120)


def tiny_llama(path: Path, **keys) -> Path:
    """A small llama GGUF (4 blocks, one tensor) with extra or replaced uint32 keys (None drops one)."""
    w = gguf.GGUFWriter(str(path), "llama")
    base = {"block_count": 4, "context_length": 8192, "embedding_length": 256, "attention.head_count": 4}
    for key, value in {**base, **keys}.items():
        if value is not None:
            w.add_uint32(f"llama.{key}", value)
    w.add_tensor("token_embd.weight", gguf.np.zeros((32, 256), dtype=gguf.np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def raw_gguf(path: Path, body: bytes, n_tensors: int, n_kv: int, size: int = 0) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body)
    if size:
        os.truncate(path, size)  # a sparse hole: the file holds what the header claims
    return path


def _fifo(d: Path) -> tuple[str, str]:
    os.mkfifo(d / "pipe.gguf")
    return str(d / "pipe.gguf"), "{}: cannot open: a FIFO, not a regular file"


def _directory(d: Path) -> tuple[str, str]:
    (d / "dir.gguf").mkdir()
    return str(d / "dir.gguf"), "{}: cannot open: a directory, not a regular file"


def _dev_zero(d: Path) -> tuple[str, str]:
    return "/dev/zero", "{}: cannot open: a character device, not a regular file"


def _half_gib_name(d: Path) -> tuple[str, str]:
    p = raw_gguf(d / "name.gguf", struct.pack("<Q", 1 << 29), 1, 0, size=(1 << 29) + 4096)
    return str(p), "{}: tensor name 1 of 1 is 536870912 bytes long (GGML_MAX_NAME allows at most 63)"


def _nested(d: Path) -> tuple[str, str]:
    key = b"general.architecture"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", int(VT.ARRAY), int(VT.ARRAY), 1 << 40)
    return str(raw_gguf(d / "nested.gguf", body, 0, 1, 4096)), (
        "{}: key 'general.architecture' is an array of arrays, which GGUF readers (gguf.cpp) refuse")


def _kv_heads(d: Path) -> tuple[str, str]:
    return str(tiny_llama(d / "kv.gguf", **{"attention.head_count_kv": 8})), (
        "{}: bad llama.attention.head_count_kv 8 in layer 0: must divide head_count 4")


def _block_count(d: Path) -> tuple[str, str]:
    return str(tiny_llama(d / "blocks.gguf", block_count=100000)), "{}: bad llama.block_count 100000: must be 1..512"


def _no_context(d: Path) -> tuple[str, str]:
    return str(tiny_llama(d / "noctx.gguf", context_length=None)), "{}: missing llama.context_length"


def _split_missing(d: Path) -> tuple[str, str]:
    w = gguf.GGUFWriter(str(d / "s.gguf"), "llama", split_max_tensors=1)
    for i in range(2):
        w.add_tensor(f"t{i}", gguf.np.zeros(8, dtype=gguf.np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (d / "s-00002-of-00002.gguf").unlink()
    return str(d / "s-00001-of-00002.gguf"), f"{d / 's-00002-of-00002.gguf'}: missing part 2 of 2 of a split GGUF"


def _truncated_gemma(d: Path, gemma: str) -> tuple[str, str]:
    p = d / "cut.gguf"
    with open(gemma, "rb") as fh:
        p.write_bytes(fh.read(3 << 20))  # inside the 262144-token vocabulary (~4 MiB)
    return str(p), "{}: truncated file (string array 'tokenizer.ggml.tokens' runs past the end)"


CASES = {"fifo": _fifo, "directory": _directory, "/dev/zero": _dev_zero, "0.5 GiB tensor name": _half_gib_name,
         "array of arrays": _nested, "kv heads > heads": _kv_heads, "block_count 100000": _block_count,
         "no context_length": _no_context, "split part missing": _split_missing, "truncated gemma": _truncated_gemma}


@pytest.mark.parametrize("command", [["estimate"], ["plan", "--free", "cpu=8GiB"]], ids=["estimate", "plan"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_is_one_error_line(tmp_path: Path, gemma_path, case, command):
    make = CASES[case]
    model, message = make(tmp_path, gemma_path) if case == "truncated gemma" else make(tmp_path)
    t0 = time.monotonic()
    r = autoctx(command[0], model, *command[1:])
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"autoctx: error: {message.format(model)}\n")
    assert time.monotonic() - t0 < 60  # a FIFO used to block for ever; a 0.5 GiB name took GBs and minutes


def test_header_at_every_limit_is_bounded():
    """512 blocks (LLAMA_MAX_LAYERS), 16380 tensors spread over them (MAX_TENSORS is 16384), a 2**31 context
    (int32 positions), 1024 experts (LLAMA_MAX_EXPERTS), a 2**20 vocabulary and a 2**31 sliding window: read,
    ModelSpec, two estimates and two plans (CPU, and two GPUs) as the fuzzer runs them, in its bounded worker."""
    L, arch = 512, "gemma3"
    kvs = [fz.KV(b"general.architecture", fz.STR, fz.enc(fz.STR, arch))]
    limits = {"block_count": L, "context_length": 2**31, "embedding_length": 8192, "feed_forward_length": 28672,
              "attention.head_count": 64, "attention.head_count_kv": 8, "expert_count": 1024, "expert_used_count": 8,
              "expert_feed_forward_length": 2048, "vocab_size": 2**20, "attention.sliding_window": 2**31}
    for key, value in limits.items():
        kvs.append(fz.KV(f"{arch}.{key}".encode(), fz.U32, fz.enc(fz.U32, value)))
    dims = [(b"token_embd.weight", [256, 2**20])]
    dims += [(b"blk.%d.w%d.weight" % (i % L, i), [256, 64]) for i in range(16380)] + [(b"output.weight", [256, 2**20])]
    tensors, offset = [], 0
    for name, shape in dims:
        tensors.append(fz.TI(name, shape, 0, offset))
        offset += shape[0] * shape[1] * 4
    case = fz.one_file("limits", "every limit", "", fz.Header(3, kvs, tensors, offset))
    fz._prepare_parent()
    w = fz.Worker(fz.Bounds(cpu_s=2.0, hang_s=30, mem_mb=200))
    try:
        with tempfile.TemporaryDirectory() as d:
            res = w.run(case.write(Path(d)))
    finally:
        w.close()
    assert res.kind == "ok", res.detail
    assert res.cpu_s < 2.0 and res.mem_mb < 200  # measured: ~0.85 CPU s, +10 MiB
