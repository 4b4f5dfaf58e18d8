"""Fast GGUF header reader: metadata key/values and tensor infos, nothing else.

Layout (ggml/src/gguf.cpp, docs/gguf.md): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
(key, type, value) entries, then n_tensors (name, n_dims, ne[n_dims], type, offset) infos, then padding to
`general.alignment` and the data section. Version 2 and 3 use 64-bit counts; a big-endian file shows as a version
whose low 16 bits are zero when read little-endian.

Speed: the tokenizer arrays (262k strings for Gemma 3) are skipped, not decoded: a string array costs one length
read per element, numeric arrays a single seek. Small arrays (per-layer head counts, SWA patterns) are decoded.
Safety: every count and length is checked against the bytes left in the file before it is used, so a corrupt or
hostile file raises `GGUFError` instead of allocating or looping without end.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUFValueType, tensor_bytes, type_name

__all__ = ["GGUFError", "GGUFArray", "TensorInfo", "GGUFFile", "read_gguf", "split_paths"]

# Arrays up to this many elements are decoded into Python lists; longer ones stay lazy (GGUFArray).
MAX_DECODED_ARRAY = 4096
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8

_SCALAR = {  # value type -> struct code
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
_SCALAR = {int(k): v for k, v in _SCALAR.items()}
_STRING = int(GGUFValueType.STRING)
_ARRAY = int(GGUFValueType.ARRAY)
_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFError(ValueError):
    """A file that is not a readable GGUF (truncated, not GGUF, unsupported version, absurd counts, bad types)."""


@dataclass(frozen=True)
class GGUFArray:
    """A long array left unread in the file: its element type, length and where it starts."""

    item_type: int
    count: int
    offset: int  # absolute file offset of the first element
    path: str

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (contiguous row) first
    ggml_type: int
    offset: int  # relative to the data section of its file
    nbytes: int  # exact byte size (ggml_nbytes)
    file_index: int = 0  # which split file holds the data

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFFile:
    paths: list[str]
    version: int
    byte_order: str  # "<" or ">"
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int
    data_offsets: list[int]  # per file: absolute offset of the data section
    file_sizes: list[int]
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> str:
        return self.paths[0]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def tensor(self, name: str) -> TensorInfo | None:
        if not self._by_name:
            self._by_name = {t.name: t for t in self.tensors}
        return self._by_name.get(name)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Cursor:
    """Bounds-checked reads from a memory map."""

    __slots__ = ("buf", "pos", "end", "bo", "path", "_u64", "_u32")

    def __init__(self, buf: mmap.mmap | bytes, bo: str, path: str):
        self.buf, self.pos, self.end, self.bo, self.path = buf, 0, len(buf), bo, path
        self._u64 = struct.Struct(bo + "Q")
        self._u32 = struct.Struct(bo + "I")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise GGUFError(f"{self.path}: truncated file (needs {n} more bytes for {what} at offset {self.pos})")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = self._u32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = self._u64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` length-prefixed strings without decoding them (the tokenizer fast path)."""
        buf, pos, end, unpack = self.buf, self.pos, self.end, self._u64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
        except struct.error:
            pos = end + 1
        if pos > end:
            raise GGUFError(f"{self.path}: truncated file (string array {what} runs past the end)")
        self.pos = pos

    def scalars(self, code: str, count: int, what: str) -> list[Any] | Any:
        size = struct.calcsize(code)
        self.need(size * count, what)
        vals = struct.unpack_from(f"{self.bo}{count}{code}", self.buf, self.pos)
        self.pos += size * count
        return vals


def _type_label(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name.lower()
    except ValueError:
        return f"type {vtype}"


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in _SCALAR:
        return cur.scalars(_SCALAR[vtype], 1, key)[0]
    if vtype == _STRING:
        return cur.string(key)
    if vtype != _ARRAY:
        raise GGUFError(f"{cur.path}: key {key!r} has an unknown value type {vtype}")
    if depth >= MAX_NESTING:
        raise GGUFError(f"{cur.path}: key {key!r} nests arrays too deeply")
    item = cur.u32(key)
    count = cur.u64(key)
    start = cur.pos
    if item in _SCALAR:
        size = struct.calcsize(_SCALAR[item])
        cur.need(size * count, f"array {key!r}")
        if count <= MAX_DECODED_ARRAY:
            return list(cur.scalars(_SCALAR[item], count, key))
        cur.pos += size * count
        return GGUFArray(item, count, start, cur.path)
    if item == _STRING:
        cur.need(8 * count, f"array {key!r}")  # each string has at least its 8-byte length
        if count <= MAX_DECODED_ARRAY:
            return [cur.string(key) for _ in range(count)]
        cur.skip_strings(count, key)
        return GGUFArray(item, count, start, cur.path)
    if item == _ARRAY:
        cur.need(12 * count, f"array {key!r}")
        vals = [_value(cur, _ARRAY, key, depth + 1) for _ in range(count)]
        return vals if count <= MAX_DECODED_ARRAY else GGUFArray(item, count, start, cur.path)
    raise GGUFError(f"{cur.path}: array {key!r} has an unknown element type {item}")


def _read_one(path: str, file_index: int) -> tuple[int, str, dict[str, Any], list[TensorInfo], int, int, int]:
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise GGUFError(f"{path}: not a GGUF file (only {size} bytes)")
        buf: mmap.mmap | bytes = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            if buf[:4] != b"GGUF":
                raise GGUFError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
            (version,) = struct.unpack_from("<I", buf, 4)
            bo = "<"
            if version & 0xFFFF == 0 and version != 0:
                bo = ">"
                (version,) = struct.unpack_from(">I", buf, 4)
            if version == 1:
                raise GGUFError(f"{path}: GGUF version 1 is not supported (re-convert the model)")
            if version not in (2, 3):
                raise GGUFError(f"{path}: unsupported GGUF version {version}")
            cur = _Cursor(buf, bo, path)
            cur.pos = 8
            n_tensors = cur.u64("tensor count")
            n_kv = cur.u64("key/value count")
            if n_kv * 13 > size or n_tensors * 32 > size:  # smallest possible entries
                raise GGUFError(f"{path}: absurd header counts ({n_tensors} tensors, {n_kv} keys for {size} bytes)")
            meta: dict[str, Any] = {}
            for i in range(n_kv):
                key = cur.string("key")
                if not key:
                    raise GGUFError(f"{path}: key {i + 1} of {n_kv} is empty")
                if key in meta:
                    raise GGUFError(f"{path}: duplicate key {key!r}")
                vtype = cur.u32(key)
                if key == "general.alignment" and vtype != GGUFValueType.UINT32:  # as gguf.cpp requires
                    raise GGUFError(f"{path}: general.alignment must be uint32, not {_type_label(vtype)}")
                meta[key] = _value(cur, vtype, key)
            tensors_raw = []
            seen: set[str] = set()
            for _ in range(n_tensors):
                name = cur.string("tensor name")
                if name in seen:
                    raise GGUFError(f"{path}: duplicate tensor name {name!r}")
                seen.add(name)
                n_dims = cur.u32(name)
                if not 1 <= n_dims <= MAX_DIMS:
                    raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
                shape = cur.scalars("Q", n_dims, name)
                gtype = cur.u32(name)
                offset = cur.u64(name)
                tensors_raw.append((name, tuple(shape), gtype, offset))
            alignment = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
                raise GGUFError(f"{path}: bad general.alignment {alignment!r}")
            data_offset = (cur.pos + alignment - 1) // alignment * alignment
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
    tensors = []
    for name, shape, gtype, offset in tensors_raw:
        if gtype not in GGML_QUANT_SIZES or GGML_QUANT_SIZES[gtype][1] == 0:
            raise GGUFError(f"{path}: tensor {name!r} has an unknown ggml type {gtype}")
        block = GGML_QUANT_SIZES[gtype][0]
        if any(d > 1 << 40 for d in shape) or shape[0] % block:  # ne == 0 is valid (gguf.cpp: ne >= 0)
            raise GGUFError(f"{path}: tensor {name!r} has a bad shape {list(shape)} for {type_name(gtype)}")
        nbytes = tensor_bytes(gtype, shape)
        if offset % alignment or data_offset + offset + nbytes > size:
            raise GGUFError(
                f"{path}: tensor {name!r} ({nbytes} bytes at data offset {offset}) lies outside the file "
                f"({size} bytes): truncated or corrupt"
            )
        tensors.append(TensorInfo(name, shape, gtype, offset, nbytes, file_index))
    return version, bo, meta, tensors, alignment, data_offset, size


def split_paths(path: str | os.PathLike[str]) -> list[str]:
    """All parts of a split GGUF (`name-00001-of-00003.gguf`), given any one of them; else [path]."""
    p = Path(path)
    m = _SPLIT_RE.match(p.name)
    if not m:
        return [str(p)]
    count = int(m["count"])
    if count < 1:
        raise GGUFError(f"{path}: bad split name")
    return [str(p.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf")) for i in range(1, count + 1)]


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read the header of a GGUF file (all parts of a split file). Raises GGUFError on any bad input."""
    paths = split_paths(path)
    version, bo, meta, tensors, alignment, data_offset, size = _read_one(paths[0], 0)
    count = int(meta.get("split.count", 1) or 1)
    if count > 1 and len(paths) == 1:
        raise GGUFError(f"{path}: header says split.count={count} but the name has no -0000N-of-0000M part")
    if count != len(paths):
        raise GGUFError(f"{path}: file name says {len(paths)} parts but split.count is {count}")
    data_offsets, sizes = [data_offset], [size]
    for i, part in enumerate(paths[1:], start=1):
        if not os.path.exists(part):
            raise GGUFError(f"{part}: missing part {i + 1} of {count} of a split GGUF")
        _, _, pmeta, ptensors, _, pdata, psize = _read_one(part, i)
        if int(pmeta.get("split.no", -1)) != i:
            raise GGUFError(f"{part}: split.no is {pmeta.get('split.no')}, expected {i}")
        tensors.extend(ptensors)
        data_offsets.append(pdata)
        sizes.append(psize)
    expected = meta.get("split.tensors.count")
    if expected is not None and expected != len(tensors):
        raise GGUFError(f"{path}: split.tensors.count is {expected} but the parts hold {len(tensors)} tensors")
    return GGUFFile([str(p) for p in paths], version, bo, meta, tensors, alignment, data_offsets, sizes)
