"""Fuzz the GGUF path: mutated headers through read_gguf → spec_from_gguf → estimate → plan, each in a bounded worker.

A GGUF header is untrusted input. The seeds are real and shape headers: the real Gemma-3-270M, catalog entries of
several families (llama, Mixtral and Qwen3 MoE, Gemma 3 iSWA, DeepSeek-V2 MLA, gpt-oss, Cohere2) and small
recurrent/hybrid headers written here (mamba, rwkv6, jamba, qwen3next). Their tokenizer arrays are cut short (to 300
entries; Gemma's to 5000, past the reader's decode limit, so the skipping path is fuzzed too) so that a case is a few
KB and runs in milliseconds. Each case applies one family of mutations, or a few (`combo`):

  bitflip    flipped bits, mostly in the structural fields (counts, lengths, types, dims, offsets)
  truncate   the header or the data section cut short
  huge       a count, length, dimension or offset set to an absurd value (2**29 … 2**64 - 1)
  wrong_type a known key given as a string, float, bool, negative or 64-bit integer, array, array of arrays
  absurd     hyperparameters that make no model: 0 heads, more KV heads than heads, block_count 100000, ...
  drop       keys or tensors removed
  duplicate  a key or a tensor name repeated
  split      split-file names and split.* keys pointing at parts that are missing, wrong or corrupt
  nested     arrays of arrays, deep or wide
  long       long or claimed-huge tensor names (0.5 GiB), keys, strings, string arrays; many keys or tensors
  tensor     tensor infos: dimensions, ggml types, offsets, blocks past block_count
  alignment  general.alignment absurd or of the wrong type

and runs as `autoctx estimate` and `autoctx plan --free ...` would run it (the library calls of cli.py's _estimate
and plan, on CPU and on two GPUs), in a forked worker: under a CPU-time alarm, RLIMIT_DATA and a wall-clock
deadline after which the parent kills it. A case fails when it raises anything but GGUFError/AutoctxError (a
traceback), when its error is not one short line, when it takes more than `cpu_s` CPU seconds (slow) or never
answers (hang), when the worker dies (crash), or when the worker's memory grows by more than `mem_mb` (memory). Each
new kind of failure is written to tests/data/fuzz/ as a regression file (JSON: the files of the case, zlib + base64,
with the size each file is extended to, sparsely); tests/test_fuzz_gguf.py replays them all on every run.

    python -m tests.fuzz_gguf --seconds 600 [--seed N] [--gemma PATH]      (make fuzz FUZZ_SECONDS=600)
    python -m tests.fuzz_gguf --replay tests/data/fuzz/CASE.json
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from autoctx.gguf.ggml_types import GGUFValueType
from autoctx.runtimes.llamacpp.runtime import plan_args
from autoctx.runtimes.ollama.runtime import modelfile as ollama_modelfile

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "data" / "fuzz"
FAILURES = ("traceback", "message", "slow", "hang", "memory", "crash", "refused_seed")
MAX_MESSAGE = 500  # characters of one error line (a path, a key, a value clipped to 80, a reason)

VT = GGUFValueType
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = (int(VT[n]) for n in (
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64",
    "FLOAT64"))
_CODE = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}


@dataclass(frozen=True)
class Bounds:
    """What one case may cost: CPU seconds, wall seconds before the worker is killed, memory growth in MiB."""

    cpu_s: float = 1.0
    hang_s: float = 20.0
    mem_mb: int = 200

    @classmethod
    def from_env(cls) -> "Bounds":
        env = os.environ.get
        return cls(float(env("FUZZ_CASE_CPU", cls.cpu_s)), float(env("FUZZ_CASE_HANG", cls.hang_s)),
                   int(env("FUZZ_CASE_MEM_MB", cls.mem_mb)))


# ---------------------------------------------------------------------------------------------------------------
# Headers as editable structures
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class KV:
    key: bytes
    vtype: int
    payload: bytes  # the serialized value (an array: item type, count, elements)


@dataclass
class TI:
    name: bytes
    dims: list[int]
    gtype: int
    offset: int


@dataclass
class Header:
    version: int
    kvs: list[KV]
    tensors: list[TI]
    data_size: int  # bytes of tensor data after the header; the case file is extended (sparsely) to hold them
    n_tensors: int | None = None  # a count to write instead of the real one
    n_kv: int | None = None

    def copy(self) -> "Header":
        return replace(self, kvs=[replace(kv) for kv in self.kvs],
                       tensors=[replace(t, dims=list(t.dims)) for t in self.tensors])

    def find(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key.encode()), None)

    def set(self, key: str, vtype: int, payload: bytes) -> None:
        kv = self.find(key)
        if kv is None:
            self.kvs.append(KV(key.encode(), vtype, payload))
        else:
            kv.vtype, kv.payload = vtype, payload

    def drop(self, key: str) -> None:
        self.kvs = [kv for kv in self.kvs if kv.key != key.encode()]

    @property
    def arch(self) -> str:
        kv = self.find("general.architecture")
        return kv.payload[8:].decode(errors="replace") if kv and kv.vtype == STR else "llama"

    def layers(self) -> int:
        """block_count, for sizing per-layer arrays (clamped: an earlier mutation may have made it absurd)."""
        return min(self.uint(f"{self.arch}.block_count", 8), 1024)

    def uint(self, key: str, default: int = 0) -> int:
        kv = self.find(key)
        if kv is None or kv.vtype not in (U8, U16, U32, U64, I32):
            return default
        return struct.unpack("<" + _CODE[kv.vtype], kv.payload)[0]


def enc(vtype: int, value: Any) -> bytes:
    """One serialized value; for ARR, `value` is (item type, list of values)."""
    if vtype == STR:
        raw = value if isinstance(value, bytes) else str(value).encode()
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARR:
        item, values = value
        return struct.pack("<IQ", item, len(values)) + b"".join(enc(item, v) for v in values)
    return struct.pack("<" + _CODE[vtype], value)


def _skip(raw: bytes, vtype: int, pos: int) -> int:
    """The offset after the value of type `vtype` at `pos` (seeds are trusted: no checks)."""
    if vtype in _CODE:
        return pos + struct.calcsize(_CODE[vtype])
    if vtype == STR:
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]
    item, count = struct.unpack_from("<IQ", raw, pos)
    return _skip_items(raw, item, count, pos + 12)


def _skip_items(raw: bytes, item: int, count: int, pos: int) -> int:
    if item in _CODE:
        return pos + count * struct.calcsize(_CODE[item])
    for _ in range(count):
        pos = _skip(raw, item, pos)
    return pos


def parse_header(raw: bytes, data_size: int, keep: int) -> Header:
    """A seed header (trusted, little-endian), parsed without the reader under test; arrays longer than `keep` are
    cut to their first `keep` elements."""
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, 4)
    pos, kvs, tensors = 24, [], []

    def string(at: int) -> tuple[bytes, int]:
        n = struct.unpack_from("<Q", raw, at)[0]
        return raw[at + 8:at + 8 + n], at + 8 + n

    for _ in range(n_kv):
        key, pos = string(pos)
        vtype = struct.unpack_from("<I", raw, pos)[0]
        start, pos = pos + 4, _skip(raw, vtype, pos + 4)
        payload = raw[start:pos]
        if vtype == ARR:
            item, count = struct.unpack_from("<IQ", payload)
            if count > keep:
                payload = struct.pack("<IQ", item, keep) + raw[start + 12:_skip_items(raw, item, keep, start + 12)]
        kvs.append(KV(key, vtype, payload))
    for _ in range(n_tensors):
        name, pos = string(pos)
        n_dims = struct.unpack_from("<I", raw, pos)[0]
        dims = list(struct.unpack_from(f"<{n_dims}Q", raw, pos + 4))
        gtype, offset = struct.unpack_from("<IQ", raw, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append(TI(name, dims, gtype, offset))
    return Header(version, kvs, tensors, data_size)


def serialize(h: Header) -> tuple[bytes, list[tuple[int, int]]]:
    """The header's bytes, padded to its alignment, and its structural fields as (offset, width)."""
    out = bytearray(b"GGUF")
    fields: list[tuple[int, int]] = []

    def put(code: str, value: int) -> None:
        fields.append((len(out), struct.calcsize(code)))
        out.extend(struct.pack("<" + code, value))

    put("I", h.version)
    put("Q", len(h.tensors) if h.n_tensors is None else h.n_tensors)
    put("Q", len(h.kvs) if h.n_kv is None else h.n_kv)
    for kv in h.kvs:
        put("Q", len(kv.key))
        out += kv.key
        put("I", kv.vtype)
        base = len(out)
        if kv.vtype in (STR, ARR) and len(kv.payload) >= 8:
            fields.append((base, 8) if kv.vtype == STR else (base, 4))
            if kv.vtype == ARR and len(kv.payload) >= 12:
                fields.append((base + 4, 8))
                if len(kv.payload) >= 20 and struct.unpack_from("<I", kv.payload)[0] == STR:
                    fields.append((base + 12, 8))  # the first string's length
        out += kv.payload
    for t in h.tensors:
        put("Q", len(t.name))
        out += t.name
        put("I", len(t.dims))
        for d in t.dims:
            put("Q", d)
        put("I", t.gtype)
        put("Q", t.offset)
    align = h.uint("general.alignment", 32)
    align = align if 0 < align <= 1 << 16 and not align & (align - 1) else 32
    out += b"\0" * (-len(out) % align)
    return bytes(out), fields


# ---------------------------------------------------------------------------------------------------------------
# Cases: files to write (name, bytes, size to extend to) and how they were made
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CaseFile:
    name: str
    data: bytes
    size: int  # the file is extended to this size with a sparse hole (never shorter than data)


@dataclass
class Case:
    family: str
    seed: str
    note: str
    files: list[CaseFile]

    def write(self, folder: Path) -> str:
        for f in self.files:
            path = folder / f.name
            path.write_bytes(f.data)
            if f.size > len(f.data):
                os.truncate(path, f.size)
        return str(folder / self.files[0].name)

    def to_json(self, result: "Result") -> dict:
        return {"family": self.family, "seed": self.seed, "note": self.note, "found": result.kind,
                "signature": result.signature, "detail": result.detail[-2000:],
                "files": [{"name": f.name, "size": f.size,
                           "zlib_base64": base64.b64encode(zlib.compress(f.data, 9)).decode()} for f in self.files]}

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        return cls(d["family"], d["seed"], d["note"],
                   [CaseFile(f["name"], zlib.decompress(base64.b64decode(f["zlib_base64"])), f["size"])
                    for f in d["files"]])


def one_file(family: str, seed: str, note: str, h: Header, name: str = "case.gguf",
             edit: Callable[[bytearray, list[tuple[int, int]]], None] | None = None, extra: int = 0) -> Case:
    data, fields = serialize(h)
    size = len(data) + h.data_size + extra
    if edit is not None:
        buf = bytearray(data)
        edit(buf, fields)
        data = bytes(buf)
    return Case(family, seed, note, [CaseFile(name, data, size)])


# --- values ------------------------------------------------------------------------------------------------------

HUGE_8 = (0, 1, 63, 64, 1 << 29, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1)
HUGE_4 = (0, 1, 4, 5, 13, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
ABSURD_INTS = (0, 1, 2, 3, 7, 63, 255, 511, 512, 513, 4096, 100000, (1 << 31) - 1, 1 << 31, (1 << 31) + 1,
               (1 << 32) - 1)
ARCH_INT_KEYS = (
    "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length", "attention.key_length_swa",
    "attention.value_length_swa", "attention.sliding_window", "attention.sliding_window_pattern", "expert_count",
    "expert_used_count", "expert_feed_forward_length", "leading_dense_block_count", "nextn_predict_layers",
    "vocab_size", "full_attention_interval", "attention.recurrent_layers", "ssm.conv_kernel", "ssm.inner_size",
    "ssm.state_size", "ssm.group_count", "wkv.head_size", "token_shift_count", "attention.shared_kv_layers",
    "attention.key_length_mla", "attention.value_length_mla",
)
GLOBAL_KEYS = ("general.architecture", "general.name", "general.alignment", "split.count", "split.no",
               "split.tensors.count", "tokenizer.ggml.tokens")


def _known_key(rng: random.Random, h: Header) -> str:
    if rng.random() < 0.8:
        return f"{h.arch}.{rng.choice(ARCH_INT_KEYS)}"
    return rng.choice(GLOBAL_KEYS)


def _wrong_value(rng: random.Random, n_layer: int) -> tuple[int, bytes, str]:
    choices: list[tuple[int, Any, str]] = [
        (STR, "32", "a string"), (STR, "", "an empty string"), (F32, 32.0, "a float32"), (F64, 1e300, "a float64"),
        (BOOL, True, "a bool"), (I8, -1, "int8 -1"), (I32, -(1 << 31), "int32 -2**31"), (I64, -1, "int64 -1"),
        (U64, (1 << 64) - 1, "uint64 2**64-1"), (U64, 1 << 40, "uint64 2**40"), (ARR, (F32, [1.5] * n_layer),
                                                                                  "a float array"),
        (ARR, (STR, ["x"] * n_layer), "a string array"), (ARR, (U32, []), "an empty array"),
        (ARR, (I32, list(range(5000))), "an int array of 5000"), (ARR, (BOOL, [True] * n_layer), "a bool array"),
        (ARR, (ARR, [(U32, [1])] * 3), "an array of arrays"),
    ]
    vtype, value, note = rng.choice(choices)
    return vtype, enc(vtype, value), note


def _absurd_value(rng: random.Random, n_layer: int) -> tuple[int, bytes, str]:
    r = rng.random()
    if r < 0.6:
        v = rng.choice(ABSURD_INTS)
        return U32, enc(U32, v), f"{v}"
    if r < 0.8:  # a per-layer array of the wrong or right length, with absurd entries
        n = rng.choice((0, 1, n_layer - 1, n_layer, n_layer + 1, 513))
        vals = [rng.choice(ABSURD_INTS[:12]) for _ in range(max(n, 0))]
        return ARR, enc(ARR, (I32 if rng.random() < 0.5 else U32, vals)), f"an array of {n}"
    v = rng.choice((1 << 32, 1 << 40, (1 << 64) - 1))
    return U64, enc(U64, v), f"uint64 {v}"


# --- mutation families (each edits a copy of the seed and returns a Case) ---------------------------------------


def m_bitflip(rng, seed, h):
    def edit(buf, fields):
        for _ in range(rng.randint(1, 8)):
            if fields and rng.random() < 0.7:
                off, width = rng.choice(fields)
                pos = off + rng.randrange(width)
            else:
                pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
    return one_file("bitflip", seed, "bits flipped", h, edit=edit)


def m_truncate(rng, seed, h):
    data, _ = serialize(h)
    r = rng.random()
    if r < 0.6:
        cut = rng.randrange(len(data))
        return Case("truncate", seed, f"cut at {cut} of {len(data)} header bytes", [CaseFile("case.gguf",
                                                                                              data[:cut], cut)])
    short = rng.randrange(h.data_size + 1) if h.data_size else 0
    return Case("truncate", seed, f"data section {short} of {h.data_size} bytes",
                [CaseFile("case.gguf", data, len(data) + short)])


def m_huge(rng, seed, h):
    def edit(buf, fields):
        off, width = rng.choice(fields)
        v = rng.choice(HUGE_8 if width == 8 else HUGE_4)
        struct.pack_into("<Q" if width == 8 else "<I", buf, off, v)
    # the file may hold what the number claims: extend it by up to 0.5 GiB (sparse)
    return one_file("huge", seed, "a field set huge", h, edit=edit, extra=rng.choice((0, 1 << 29)))


def m_wrong_type(rng, seed, h):
    key = _known_key(rng, h)
    vtype, payload, note = _wrong_value(rng, h.layers())
    h.set(key, vtype, payload)
    return one_file("wrong_type", seed, f"{key} as {note}", h)


def m_absurd(rng, seed, h):
    arch, n = h.arch, h.layers()
    heads = min(h.uint(f"{arch}.attention.head_count", 8), 1 << 20)
    scenarios = {
        "kv heads > heads": lambda: h.set(f"{arch}.attention.head_count_kv", U32, enc(U32, heads + 1)),
        "kv heads not dividing": lambda: h.set(f"{arch}.attention.head_count_kv", U32, enc(U32, max(heads - 1, 3))),
        "per-layer kv heads > heads": lambda: h.set(f"{arch}.attention.head_count_kv", ARR,
                                                    enc(ARR, (I32, [heads * 2] * n))),
        "0 heads": lambda: h.set(f"{arch}.attention.head_count", U32, enc(U32, 0)),
        "block_count 100000": lambda: h.set(f"{arch}.block_count", U32, enc(U32, 100000)),
        "block_count 1": lambda: h.set(f"{arch}.block_count", U32, enc(U32, 1)),
        "embedding 0": lambda: h.set(f"{arch}.embedding_length", U32, enc(U32, 0)),
        "key length 0": lambda: h.set(f"{arch}.attention.key_length", U32, enc(U32, 0)),
        "context 2**32-1": lambda: h.set(f"{arch}.context_length", U32, enc(U32, (1 << 32) - 1)),
        "context 2**40": lambda: h.set(f"{arch}.context_length", U64, enc(U64, 1 << 40)),
        "used > experts": lambda: (h.set(f"{arch}.expert_count", U32, enc(U32, 4)),
                                   h.set(f"{arch}.expert_used_count", U32, enc(U32, 5))),
        "experts 2000": lambda: h.set(f"{arch}.expert_count", U32, enc(U32, 2000)),
        "nextn = blocks": lambda: h.set(f"{arch}.nextn_predict_layers", U32, enc(U32, n)),
        "nextn > blocks": lambda: h.set(f"{arch}.nextn_predict_layers", U32, enc(U32, n + 1)),
        "dense lead > blocks": lambda: h.set(f"{arch}.leading_dense_block_count", U32, enc(U32, n + 1)),
        "window 0": lambda: h.set(f"{arch}.attention.sliding_window", U32, enc(U32, 0)),
        "window 2**32-1": lambda: h.set(f"{arch}.attention.sliding_window", U32, enc(U32, (1 << 32) - 1)),
        "pattern short": lambda: h.set(f"{arch}.attention.sliding_window_pattern", ARR,
                                       enc(ARR, (BOOL, [True] * max(n - 1, 0)))),
        "pattern long": lambda: h.set(f"{arch}.attention.sliding_window_pattern", ARR, enc(ARR, (BOOL, [True] * 600))),
        "pattern period 0": lambda: h.set(f"{arch}.attention.sliding_window_pattern", U32, enc(U32, 0)),
        "interval 0": lambda: h.set(f"{arch}.full_attention_interval", U32, enc(U32, 0)),
        "recurrent layers short": lambda: h.set(f"{arch}.attention.recurrent_layers", ARR,
                                                enc(ARR, (BOOL, [True] * max(n - 2, 0)))),
        "shared kv > blocks": lambda: h.set(f"{arch}.attention.shared_kv_layers", U32, enc(U32, n + 5)),
        "vocab 2**32-1": lambda: h.set(f"{arch}.vocab_size", U32, enc(U32, (1 << 32) - 1)),
        "ssm 2**32-1": lambda: (h.set(f"{arch}.ssm.inner_size", U32, enc(U32, (1 << 32) - 1)),
                                h.set(f"{arch}.ssm.state_size", U32, enc(U32, (1 << 32) - 1))),
    }
    if rng.random() < 0.6:
        note = rng.choice(sorted(scenarios))
        scenarios[note]()
    else:
        key = f"{arch}.{rng.choice(ARCH_INT_KEYS)}"
        vtype, payload, shown = _absurd_value(rng, n)
        h.set(key, vtype, payload)
        note = f"{key} = {shown}"
    return one_file("absurd", seed, note, h)


def m_drop(rng, seed, h):
    if h.tensors and rng.random() < 0.3:
        t = h.tensors.pop(rng.randrange(len(h.tensors)))
        return one_file("drop", seed, f"tensor {t.name.decode()} removed", h)
    arch_keys = [kv for kv in h.kvs if kv.key.startswith(h.arch.encode() + b".")] or h.kvs
    gone = rng.sample(arch_keys, min(len(arch_keys), rng.randint(1, 3)))
    h.kvs = [kv for kv in h.kvs if kv not in gone]
    return one_file("drop", seed, "removed " + ", ".join(kv.key.decode() for kv in gone), h)


def m_duplicate(rng, seed, h):
    if h.tensors and rng.random() < 0.4:
        t = rng.choice(h.tensors)
        h.tensors.append(replace(t, dims=list(t.dims)))
        return one_file("duplicate", seed, f"tensor {t.name.decode()} twice", h)
    kv = rng.choice(h.kvs)
    h.kvs.insert(rng.randrange(len(h.kvs) + 1), replace(kv))
    return one_file("duplicate", seed, f"key {kv.key.decode()} twice", h)


def m_split(rng, seed, h):
    n = rng.choice((2, 3, 5, 99999))
    name = f"case-00001-of-{n:05d}.gguf"
    r = rng.random()
    if r < 0.2:  # a split name, no split keys
        return one_file("split", seed, f"named part 1 of {n}, no split keys", h, name=name)
    if r < 0.3:  # split keys, a plain name
        h.set("split.count", U16 if n < 1 << 16 else U32, enc(U16 if n < 1 << 16 else U32, n))
        return one_file("split", seed, f"split.count {n} in a plain name", h)
    h.set("split.no", U16, enc(U16, 0))
    h.set("split.count", U16, enc(U16, min(n, 5)))
    h.set("split.tensors.count", I32, enc(I32, len(h.tensors)))
    name = f"case-00001-of-{min(n, 5):05d}.gguf"
    if r < 0.5 or len(h.tensors) < 2:  # the other parts are missing
        return one_file("split", seed, "parts missing", h, name=name)
    # two parts that hold the tensors between them; then part 2 is damaged
    h.set("split.count", U16, enc(U16, 2))
    cut = rng.randrange(1, len(h.tensors))
    p1, p2 = h.copy(), Header(h.version, [], h.tensors[cut:], 0)
    p1.tensors = h.tensors[:cut]
    p2.kvs = [KV(b"split.no", U16, enc(U16, 1)), KV(b"split.count", U16, enc(U16, 2)),
              KV(b"split.tensors.count", I32, enc(I32, len(h.tensors)))]
    base = min(t.offset for t in p2.tensors)
    for t in p2.tensors:
        t.offset -= base
    p2.data_size, p1.data_size = h.data_size - base, base
    how = rng.choice(("intact", "split.no wrong", "split.no a string", "truncated", "bitflip", "missing"))
    if how == "split.no wrong":
        p2.kvs[0] = KV(b"split.no", U16, enc(U16, 7))
    elif how == "split.no a string":
        p2.kvs[0] = KV(b"split.no", STR, enc(STR, "1"))
    d1, _ = serialize(p1)
    d2, fields2 = serialize(p2)
    s2 = len(d2) + p2.data_size
    if how == "truncated":
        s2 = rng.randrange(len(d2))
        d2 = d2[:s2]
    elif how == "bitflip":
        b = bytearray(d2)
        off, width = rng.choice(fields2)
        b[off + rng.randrange(width)] ^= 1 << rng.randrange(8)
        d2 = bytes(b)
    files = [CaseFile("case-00001-of-00002.gguf", d1, len(d1) + p1.data_size)]
    if how != "missing":
        files.append(CaseFile("case-00002-of-00002.gguf", d2, s2))
    return Case("split", seed, f"two parts, part 2 {how}", files)


def m_nested(rng, seed, h):
    width = rng.choice((0, 1, 2, 1000))
    depth = rng.randint(1, 9 if width == 2 else 40)  # 2 wide: 2**depth leaves
    value: tuple[int, list] = (U8, [1])
    for _ in range(depth):
        value = (ARR, [value] * width)
    key = _known_key(rng, h) if rng.random() < 0.5 else "fuzz.nested"
    h.set(key, ARR, enc(ARR, value) if width <= 2 else struct.pack("<IQ", ARR, 1 << 40))
    return one_file("nested", seed, f"{key}: arrays nested {depth} deep, {width} wide", h)


def m_long(rng, seed, h):
    what = rng.choice(("tensor name", "tensor name claimed", "key", "key claimed", "string", "string claimed",
                       "string array", "many keys", "many tensors", "long strings"))
    if what == "tensor name" and h.tensors:
        n = rng.choice((63, 64, 65, 300, 5000))
        rng.choice(h.tensors).name = b"blk.0." + b"x" * (n - 6)
    elif what == "key":
        h.kvs.append(KV(b"k" * rng.choice((1023, 1024, 5000)), U8, b"\1"))
    elif what == "string":
        h.set("general.name", STR, enc(STR, b"n" * rng.choice((1 << 20, (1 << 20) + 1, 3 << 20))))
    elif what == "string array":
        h.set("tokenizer.ggml.merges", ARR, enc(ARR, (STR, [b""] * rng.choice((4097, 300_000)))))
    elif what == "many keys":
        h.kvs += [KV(b"fuzz.k%d" % i, U8, b"\0") for i in range(rng.choice((60_000, 70_000)))]
    elif what == "many tensors":
        h.tensors += [TI(b"fuzz.t%d" % i, [0], 0, 0) for i in range(rng.choice((16_000, 17_000)))]
    elif what == "long strings":  # 4096 strings of 4 KiB: 16 MiB of text to decode
        h.set("fuzz.strings", ARR, enc(ARR, (STR, [b"s" * 4096] * 4096)))
    else:  # a length field that claims 0.5 GiB, in a file that holds it (sparse)
        marker = b"@fuzz-claimed@"
        if what == "tensor name claimed" and h.tensors:
            h.tensors[rng.randrange(len(h.tensors))].name = marker
        elif what == "key claimed":
            h.kvs.insert(rng.randrange(len(h.kvs) + 1), KV(marker, U8, b"\0"))
        else:
            h.set("general.name", STR, enc(STR, marker))

        def edit(buf, fields):
            at = buf.find(enc(STR, marker))
            if at >= 0:
                struct.pack_into("<Q", buf, at, 1 << 29)
        return one_file("long", seed, what, h, edit=edit, extra=1 << 29)
    return one_file("long", seed, what, h)


def m_tensor(rng, seed, h):
    if not h.tensors:
        return m_bitflip(rng, seed, h)
    t = rng.choice(h.tensors)
    what = rng.choice(("ndims", "dim", "type", "offset", "past last block", "block index huge", "no embeddings"))
    if what == "ndims":
        t.dims = [rng.choice((1, 8, 1 << 20))] * rng.choice((0, 5, 9))
    elif what == "dim":
        t.dims = t.dims or [1]
        t.dims[rng.randrange(len(t.dims))] = rng.choice((0, 1, 31, 33, (1 << 40) + 1, 1 << 62, (1 << 64) - 1))
    elif what == "type":
        t.gtype = rng.choice((0, 1, 4, 5, 8, 12, 39, 40, 1000, (1 << 32) - 1))
    elif what == "offset":
        t.offset = rng.choice((1, 31, h.data_size, h.data_size + 32, 1 << 62, (1 << 64) - 32))
    elif what == "past last block":
        t.name = b"blk.%d.attn_q.weight" % (h.layers() + rng.choice((0, 1, 1000)))
    elif what == "block index huge":
        t.name = b"blk.99999999999999999999999999.ffn_up.weight"
    else:
        h.tensors = [x for x in h.tensors if not x.name.startswith((b"token_embd", b"output"))]
    return one_file("tensor", seed, f"tensor {t.name[:40].decode(errors='replace')}: {what}", h)


def m_alignment(rng, seed, h):
    vtype, value = rng.choice(((U32, 0), (U32, 3), (U32, 48), (U32, 64), (U32, 1 << 31), (U32, (1 << 32) - 1),
                               (U64, 32), (I32, 32), (STR, "32"), (F32, 32.0)))
    h.set("general.alignment", vtype, enc(vtype, value))
    return one_file("alignment", seed, f"general.alignment {value!r} as type {vtype}", h)


FAMILIES: dict[str, Callable[[random.Random, str, Header], Case]] = {
    "bitflip": m_bitflip, "truncate": m_truncate, "huge": m_huge, "wrong_type": m_wrong_type, "absurd": m_absurd,
    "drop": m_drop, "duplicate": m_duplicate, "split": m_split, "nested": m_nested, "long": m_long,
    "tensor": m_tensor, "alignment": m_alignment,
}
_STRUCTURED = ("wrong_type", "absurd", "drop", "duplicate", "tensor", "alignment")


def make_case(rng: random.Random, seeds: dict[str, Header]) -> Case:
    seed = rng.choice(sorted(seeds))
    h = seeds[seed].copy()
    if rng.random() < 0.12:  # a few structured edits, then maybe a byte-level one
        notes = []
        for _ in range(rng.randint(2, 3)):
            edit = FAMILIES[rng.choice(_STRUCTURED)]
            edit_case = edit(rng, seed, h)  # edits h in place; the case of the last step is kept
            notes.append(edit_case.note)
        if rng.random() < 0.5:
            edit_case = m_bitflip(rng, seed, h)
            notes.append(edit_case.note)
        return replace(edit_case, family="combo", note="; ".join(notes))
    family = rng.choice(sorted(FAMILIES))
    return FAMILIES[family](rng, seed, h)


# ---------------------------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------------------------

SHAPE_SEEDS = ("llama-3.1-8b", "mixtral-8x7b", "qwen3-30b-a3b", "gemma-3-4b", "deepseek-v2-lite", "gpt-oss-20b",
               "command-r7b")
SLIM = 300  # tokenizer entries kept in a seed
SLIM_GEMMA = 5000  # past the reader's decode limit (4096): the lazy-array path


def _small_shapes() -> list:
    """Recurrent and hybrid models (none in the catalog): mamba and rwkv6 (every layer recurrent), jamba (layers with
    0 KV heads are recurrent; MoE) and qwen3next (one full-attention layer in four)."""
    from autoctx.catalog import Shape, TensorShape
    from autoctx.quant_policy import F32

    def shape(name: str, arch: str, n_layer: int, kv: dict, layer: Callable[[int], list], n_embd: int = 256):
        md = {"general.architecture": arch, "general.name": name, f"{arch}.block_count": n_layer,
              f"{arch}.context_length": 8192, f"{arch}.embedding_length": n_embd,
              **{f"{arch}.{k}": v for k, v in kv.items()}, "tokenizer.ggml.model": "llama",
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
        tensors = [TensorShape("token_embd.weight", (n_embd, 512), F32)]
        tensors += [TensorShape(f"blk.{i}.{role}.weight", dims, F32) for i in range(n_layer) for role, dims in layer(i)]
        tensors += [TensorShape("output_norm.weight", (n_embd,), F32), TensorShape("output.weight", (n_embd, 512), F32)]
        return Shape(name, name, arch, "tests/fuzz_gguf.py", md, 512, tuple(tensors))

    ssm = {"ssm.conv_kernel": 4, "ssm.inner_size": 512, "ssm.state_size": 16, "ssm.time_step_rank": 16}
    attn = [("attn_q", (256, 256)), ("attn_k", (256, 64)), ("attn_v", (256, 64)), ("attn_output", (256, 256))]
    return [
        shape("mamba", "mamba", 4, {"feed_forward_length": 0, "attention.head_count": 0, **ssm},
              lambda i: [("ssm_in", (256, 1024)), ("ssm_out", (512, 256))]),
        shape("rwkv6", "rwkv6", 4, {"feed_forward_length": 896, "attention.head_count": 0, "wkv.head_size": 64,
                                    "rescale_every_n_layers": 6},
              lambda i: [("time_mix_key", (256, 256)), ("channel_mix_value", (896, 256))]),
        shape("jamba", "jamba", 8, {"feed_forward_length": 1024, "attention.head_count": 4,
                                    "attention.head_count_kv": [0, 0, 0, 0, 1, 0, 0, 0], "expert_count": 4,
                                    "expert_used_count": 2, **ssm},
              lambda i: attn if i == 4 else [("ssm_in", (256, 1024))]),
        shape("qwen3next", "qwen3next", 8, {"feed_forward_length": 512, "attention.head_count": 4,
                                            "attention.head_count_kv": 1, "attention.key_length": 64,
                                            "attention.value_length": 64, "full_attention_interval": 4,
                                            "expert_count": 8, "expert_used_count": 2,
                                            "expert_feed_forward_length": 128, "ssm.conv_kernel": 4,
                                            "ssm.inner_size": 512, "ssm.state_size": 64, "ssm.group_count": 4},
              lambda i: attn if i % 4 == 3 else [("ssm_in", (256, 1024))]),
    ]


def _header_of(path: str, keep: int) -> Header:
    from autoctx.gguf import read_gguf

    f = read_gguf(path)
    with open(path, "rb") as fh:
        raw = fh.read(f.data_offsets[0])
    return parse_header(raw, f.file_sizes[0] - f.data_offsets[0], keep)


def build_seeds(folder: Path, gemma: str | None) -> dict[str, Header]:
    from autoctx.catalog import get_shape
    from tests.shapes_writer import write_shape_gguf

    seeds: dict[str, Header] = {}
    for shape in [get_shape(n) for n in SHAPE_SEEDS] + _small_shapes():
        path = write_shape_gguf(shape, folder / f"{shape.name}.gguf")
        seeds[shape.name] = _header_of(str(path), SLIM)
        path.unlink()
    if gemma:
        seeds["gemma-3-270m (real)"] = _header_of(gemma, SLIM_GEMMA)
    return seeds


def seed_cases(seeds: dict[str, Header]) -> list[Case]:
    """Every seed unmutated: each must run through without a refusal."""
    return [one_file("seed", name, "unmutated", h.copy()) for name, h in sorted(seeds.items())]


# ---------------------------------------------------------------------------------------------------------------
# The pipeline and the worker that runs it under bounds
# ---------------------------------------------------------------------------------------------------------------


def run_pipeline(path: str) -> str:
    """What `autoctx estimate PATH` and `autoctx plan PATH --free ...` do with a model, through the same library
    calls (cli.py _estimate / plan): 'ok', or the refusals (GGUFError / AutoctxError) joined by ' | '."""
    from autoctx.report import estimate_json
    from autoctx.errors import AutoctxError
    from autoctx.gguf import read_gguf
    from autoctx.memory import Device, estimate
    from autoctx.model import spec_from_gguf
    from autoctx.planner import GPU_MARGIN, Budget, PlanOptions, default_margin, plan
    from autoctx.report import plan_table, settings, text_chart
    from autoctx.runtimes.llamacpp.args import parse_server_args, with_devices

    spec = spec_from_gguf(read_gguf(path))  # a refusal here ends the case (the caller reports it)
    json.dumps(spec.summary())
    GiB = 1 << 30
    opts = PlanOptions(cpu_repack=_CPU_REPACK)
    cpu = [Budget("CPU", 64 * GiB, default_margin("CPU", 64 * GiB))]  # every seed fits, unmutated
    gpus = [Budget("CUDA0", 24 * GiB, GPU_MARGIN), Budget("CUDA1", 16 * GiB, GPU_MARGIN),
            Budget("CPU", 64 * GiB, default_margin("CPU", 64 * GiB))]
    refusals = []

    def cpu_plan() -> None:
        p = plan(spec, cpu, opts)
        plan_args(p), ollama_modelfile(p), plan_table(p), settings(p), text_chart(p)

    def gpu_plan() -> None:
        p = plan(spec, gpus, opts)
        plan_args(p), ollama_modelfile(p), plan_table(p)

    stages = [
        lambda: json.dumps(estimate_json(estimate(spec, parse_server_args([]).params))),
        lambda: estimate(spec, with_devices(parse_server_args(["-ngl", "10"]).params, [Device("CUDA0")])),
        cpu_plan,
        gpu_plan,
    ]
    for stage in stages:
        try:
            stage()
        except AutoctxError as e:
            refusals.append(str(e))
    return " | ".join(refusals) or "ok"


_CPU_REPACK: dict[str, int] = {}


@dataclass
class Result:
    kind: str  # ok | refused | traceback | message | slow | hang | memory | crash
    detail: str = ""
    cpu_s: float = 0.0
    mem_mb: float = 0.0
    signature: str = ""


class _OverTime(BaseException):
    """Raised by the CPU-time alarm; a BaseException so that no `except Exception` in the code under test eats it."""


def _status(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", fh.read(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _traceback_signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/autoctx/" in f.filename] or frames
    last = ours[-1] if ours else None
    where = f"{Path(last.filename).name}:{last.lineno} ({last.name})" if last else "?"
    return f"traceback {type(exc).__name__} at {where}"


def run_bounded(path: str, bounds: Bounds) -> Result:
    """Run the pipeline on `path` in this process under the CPU and memory bounds (the worker's side)."""
    from autoctx.errors import AutoctxError
    from autoctx.gguf import GGUFError

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    data = _status("VmData")  # RLIMIT_DATA counts the heap, not the read-only map of the file
    if data:
        limit = data + bounds.mem_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    peak_ok = _reset_peak()
    rss0 = _status("VmRSS")
    t0 = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, bounds.cpu_s)
    try:
        out = run_pipeline(path)
        res = Result("ok" if out == "ok" else "refused", out)
    except (GGUFError, AutoctxError) as e:
        res = Result("refused", str(e))
    except _OverTime:
        res = Result("slow", f"over {bounds.cpu_s} CPU seconds", signature="slow")
    except MemoryError:
        res = Result("memory", f"MemoryError past {bounds.mem_mb} MiB (RLIMIT_DATA)", signature="memory")
    except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
        res = Result("traceback", traceback.format_exc(), signature=_traceback_signature(e))
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    res.cpu_s = time.process_time() - t0
    res.mem_mb = (_status("VmHWM") - rss0) / 2**20 if peak_ok else 0.0
    if res.kind in ("ok", "refused"):
        if res.kind == "refused" and any("\n" in m or len(m) > MAX_MESSAGE for m in res.detail.split(" | ")):
            res.kind, res.signature = "message", "message not one short line"
        elif res.cpu_s > bounds.cpu_s:
            res.kind, res.detail, res.signature = "slow", f"{res.cpu_s:.2f} CPU seconds", "slow"
        elif res.mem_mb > bounds.mem_mb:
            res.kind, res.detail, res.signature = "memory", f"peak RSS +{res.mem_mb:.0f} MiB", "memory"
    return res


def _serve(conn, bounds: Bounds) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and kills us

    def over(signum, frame):
        raise _OverTime()

    signal.signal(signal.SIGPROF, over)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    while True:
        try:
            path = conn.recv()
        except EOFError:
            return
        if path is None:
            return
        conn.send(run_bounded(path, bounds))


class Worker:
    """A forked process that runs cases one at a time; killed and replaced when a case hangs or kills it."""

    def __init__(self, bounds: Bounds):
        self.bounds = bounds
        self.proc = None
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.bounds), daemon=True)
        self.proc.start()
        child.close()

    def run(self, path: str) -> Result:
        t0 = time.monotonic()
        self.conn.send(path)
        if not self.conn.poll(self.bounds.hang_s):
            self.restart()
            return Result("hang", f"no answer after {time.monotonic() - t0:.1f} s (killed)", signature="hang")
        try:
            res = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            self.restart()
            return Result("crash", f"the worker died (exit code {code})", signature=f"crash {code}")
        if res.kind in FAILURES:
            self.restart()  # its state may be damaged (memory, a half-finished import)
        return res

    def restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(1)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.conn.close()


def _prepare_parent() -> None:
    """Import everything the pipeline uses before forking, so a worker starts at once."""
    global _CPU_REPACK
    import autoctx.cli  # noqa: F401
    import autoctx.report  # noqa: F401
    from autoctx.probe.cpu import host_repack_rules

    _CPU_REPACK = host_repack_rules()


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    by_family: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[tuple[Case, Result]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    max_cpu_s: float = 0.0
    max_mem_mb: float = 0.0
    slowest: str = ""
    seeds: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = Counter()
        for c in self.by_family.values():
            kinds.update(c)
        lines = [f"{self.cases} cases in {self.seconds:.1f} s from {len(self.seeds)} seeds "
                 f"({', '.join(self.seeds)}); slowest {self.max_cpu_s:.3f} CPU s ({self.slowest}), "
                 f"largest +{self.max_mem_mb:.0f} MiB",
                 "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))]
        for fam, c in sorted(self.by_family.items()):
            lines.append(f"  {fam:<11}" + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        for case, res in self.failures:
            lines.append(f"FAIL {res.kind} [{case.family} on {case.seed}: {case.note}]: {res.signature}")
        lines += [f"wrote {p}" for p in self.written]
        return "\n".join(lines)


def _known_signatures(folder: Path) -> set[str]:
    out = set()
    for p in folder.glob("*.json"):
        try:
            out.add(json.loads(p.read_text())["signature"])
        except (OSError, ValueError, KeyError):
            pass
    return out


def _save(case: Case, res: Result, folder: Path) -> Path:
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(case.to_json(res), indent=1, sort_keys=True)
    name = f"{case.family}-{res.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}.json"
    path = folder / name
    path.write_text(blob + "\n")
    return path


def fuzz(seconds: float, seed: int = 1, gemma: str | None = None, bounds: Bounds | None = None,
         out: Path | None = REGRESSIONS, max_cases: int | None = None, log: Callable[[str], None] | None = None
         ) -> Report:
    """Fuzz for `seconds` (deterministic for a given seed, up to how many cases fit); failures of a kind not yet
    in `out` are saved there."""
    bounds = bounds or Bounds.from_env()
    rng = random.Random(seed)
    report = Report()
    known = _known_signatures(out) if out else set()
    work = Path(tempfile.mkdtemp(prefix="autoctx-fuzz-"))
    _prepare_parent()
    worker = None
    try:
        seeds = build_seeds(work, gemma)
        report.seeds = sorted(seeds)
        worker = Worker(bounds)
        start = time.monotonic()
        cases = iter(seed_cases(seeds))
        while time.monotonic() - start < seconds and (max_cases is None or report.cases < max_cases):
            case = next(cases, None) or make_case(rng, seeds)
            folder = Path(tempfile.mkdtemp(dir=work))
            try:
                res = worker.run(case.write(folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if case.family == "seed" and res.kind == "refused":  # a valid model must stay valid
                res.kind, res.signature = "refused_seed", f"seed {case.seed} refused"
            report.cases += 1
            report.by_family[case.family][res.kind] += 1
            if res.cpu_s > report.max_cpu_s:
                report.max_cpu_s, report.slowest = res.cpu_s, f"{case.family} on {case.seed}: {case.note}"
            report.max_mem_mb = max(report.max_mem_mb, res.mem_mb)
            if res.kind in FAILURES:
                if res.kind != "traceback":  # one regression file per kind of failure and family
                    res.signature = f"{res.signature} in {case.family}"
                report.failures.append((case, res))
                if out is not None and case.family != "seed" and res.signature not in known:
                    known.add(res.signature)
                    report.written.append(_save(case, res, out))
                if log:
                    log(f"FAIL {res.kind} [{case.family} on {case.seed}: {case.note}]: {res.signature}")
        report.seconds = time.monotonic() - start
    finally:
        if worker is not None:
            worker.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


def replay(path: Path, bounds: Bounds | None = None) -> Result:
    """Run one regression file's case in a fresh worker."""
    case = Case.from_json(json.loads(path.read_text()))
    _prepare_parent()
    worker = Worker(bounds or Bounds.from_env())
    work = Path(tempfile.mkdtemp(prefix="autoctx-fuzz-"))
    try:
        return worker.run(case.write(work))
    finally:
        worker.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz_gguf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 60)))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", 1)))
    ap.add_argument("--gemma", default=None, help="the real Gemma-3-270M GGUF (default: scripts/gemma-gguf-path)")
    ap.add_argument("--out", default=str(REGRESSIONS), help="where new failures are written")
    ap.add_argument("--replay", nargs="*", default=None, help="regression files to run instead of fuzzing")
    a = ap.parse_args(argv)
    if a.replay is not None:
        bad = 0
        for p in a.replay:
            res = replay(Path(p))
            print(f"{p}: {res.kind}: {res.detail.strip().splitlines()[-1] if res.detail else ''}")
            bad += res.kind in FAILURES
        return 1 if bad else 0
    gemma = a.gemma
    if gemma is None:
        import subprocess

        out = subprocess.run([sys.executable, str(HERE.parent / "scripts" / "gemma-gguf-path")], capture_output=True,
                             text=True)
        gemma = out.stdout.strip() if out.returncode == 0 else None
    report = fuzz(a.seconds, a.seed, gemma, out=Path(a.out), log=lambda m: print(m, flush=True))
    print(report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
