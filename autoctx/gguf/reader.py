"""Fast GGUF header reader: metadata key/values and tensor infos, nothing else.

Layout (ggml/src/gguf.cpp, docs/gguf.md): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
(key, type, value) entries, then n_tensors (name, n_dims, ne[n_dims], type, offset) infos, then padding to
`general.alignment` and the data section. Version 2 and 3 use 64-bit counts; a big-endian file shows as a version
whose low 16 bits are zero when read little-endian.

Speed: the tokenizer arrays (262k strings for Gemma 3) are skipped, not decoded: a string array costs one length
read per element, numeric arrays a single seek. Small arrays (per-layer head counts, SWA patterns) are decoded.

Safety: a header is untrusted input. Only regular files are opened (a FIFO or a device would block or never end).
Every count and length is checked against the bytes left in the file before it is used, and the work one header
can cause is bounded whatever it claims (the limits below, each far above any real model): the part of the file
read, the keys and tensors, the bytes of text decoded, the array elements walked one by one; arrays of arrays are
refused outright, as gguf.cpp refuses them. Anything beyond raises `GGUFError`, a one-line message naming the file;
values quoted in messages are clipped to ~80 characters.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ggml_types import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUFValueType, tensor_bytes, type_name

__all__ = ["GGUFError", "GGUFArray", "GGUFString", "TensorInfo", "GGUFFile", "clip", "read_gguf", "split_paths"]

# Arrays up to this many elements are decoded into Python lists; longer ones stay lazy (GGUFArray).
MAX_DECODED_ARRAY = 4096
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: gguf.cpp refuses a tensor name of 64 bytes or more
# Bounds on the work of one header (per file). Real models: < 100 keys of < 64 bytes, a few thousand tensors at
# most, headers of a few MiB (262k tokenizer strings), tokenizer + merges arrays of ~500k strings in all.
MAX_HEADER = 1 << 27  # bytes of the file the header may span (128 MiB); the rest is never mapped
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 14  # the largest models have ~1-2 thousand; a plan's time grows with this count
MAX_KEY = 1024  # bytes in one key
MAX_STRING = 1 << 20  # a longer string value is not decoded: it stays in the file (GGUFString)
MAX_TEXT = 1 << 24  # bytes of keys, names and strings decoded from one header (16 MiB)
MAX_ITEMS = 1 << 22  # array elements read one by one (strings walked or decoded, small arrays decoded)
CLIP = 80  # characters of a value quoted in an error message

_SCALAR = {  # value type -> struct code
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
_SCALAR = {int(k): v for k, v in _SCALAR.items()}
_STRING = int(GGUFValueType.STRING)
_ARRAY = int(GGUFValueType.ARRAY)
_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf$")


class GGUFError(ValueError):
    """A file that is not a readable GGUF (truncated, not GGUF, unsupported version, absurd counts, bad types)."""


def clip(value: object, limit: int = CLIP) -> str:
    """`value` quoted for an error message: its repr (a string in quotes, non-printable characters escaped), a lazy
    array or string described (<array of N>); always one line of at most `limit` characters."""
    if isinstance(value, (GGUFArray, GGUFString)):
        s = str(value)
    elif isinstance(value, str):
        s = repr(value[: limit + 1])
    else:
        s = repr(value)
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class GGUFArray:
    """A long array left unread in the file: its element type, length and where it starts."""

    item_type: int
    count: int
    offset: int  # absolute file offset of the first element
    path: str

    def __len__(self) -> int:
        return self.count

    def __str__(self) -> str:
        return f"<array of {self.count}>"


@dataclass(frozen=True)
class GGUFString:
    """A string value longer than MAX_STRING bytes, left undecoded in the file: its length and where it starts."""

    length: int
    offset: int  # absolute file offset of the first byte
    path: str

    def __len__(self) -> int:
        return self.length

    def __str__(self) -> str:
        return f"<string of {self.length} bytes>"


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
    """Bounds-checked reads from a memory map of the header window, with the budgets of one header."""

    __slots__ = ("buf", "pos", "end", "size", "bo", "path", "_u64", "_u32", "text_left", "items_left")

    def __init__(self, buf: mmap.mmap | bytes, bo: str, path: str, size: int | None = None):
        self.buf, self.pos, self.end, self.bo, self.path = buf, 0, len(buf), bo, path
        self.size = len(buf) if size is None else size  # the file's size; `end` is where the mapped window ends
        self._u64 = struct.Struct(bo + "Q")
        self._u32 = struct.Struct(bo + "I")
        self.text_left, self.items_left = MAX_TEXT, MAX_ITEMS

    def error(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {msg}")

    def _overrun(self, reach: int, n: int, what: str) -> GGUFError:
        """Reading up to `reach` is past the window: the end of the file, or the header size limit."""
        if reach <= self.size:
            return self.error(f"the header runs past {MAX_HEADER >> 20} MiB at {what} (offset {self.pos}): "
                              "more than autoctx reads")
        return self.error(f"truncated file (needs {n} more bytes for {what} at offset {self.pos})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise self._overrun(self.pos + n, n, what)

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

    def _decode(self, n: int, what: str) -> str:
        self.text_left -= n
        if self.text_left < 0:
            raise self.error(f"more than {MAX_TEXT >> 20} MiB of keys and strings to decode (at {what}): "
                             "more than autoctx reads")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def name(self, what: str, limit: int, why: str) -> str:
        """A key or a tensor name: refused when `limit` bytes or longer, before anything is copied."""
        n = self.u64(what)
        if n >= limit:
            raise self.error(f"{what} is {n} bytes long ({why} at most {limit - 1})")
        self.need(n, what)
        return self._decode(n, what)

    def string(self, what: str) -> str | GGUFString:
        """A string value: decoded up to MAX_STRING bytes, else left in the file."""
        n = self.u64(what)
        self.need(n, what)
        if n > MAX_STRING:
            s = GGUFString(n, self.pos, self.path)
            self.pos += n
            return s
        return self._decode(n, what)

    def take_items(self, count: int, what: str) -> None:
        """Charge `count` array elements read one by one to the header's budget."""
        self.items_left -= count
        if self.items_left < 0:
            raise self.error(f"array {what} of {count} elements goes past the {MAX_ITEMS} array elements autoctx "
                             "reads one by one in a header")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` length-prefixed strings without decoding them (the tokenizer fast path)."""
        buf, pos, end, unpack = self.buf, self.pos, self.end, self._u64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # a length field lies past the window (OverflowError: past 2**63)
            pos += 8
        if pos > end:
            if pos <= self.size:
                raise self._overrun(pos, 0, f"string array {what}")
            raise self.error(f"truncated file (string array {what} runs past the end)")
        self.pos = pos

    def scalars(self, code: str, count: int, what: str) -> tuple[Any, ...]:
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


def _value(cur: _Cursor, vtype: int, key: str) -> Any:
    label = clip(key)
    if vtype in _SCALAR:
        return cur.scalars(_SCALAR[vtype], 1, label)[0]
    if vtype == _STRING:
        return cur.string(label)
    if vtype != _ARRAY:
        raise cur.error(f"key {label} has an unknown value type {vtype}")
    item = cur.u32(label)
    count = cur.u64(label)
    start = cur.pos
    if item in _SCALAR:
        size = struct.calcsize(_SCALAR[item])
        cur.need(size * count, f"array {label}")
        if count <= MAX_DECODED_ARRAY:
            cur.take_items(count, label)
            return list(cur.scalars(_SCALAR[item], count, label))
        cur.pos += size * count
        return GGUFArray(item, count, start, cur.path)
    if item == _STRING:
        cur.need(8 * count, f"array {label}")  # each string has at least its 8-byte length
        cur.take_items(count, label)
        if count <= MAX_DECODED_ARRAY:
            return [cur.string(label) for _ in range(count)]
        cur.skip_strings(count, label)
        return GGUFArray(item, count, start, cur.path)
    if item == _ARRAY:  # gguf.cpp refuses them too ("invalid GGUF type")
        raise cur.error(f"key {label} is an array of arrays, which GGUF readers (gguf.cpp) refuse")
    raise cur.error(f"array {label} has an unknown element type {item}")


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
        raise GGUFError(f"{path}: cannot open: {kind}, not a regular file")


def _open(path: str) -> int:
    """A read-only descriptor of a regular file. Checked before opening (a FIFO would block, /dev/zero never ends)
    and again after (O_NONBLOCK: a file swapped for a FIFO in between cannot block the open)."""
    try:
        _check_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_one(path: str, file_index: int) -> tuple[int, str, dict[str, Any], list[TensorInfo], int, int, int]:
    fd = _open(path)
    try:
        size = os.fstat(fd).st_size
        if size < 24:
            raise GGUFError(f"{path}: not a GGUF file (only {size} bytes)")
        buf: mmap.mmap | bytes = mmap.mmap(fd, min(size, MAX_HEADER), access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)  # the map keeps its own reference
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
        cur = _Cursor(buf, bo, path, size)
        cur.pos = 8
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("key/value count")
        if n_kv * 13 > size or n_tensors * 32 > size:  # smallest possible entries
            raise GGUFError(f"{path}: absurd header counts ({n_tensors} tensors, {n_kv} keys for {size} bytes)")
        if n_kv > MAX_KEYS or n_tensors > MAX_TENSORS:
            raise GGUFError(f"{path}: {n_tensors} tensors and {n_kv} keys: more than autoctx reads "
                            f"({MAX_TENSORS} tensors, {MAX_KEYS} keys)")
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.name(f"key {i + 1} of {n_kv}", MAX_KEY, "autoctx reads keys of")
            if not key:
                raise GGUFError(f"{path}: key {i + 1} of {n_kv} is empty")
            if key in meta:
                raise GGUFError(f"{path}: duplicate key {clip(key)}")
            vtype = cur.u32(clip(key))
            if key == "general.alignment" and vtype != GGUFValueType.UINT32:  # as gguf.cpp requires
                raise GGUFError(f"{path}: general.alignment must be uint32, not {_type_label(vtype)}")
            meta[key] = _value(cur, vtype, key)
        tensors_raw = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = cur.name(f"tensor name {i + 1} of {n_tensors}", MAX_NAME, "GGML_MAX_NAME allows")
            label = clip(name)
            if name in seen:
                raise GGUFError(f"{path}: duplicate tensor name {label}")
            seen.add(name)
            n_dims = cur.u32(label)
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"{path}: tensor {label} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            shape = cur.scalars("Q", n_dims, label)
            gtype = cur.u32(label)
            offset = cur.u64(label)
            tensors_raw.append((name, tuple(shape), gtype, offset))
        alignment = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{path}: bad general.alignment {clip(alignment)}")
        data_offset = (cur.pos + alignment - 1) // alignment * alignment
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    tensors = []
    for name, shape, gtype, offset in tensors_raw:
        label = clip(name)
        if gtype not in GGML_QUANT_SIZES or GGML_QUANT_SIZES[gtype][1] == 0:
            raise GGUFError(f"{path}: tensor {label} has an unknown ggml type {gtype}")
        block = GGML_QUANT_SIZES[gtype][0]
        if any(d > 1 << 40 for d in shape) or shape[0] % block:  # ne == 0 is valid (gguf.cpp: ne >= 0)
            raise GGUFError(f"{path}: tensor {label} has a bad shape {list(shape)} for {type_name(gtype)}")
        nbytes = tensor_bytes(gtype, shape)
        if offset % alignment or data_offset + offset + nbytes > size:
            raise GGUFError(
                f"{path}: tensor {label} ({nbytes} bytes at data offset {offset}) lies outside the file "
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
    head = str(p)[: len(str(p)) - len(p.name)] + m["prefix"]  # up to 99999 names: plain strings, no Path per part
    return [f"{head}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _int_key(meta: dict[str, Any], key: str, default: int, path: str) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GGUFError(f"{path}: {key} must be an integer, not {clip(value)}")
    return value


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read the header of a GGUF file (all parts of a split file). Raises GGUFError on any bad input."""
    paths = split_paths(path)
    version, bo, meta, tensors, alignment, data_offset, size = _read_one(paths[0], 0)
    count = _int_key(meta, "split.count", 1, paths[0]) or 1
    if count > 1 and len(paths) == 1:
        raise GGUFError(f"{path}: header says split.count={count} but the name has no -0000N-of-0000M part")
    if count != len(paths):
        raise GGUFError(f"{path}: file name says {len(paths)} parts but split.count is {count}")
    data_offsets, sizes = [data_offset], [size]
    for i, part in enumerate(paths[1:], start=1):
        if not os.path.exists(part):
            raise GGUFError(f"{part}: missing part {i + 1} of {count} of a split GGUF")
        _, _, pmeta, ptensors, _, pdata, psize = _read_one(part, i)
        if _int_key(pmeta, "split.no", -1, part) != i:
            raise GGUFError(f"{part}: split.no is {clip(pmeta.get('split.no'))}, expected {i}")
        tensors.extend(ptensors)
        if len(tensors) > MAX_TENSORS:
            raise GGUFError(f"{part}: the parts hold more than {MAX_TENSORS} tensors: more than autoctx reads")
        data_offsets.append(pdata)
        sizes.append(psize)
    expected = _int_key(meta, "split.tensors.count", len(tensors), paths[0])
    if expected != len(tensors):
        raise GGUFError(f"{path}: split.tensors.count is {expected} but the parts hold {len(tensors)} tensors")
    return GGUFFile([str(p) for p in paths], version, bo, meta, tensors, alignment, data_offsets, sizes)
