"""autoctx.gguf.reader and autoctx.gguf.ggml_types on small GGUF files written with the real `gguf` package.

Good files come from `gguf.GGUFWriter` (little- and big-endian, split); malformed ones are built byte by byte (or
patched from a good one), and each must raise GGUFError with a message that says what is wrong.
"""

from __future__ import annotations

import math
import os
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from autoctx.gguf import (
    GGML_QUANT_SIZES,
    GGMLType,
    GGUFArray,
    GGUFError,
    GGUFString,
    TensorInfo,
    clip,
    read_gguf,
    row_bytes,
    split_paths,
    tensor_bytes,
    type_from_name,
    type_name,
)
from autoctx.gguf import reader as reader_mod

pytestmark = pytest.mark.timeout(120)  # a hang guard for the bad-input cases, not a speed check

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------

SCALARS = [  # key, writer method, value, expected value read back
    ("t.u8", "add_uint8", 250, 250),
    ("t.i8", "add_int8", -100, -100),
    ("t.u16", "add_uint16", 65000, 65000),
    ("t.i16", "add_int16", -32000, -32000),
    ("t.u32", "add_uint32", 4_000_000_000, 4_000_000_000),
    ("t.i32", "add_int32", -2_000_000_000, -2_000_000_000),
    ("t.f32", "add_float32", 0.15625, 0.15625),  # exact in binary32
    ("t.u64", "add_uint64", 2**63 + 12345, 2**63 + 12345),
    ("t.i64", "add_int64", -(2**62) - 7, -(2**62) - 7),
    ("t.f64", "add_float64", 1e-300, 1e-300),
    ("t.bool_t", "add_bool", True, True),
    ("t.bool_f", "add_bool", False, False),
    ("t.str", "add_string", "héllo wörld", "héllo wörld"),
    ("t.str_empty", "add_string", "", ""),
]

N_LONG = 5000  # > reader.MAX_DECODED_ARRAY
LONG_TOKENS = [f"tok{i}" for i in range(N_LONG)]


def q_bytes(qtype: QT, rows: int, cols: int) -> np.ndarray:
    """A uint8 array holding `rows` rows of `cols` elements of a quantized type (deterministic content)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = cols // block * size
    return (np.arange(rows * nb, dtype=np.uint32) % 251).astype(np.uint8).reshape(rows, nb)


# tensors of the standard file: name -> (ggml shape, ggml type, exact nbytes)
EXPECTED_TENSORS = {
    "vec.f32": ((5,), int(QT.F32), 20),
    "mat.f16": ((8, 4), int(QT.F16), 64),
    "mat.q8_0": ((64, 2), int(QT.Q8_0), 2 * (64 // 32) * 34),
    "mat.q4_k": ((512, 3), int(QT.Q4_K), 3 * (512 // 256) * 144),
    "cube.f32": ((4, 3, 2), int(QT.F32), 4 * 3 * 2 * 4),
}


def add_standard_tensors(w: gguf.GGUFWriter) -> None:
    w.add_tensor("vec.f32", np.arange(5, dtype=np.float32))
    w.add_tensor("mat.f16", np.ones((4, 8), dtype=np.float16))
    w.add_tensor("mat.q8_0", q_bytes(QT.Q8_0, 2, 64), raw_dtype=QT.Q8_0)
    w.add_tensor("mat.q4_k", q_bytes(QT.Q4_K, 3, 512), raw_dtype=QT.Q4_K)
    w.add_tensor("cube.f32", np.zeros((2, 3, 4), dtype=np.float32))


def finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_standard(path: Path, endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
                   alignment: int | None = None) -> Path:
    w = gguf.GGUFWriter(path, "llama", endianess=endian)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, method, value, _ in SCALARS:
        if method == "add_string" and not value:  # add_string drops empty strings
            w.add_key_value(key, value, VT.STRING)
        else:
            getattr(w, method)(key, value)
    w.add_key_value("a.i32", [1, -2, 3], VT.ARRAY, sub_type=VT.INT32)
    w.add_key_value("a.u8", [0, 255, 7], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("a.f32", [0.5, -1.25], VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_key_value("a.bool", [True, False, True], VT.ARRAY, sub_type=VT.BOOL)
    w.add_key_value("a.u64", [2**64 - 1], VT.ARRAY, sub_type=VT.UINT64)
    w.add_key_value("a.str", ["a", "", "ccc"], VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("a.i32_4096", list(range(4096)), VT.ARRAY, sub_type=VT.INT32)  # at the limit: decoded
    w.add_key_value("a.f32_long", [0.0] * N_LONG, VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_key_value("tokenizer.ggml.tokens", LONG_TOKENS, VT.ARRAY, sub_type=VT.STRING)
    w.add_uint32("after.long", 42)  # a key after the skipped arrays proves the cursor skipped them exactly
    add_standard_tensors(w)
    finish(w)
    return path


@pytest.fixture
def std_file(tmp_path: Path) -> Path:
    return write_standard(tmp_path / "std.gguf")


# ---- hand-built files for malformed input -------------------------------------------------------------------------


def s(text: str | bytes, bo: str = "<") -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(bo + "Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes, bo: str = "<") -> bytes:
    return s(key, bo) + struct.pack(bo + "I", vtype) + payload


def tinfo(name: str, shape: tuple[int, ...], gtype: int, offset: int, bo: str = "<") -> bytes:
    return (s(name, bo) + struct.pack(bo + "I", len(shape)) + b"".join(struct.pack(bo + "Q", d) for d in shape)
            + struct.pack(bo + "I", gtype) + struct.pack(bo + "Q", offset))


def header(n_tensors: int, n_kv: int, version: int = 3, bo: str = "<") -> bytes:
    return b"GGUF" + struct.pack(bo + "IQQ", version, n_tensors, n_kv)


def build(kvs: list[bytes], tensors: list[bytes] = (), data: bytes = b"", version: int = 3, pad_to: int = 32,
          n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
    head = header(len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv, version)
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * (-len(body) % pad_to)
    return body + data


def write(tmp_path: Path, raw: bytes, name: str = "bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def error_of(path: Path) -> str:
    with pytest.raises(GGUFError) as exc:
        read_gguf(path)
    return str(exc.value)


# ---------------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,method,value,expected", SCALARS, ids=[s[0] for s in SCALARS])
def test_scalar_metadata(std_file: Path, key, method, value, expected):
    f = read_gguf(std_file)
    got = f.metadata[key]
    assert got == expected
    assert type(got) is type(expected)


def test_header_fields(std_file: Path):
    f = read_gguf(std_file)
    assert f.version == 3
    assert f.byte_order == "<"
    assert f.architecture == "llama"
    assert f.metadata["general.architecture"] == "llama"
    assert f.alignment == 32
    assert f.paths == [str(std_file)]
    assert f.path == str(std_file)
    assert f.file_sizes == [std_file.stat().st_size]
    assert f.data_offsets[0] % 32 == 0
    assert f.get("after.long") == 42
    assert f.get("no.such.key", "dflt") == "dflt"
    # every key is there, in file order
    keys = list(f.metadata)
    assert keys[0] == "general.architecture"
    assert keys[-1] == "after.long"
    assert len(keys) == 1 + len(SCALARS) + 9 + 1


def test_small_arrays_are_decoded(std_file: Path):
    m = read_gguf(std_file).metadata
    assert m["a.i32"] == [1, -2, 3]
    assert m["a.u8"] == [0, 255, 7]
    assert m["a.f32"] == [0.5, -1.25]
    assert m["a.bool"] == [True, False, True]
    assert m["a.u64"] == [2**64 - 1]
    assert m["a.str"] == ["a", "", "ccc"]
    assert m["a.i32_4096"] == list(range(4096))


def test_long_arrays_stay_lazy_and_readable_at_their_offset(std_file: Path):
    f = read_gguf(std_file)
    toks = f.metadata["tokenizer.ggml.tokens"]
    assert isinstance(toks, GGUFArray)
    assert toks.item_type == int(VT.STRING)
    assert toks.count == N_LONG and len(toks) == N_LONG
    assert toks.path == str(std_file)
    # the offset points at the first element: read every string back from there
    raw = std_file.read_bytes()
    pos, got = toks.offset, []
    for _ in range(toks.count):
        (n,) = struct.unpack_from("<Q", raw, pos)
        got.append(raw[pos + 8 : pos + 8 + n].decode())
        pos += 8 + n
    assert got == LONG_TOKENS
    # right before the offset: element type and count, as the array header says
    assert struct.unpack_from("<IQ", raw, toks.offset - 12) == (int(VT.STRING), N_LONG)

    floats = f.metadata["a.f32_long"]
    assert isinstance(floats, GGUFArray)
    assert (floats.item_type, floats.count) == (int(VT.FLOAT32), N_LONG)
    assert struct.unpack_from("<IQ", raw, floats.offset - 12) == (int(VT.FLOAT32), N_LONG)
    assert raw[floats.offset : floats.offset + 4 * N_LONG] == b"\0" * (4 * N_LONG)


# ---------------------------------------------------------------------------------------------------------------
# Tensor infos
# ---------------------------------------------------------------------------------------------------------------


def test_tensor_infos(std_file: Path):
    f = read_gguf(std_file)
    assert [t.name for t in f.tensors] == list(EXPECTED_TENSORS)
    for t in f.tensors:
        shape, gtype, nbytes = EXPECTED_TENSORS[t.name]
        assert t.shape == shape, t.name
        assert t.ggml_type == gtype, t.name
        assert t.nbytes == nbytes, t.name
        assert t.file_index == 0
        assert t.offset % 32 == 0
        # nbytes agrees with gguf's own block table
        block, size = gguf.GGML_QUANT_SIZES[QT(gtype)]
        assert t.nbytes == math.prod(shape) // block * size
    assert f.tensor("mat.q4_k").type_name == "q4_k"
    assert f.tensor("mat.q8_0").type_name == "q8_0"
    assert f.tensor("mat.f16").type_name == "f16"
    assert f.tensor("cube.f32").n_elements == 24
    assert f.tensor("missing") is None
    assert f.tensor_bytes == sum(v[2] for v in EXPECTED_TENSORS.values())


def test_tensor_offsets_are_relative_to_the_data_section(std_file: Path):
    """Offsets follow the writer's layout (each tensor padded to the alignment), and the data really sits there."""
    f = read_gguf(std_file)
    expected, off = [], 0
    for nbytes in (v[2] for v in EXPECTED_TENSORS.values()):
        expected.append(off)
        off += (nbytes + 31) // 32 * 32
    assert [t.offset for t in f.tensors] == expected
    raw = std_file.read_bytes()
    base = f.data_offsets[0]
    vec = f.tensor("vec.f32")
    assert np.frombuffer(raw, np.float32, 5, base + vec.offset).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    q8 = f.tensor("mat.q8_0")
    assert raw[base + q8.offset : base + q8.offset + q8.nbytes] == q_bytes(QT.Q8_0, 2, 64).tobytes()
    assert f.file_sizes[0] == base + off


def test_custom_alignment(tmp_path: Path):
    f = read_gguf(write_standard(tmp_path / "a64.gguf", alignment=64))
    assert f.alignment == 64
    assert f.metadata["general.alignment"] == 64
    assert f.data_offsets[0] % 64 == 0
    assert all(t.offset % 64 == 0 for t in f.tensors)
    assert {t.name: t.nbytes for t in f.tensors} == {k: v[2] for k, v in EXPECTED_TENSORS.items()}


def test_big_endian_file_reads_the_same(tmp_path: Path):
    le = read_gguf(write_standard(tmp_path / "le.gguf"))
    be_path = write_standard(tmp_path / "be.gguf", gguf.GGUFEndian.BIG)
    be = read_gguf(be_path)
    assert be.byte_order == ">"
    assert be.version == 3
    assert struct.unpack_from(">I", be_path.read_bytes(), 4) == (3,)  # really big-endian on disk
    lazy = ("tokenizer.ggml.tokens", "a.f32_long")
    assert {k: v for k, v in be.metadata.items() if k not in lazy} == {
        k: v for k, v in le.metadata.items() if k not in lazy}
    for k in lazy:
        a, b = le.metadata[k], be.metadata[k]
        assert (a.item_type, a.count, a.offset) == (b.item_type, b.count, b.offset)
    assert be.tensors == le.tensors
    assert be.data_offsets == le.data_offsets


def test_gguf_v2_reads_like_v3(std_file: Path, tmp_path: Path):
    raw = bytearray(std_file.read_bytes())
    struct.pack_into("<I", raw, 4, 2)
    v2 = read_gguf(write(tmp_path, bytes(raw), "v2.gguf"))
    v3 = read_gguf(std_file)
    assert v2.version == 2
    assert v2.tensors == v3.tensors
    assert v2.metadata["t.str"] == "héllo wörld"
    assert v2.metadata["after.long"] == 42


def test_file_without_tensors(tmp_path: Path):
    raw = build([kv("general.architecture", VT.STRING, s("llama")), kv("x", VT.UINT32, struct.pack("<I", 7))])
    f = read_gguf(write(tmp_path, raw))
    assert f.tensors == []
    assert f.metadata == {"general.architecture": "llama", "x": 7}
    assert f.tensor_bytes == 0


def test_zero_element_tensor_is_accepted(tmp_path: Path):
    """gguf.cpp accepts ne == 0 (a zero-element tensor), so the reader must too; it has 0 bytes."""
    raw = build([], [tinfo("empty", (0, 4), int(QT.F32), 0), tinfo("w", (8,), int(QT.F32), 0)], data=b"\0" * 32)
    f = read_gguf(write(tmp_path, raw))
    assert [(t.name, t.shape, t.nbytes) for t in f.tensors] == [("empty", (0, 4), 0), ("w", (8,), 32)]


# ---------------------------------------------------------------------------------------------------------------
# Split files
# ---------------------------------------------------------------------------------------------------------------


def write_split(tmp_path: Path) -> list[Path]:
    w = gguf.GGUFWriter(tmp_path / "x.gguf", "llama", split_max_tensors=3)
    w.add_uint32("llama.block_count", 2)
    add_standard_tensors(w)
    finish(w)
    parts = [tmp_path / "x-00001-of-00002.gguf", tmp_path / "x-00002-of-00002.gguf"]
    assert all(p.exists() for p in parts)
    return parts


def test_split_file_reads_all_parts(tmp_path: Path):
    parts = write_split(tmp_path)
    f = read_gguf(parts[0])
    assert f.paths == [str(p) for p in parts]
    assert [t.name for t in f.tensors] == list(EXPECTED_TENSORS)
    assert [t.file_index for t in f.tensors] == [0, 0, 0, 1, 1]
    for t in f.tensors:
        assert (t.shape, t.ggml_type, t.nbytes) == EXPECTED_TENSORS[t.name]
    # offsets restart in each part
    assert f.tensor("vec.f32").offset == 0 and f.tensor("mat.q4_k").offset == 0
    assert f.metadata["split.no"] == 0
    assert f.metadata["split.count"] == 2
    assert f.metadata["split.tensors.count"] == 5
    assert f.metadata["llama.block_count"] == 2
    assert f.file_sizes == [p.stat().st_size for p in parts]
    assert len(f.data_offsets) == 2
    raw2 = parts[1].read_bytes()
    q4 = f.tensor("mat.q4_k")
    start = f.data_offsets[1] + q4.offset
    assert raw2[start : start + q4.nbytes] == q_bytes(QT.Q4_K, 3, 512).tobytes()


def test_split_file_via_second_part_name(tmp_path: Path):
    parts = write_split(tmp_path)
    a, b = read_gguf(parts[0]), read_gguf(parts[1])
    assert b.paths == a.paths
    assert b.tensors == a.tensors
    assert b.metadata == a.metadata


def test_split_missing_second_part(tmp_path: Path):
    parts = write_split(tmp_path)
    parts[1].unlink()
    msg = error_of(parts[0])
    assert "missing part 2 of 2" in msg
    assert str(parts[1]) in msg


def test_split_count_mismatch_with_name(tmp_path: Path):
    parts = write_split(tmp_path)
    renamed = [tmp_path / "x-00001-of-00003.gguf", tmp_path / "x-00002-of-00003.gguf"]
    for p, q in zip(parts, renamed):
        p.rename(q)
    msg = error_of(renamed[0])
    assert "file name says 3 parts but split.count is 2" in msg


def test_split_count_without_split_name(tmp_path: Path):
    parts = write_split(tmp_path)
    lone = tmp_path / "lone.gguf"
    parts[0].rename(lone)
    assert "split.count=2" in error_of(lone)


def test_split_wrong_split_no(tmp_path: Path):
    parts = write_split(tmp_path)
    # patch split.no of part 2 (a u16 right after the key) from 1 to 5
    raw = bytearray(parts[1].read_bytes())
    key = s("split.no") + struct.pack("<I", int(VT.UINT16))
    at = raw.index(key) + len(key)
    assert struct.unpack_from("<H", raw, at) == (1,)
    struct.pack_into("<H", raw, at, 5)
    parts[1].write_bytes(bytes(raw))
    assert "split.no is 5, expected 1" in error_of(parts[0])


def test_split_tensor_count_mismatch(tmp_path: Path):
    parts = write_split(tmp_path)
    raw = bytearray(parts[0].read_bytes())
    key = s("split.tensors.count") + struct.pack("<I", int(VT.INT32))
    at = raw.index(key) + len(key)
    assert struct.unpack_from("<i", raw, at) == (5,)
    struct.pack_into("<i", raw, at, 6)
    parts[0].write_bytes(bytes(raw))
    assert "split.tensors.count is 6 but the parts hold 5 tensors" in error_of(parts[0])


@pytest.mark.parametrize("name,expected", [
    ("model.gguf", ["model.gguf"]),
    ("m-00002-of-00003.gguf", ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]),
    ("a-b-00001-of-00001.gguf", ["a-b-00001-of-00001.gguf"]),
    ("m-0001-of-0002.gguf", ["m-0001-of-0002.gguf"]),  # 4 digits: not a split name
    ("m-00001-of-00002.bin", ["m-00001-of-00002.bin"]),
])
def test_split_paths(tmp_path: Path, name, expected):
    assert split_paths(tmp_path / name) == [str(tmp_path / e) for e in expected]


def test_split_paths_zero_count():
    with pytest.raises(GGUFError, match="bad split name"):
        split_paths("/x/m-00001-of-00000.gguf")


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path):
    assert "cannot open" in error_of(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path):
    assert error_of(tmp_path) == f"{tmp_path}: cannot open: a directory, not a regular file"


def test_fifo_is_refused_without_blocking(tmp_path: Path):
    """Opening a FIFO for reading blocks until a writer comes: the reader must refuse it before opening."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert error_of(fifo) == f"{fifo}: cannot open: a FIFO, not a regular file"
    assert time.monotonic() - t0 < 5


def test_character_device_is_refused():
    """/dev/zero would read zeros for ever (and its size is 0)."""
    assert error_of(Path("/dev/zero")) == "/dev/zero: cannot open: a character device, not a regular file"


def test_socket_is_refused(tmp_path: Path):
    import socket

    path = tmp_path / "s.gguf"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert error_of(path) == f"{path}: cannot open: a socket, not a regular file"


def test_split_part_that_is_a_directory(tmp_path: Path):
    parts = write_split(tmp_path)
    parts[1].unlink()
    parts[1].mkdir()
    assert error_of(parts[0]) == f"{parts[1]}: cannot open: a directory, not a regular file"


def test_symlink_to_a_model_is_read(std_file: Path, tmp_path: Path):
    link = tmp_path / "link.gguf"
    link.symlink_to(std_file)
    assert read_gguf(link).tensors == read_gguf(std_file).tensors


def test_empty_file(tmp_path: Path):
    assert "not a GGUF file (only 0 bytes)" in error_of(write(tmp_path, b""))


def test_text_file(tmp_path: Path):
    text = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    assert "not a GGUF file (magic b'root')" in error_of(write(tmp_path, text))


def test_truncated_everywhere(std_file: Path, tmp_path: Path):
    """Every prefix of a valid file that ends before the last tensor's data raises GGUFError; the whole one parses."""
    raw = std_file.read_bytes()
    f = read_gguf(std_file)
    end = max(f.data_offsets[0] + t.offset + t.nbytes for t in f.tensors)
    cut_path = tmp_path / "cut.gguf"
    toks = f.metadata["tokenizer.ggml.tokens"]
    # every 3 bytes through the scalar keys, every 1021 bytes after, and around the lazy arrays and the data start
    special = {toks.offset - 1, toks.offset, toks.offset + 7, f.data_offsets[0] - 1, f.data_offsets[0], end - 1}
    cuts = sorted(set(range(0, 1024, 3)) | set(range(1024, end, 1021)) | special)
    messages = set()
    for cut in cuts:
        cut_path.write_bytes(raw[:cut])
        with pytest.raises(GGUFError) as exc:
            read_gguf(cut_path)
        msg = str(exc.value)
        assert str(cut_path) in msg
        messages.add(msg.split(": ", 1)[1].split(" (")[0])
    # the three ways of noticing: too small for a header, runs out while reading, tensor data past the end
    assert {"not a GGUF file", "truncated file"} <= messages
    assert any(m.startswith("tensor ") for m in messages)
    cut_path.write_bytes(raw)
    assert read_gguf(cut_path).tensors == f.tensors


def test_truncated_in_data_section(std_file: Path, tmp_path: Path):
    f = read_gguf(std_file)
    last = f.tensors[-1]
    raw = std_file.read_bytes()[: f.data_offsets[0] + last.offset + last.nbytes - 1]
    msg = error_of(write(tmp_path, raw))
    assert f"tensor 'cube.f32' ({last.nbytes} bytes at data offset {last.offset}) lies outside the file" in msg
    assert f"({len(raw)} bytes): truncated or corrupt" in msg


def test_header_only_no_data(tmp_path: Path):
    raw = build([], [tinfo("w", (32, 2), int(QT.F32), 0)])  # 256 bytes of data announced, none present
    assert "tensor 'w' (256 bytes at data offset 0) lies outside the file" in error_of(write(tmp_path, raw))


def test_misaligned_tensor_offset(tmp_path: Path):
    raw = build([], [tinfo("w", (8,), int(QT.F32), 4)], data=b"\0" * 64)
    assert "tensor 'w' (32 bytes at data offset 4) lies outside the file" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("version,phrase", [
    (1, "GGUF version 1 is not supported"),
    (4, "unsupported GGUF version 4"),
    (0, "unsupported GGUF version 0"),
    (0xFFFFFFFF, "unsupported GGUF version 4294967295"),
])
def test_bad_versions(tmp_path: Path, version, phrase):
    raw = build([kv("x", VT.UINT32, struct.pack("<I", 1))], version=version)
    assert phrase in error_of(write(tmp_path, raw))


def test_big_endian_unknown_version(tmp_path: Path):
    raw = b"GGUF" + struct.pack(">IQQ", 7, 0, 0) + b"\0" * 8
    assert "unsupported GGUF version 7" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("n_tensors,n_kv", [(2**60, 0), (0, 2**60), (2**64 - 1, 2**64 - 1), (1000, 0), (0, 1000)])
def test_absurd_counts(tmp_path: Path, n_tensors, n_kv):
    raw = build([], n_tensors=n_tensors, n_kv=n_kv) + b"\0" * 64
    msg = error_of(write(tmp_path, raw))
    assert f"absurd header counts ({n_tensors} tensors, {n_kv} keys for {len(raw)} bytes)" in msg


def test_counts_larger_than_entries(tmp_path: Path):
    """A count that passes the size check but promises more entries than the file holds: truncated."""
    raw = build([kv("x", VT.UINT32, struct.pack("<I", 1))], n_kv=3, pad_to=1)
    assert len(raw) == 41 and 3 * 13 <= 41
    assert "truncated file (needs 8 more bytes for key 2 of 3 at offset 41)" in error_of(write(tmp_path, raw))


def test_empty_key(tmp_path: Path):
    raw = build([kv("", VT.UINT32, struct.pack("<I", 1))])
    assert "key 1 of 1 is empty" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 1000])
def test_huge_string_length(tmp_path: Path, length):
    raw = build([struct.pack("<Q", 1) + b"k" + struct.pack("<I", int(VT.STRING)) + struct.pack("<Q", length)
                 + b"abc"])
    msg = error_of(write(tmp_path, raw))
    assert f"truncated file (needs {length} more bytes for 'k' at offset 45)" in msg


@pytest.mark.parametrize("length", [2**62, 1024])
def test_huge_key_length(tmp_path: Path, length):
    raw = build([struct.pack("<Q", length) + b"key"])
    assert error_of(write(tmp_path, raw)).endswith(f"bad.gguf: key 1 of 1 is {length} bytes long (autoctx reads keys "
                                                   "of at most 1023)")


def test_longest_key_is_read(tmp_path: Path):
    raw = build([kv("k" * 1023, VT.UINT8, b"\7")])
    assert read_gguf(write(tmp_path, raw)).metadata == {"k" * 1023: 7}


@pytest.mark.parametrize("item", [VT.UINT8, VT.FLOAT64, VT.STRING])
def test_huge_array_count(tmp_path: Path, item):
    raw = build([kv("arr", VT.ARRAY, struct.pack("<IQ", int(item), 2**62))], pad_to=64)
    msg = error_of(write(tmp_path, raw))
    assert "truncated file" in msg
    assert "array 'arr'" in msg


def test_string_array_running_past_the_end(tmp_path: Path):
    """A long string array whose count fits the 8-bytes-per-string check but whose strings do not."""
    n = 5000
    # 4999 empty strings, then one that claims 1000 bytes where 10 remain: the 8 × count check passes
    body = s("") * (n - 1) + struct.pack("<Q", 1000) + b"x" * 10
    raw = build([kv("tok", VT.ARRAY, struct.pack("<IQ", int(VT.STRING), n) + body)], pad_to=1)
    assert "truncated file (string array 'tok' runs past the end)" in error_of(write(tmp_path, raw))


def test_unknown_value_type(tmp_path: Path):
    raw = build([kv("weird", 99, b"\0" * 16)])
    assert "key 'weird' has an unknown value type 99" in error_of(write(tmp_path, raw))


def test_unknown_array_element_type(tmp_path: Path):
    raw = build([kv("weird", VT.ARRAY, struct.pack("<IQ", 77, 1) + b"\0" * 16)])
    assert "array 'weird' has an unknown element type 77" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("payload", [
    struct.pack("<IQ", int(VT.ARRAY), 2) + struct.pack("<IQ", int(VT.UINT8), 1) + b"\1" * 2,  # [[1], ...]
    struct.pack("<IQ", int(VT.ARRAY), 1) * 20 + struct.pack("<IQ", int(VT.UINT8), 1) + b"\1",  # 20 deep
    struct.pack("<IQ", int(VT.ARRAY), 2**62),  # a count the file cannot hold
])
def test_nested_arrays_are_refused(tmp_path: Path, payload):
    """gguf.cpp refuses an array of arrays ("invalid GGUF type"), so no model llama.cpp loads has one; refusing
    them outright leaves nothing to walk."""
    raw = build([kv("deep", VT.ARRAY, payload)])
    assert error_of(write(tmp_path, raw)).endswith("bad.gguf: key 'deep' is an array of arrays, which GGUF readers "
                                                   "(gguf.cpp) refuse")


def test_duplicate_key(tmp_path: Path):
    raw = build([kv("x", VT.UINT32, struct.pack("<I", 1)), kv("x", VT.UINT32, struct.pack("<I", 2))])
    assert "duplicate key 'x'" in error_of(write(tmp_path, raw))


def test_duplicate_tensor_name(tmp_path: Path):
    raw = build([], [tinfo("w", (8,), int(QT.F32), 0), tinfo("w", (8,), int(QT.F32), 32)], data=b"\0" * 64)
    assert "duplicate tensor name 'w'" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("gtype", [4, 5, 31, 1000, 2**32 - 1])
def test_unknown_ggml_type(tmp_path: Path, gtype):
    raw = build([], [tinfo("w", (32,), gtype, 0)], data=b"\0" * 1024)
    assert f"tensor 'w' has an unknown ggml type {gtype}" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_n_dims(tmp_path: Path, n_dims):
    t = s("w") + struct.pack("<I", n_dims) + struct.pack("<Q", 8) * min(n_dims, 5) + struct.pack("<IQ", 0, 0)
    raw = build([], [t], data=b"\0" * 64)
    assert f"tensor 'w' has {n_dims} dimensions (1..4 allowed)" in error_of(write(tmp_path, raw))


def test_row_not_a_multiple_of_the_block(tmp_path: Path):
    raw = build([], [tinfo("w", (48, 2), int(QT.Q8_0), 0)], data=b"\0" * 1024)
    assert "tensor 'w' has a bad shape [48, 2] for q8_0" in error_of(write(tmp_path, raw))


def test_huge_dimension(tmp_path: Path):
    raw = build([], [tinfo("w", (2**62, 2**62), int(QT.F32), 0)], data=b"\0" * 64)
    assert "has a bad shape" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("payload,vtype,shown", [
    (struct.pack("<I", 0), VT.UINT32, "0"),
    (struct.pack("<I", 48), VT.UINT32, "48"),
])
def test_bad_alignment_value(tmp_path: Path, payload, vtype, shown):
    raw = build([kv("general.alignment", vtype, payload)])
    assert f"bad general.alignment {shown}" in error_of(write(tmp_path, raw))


@pytest.mark.parametrize("vtype,payload", [
    (VT.UINT64, struct.pack("<Q", 32)),
    (VT.INT32, struct.pack("<i", 32)),
    (VT.BOOL, b"\1"),
    (VT.STRING, s("32")),
])
def test_alignment_must_be_uint32(tmp_path: Path, vtype, payload):
    """gguf.cpp rejects general.alignment of any type but uint32, even when the value would be a power of two."""
    raw = build([kv("general.alignment", vtype, payload)])
    assert f"general.alignment must be uint32, not {VT(vtype).name.lower()}" in error_of(write(tmp_path, raw))


def test_unaligned_data_section_with_custom_alignment(tmp_path: Path):
    """With alignment 64 the data section starts at the next multiple of 64, not 32."""
    kvs = [kv("general.alignment", VT.UINT32, struct.pack("<I", 64))]
    tis = [tinfo("w", (16,), int(QT.F32), 0)]
    head_len = len(header(1, 1) + b"".join(kvs) + b"".join(tis))
    raw = build(kvs, tis, pad_to=64, data=b"\0" * 64)
    f = read_gguf(write(tmp_path, raw))
    assert f.data_offsets == [(head_len + 63) // 64 * 64]
    assert f.tensors[0].nbytes == 64
    assert "lies outside the file" in error_of(write(tmp_path, raw[:-1], "short.gguf"))


ABSURD = {
    "n_kv 2**60": header(0, 2**60) + b"\0" * 64,
    "string length 2**62": build([struct.pack("<Q", 1) + b"k" + struct.pack("<IQ", int(VT.STRING), 2**62)]),
    "u8 array count 2**62": build([kv("a", VT.ARRAY, struct.pack("<IQ", int(VT.UINT8), 2**62))]),
    "string array count 2**62": build([kv("a", VT.ARRAY, struct.pack("<IQ", int(VT.STRING), 2**62))]),
    "nested array count 2**62": build([kv("a", VT.ARRAY, struct.pack("<IQ", int(VT.ARRAY), 2**62))]),
    "tensor dims 2**40 each": build([], [tinfo("w", (2**40, 2**40, 2**40, 2**40), int(QT.F32), 0)]),
}


@pytest.mark.parametrize("raw", ABSURD.values(), ids=list(ABSURD))
def test_absurd_sizes_allocate_nothing_big(tmp_path: Path, raw):
    """Absurd counts and lengths are refused before anything is allocated for them (peak well under 1 MiB)."""
    import tracemalloc

    path = write(tmp_path, raw)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError):
            read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_reader_never_decodes_long_arrays(std_file: Path, monkeypatch):
    """The 5000-string tokenizer is skipped with skip_strings, never read string by string."""
    calls = []
    real = reader_mod._Cursor.skip_strings

    def spy(self, count, what):
        calls.append((count, what))
        return real(self, count, what)

    monkeypatch.setattr(reader_mod._Cursor, "skip_strings", spy)
    read_gguf(std_file)
    assert calls == [(N_LONG, "'tokenizer.ggml.tokens'")]


# ---------------------------------------------------------------------------------------------------------------
# Bounded work: whatever a header claims, reading it costs at most ~1 s and a few tens of MiB
# ---------------------------------------------------------------------------------------------------------------

MiB = 1 << 20


def sparse(tmp_path: Path, raw: bytes, size: int, name: str = "big.gguf") -> Path:
    """`raw`, then zeros (a sparse hole) up to `size` bytes: a file that holds whatever its header claims."""
    p = write(tmp_path, raw, name)
    os.truncate(p, size)
    return p


def refused_cheaply(path: Path, seconds: float = 1.0) -> str:
    """The GGUFError message, checking that getting it took little time and allocated under 1 MiB."""
    import tracemalloc

    tracemalloc.start()
    t0 = time.process_time()
    try:
        msg = error_of(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.process_time() - t0 < seconds
    assert peak < MiB
    assert "\n" not in msg and len(msg) < 300
    return msg


def test_tensor_name_of_63_bytes_is_read(tmp_path: Path):
    raw = build([], [tinfo("n" * 63, (8,), int(QT.F32), 0)], data=b"\0" * 32)
    assert read_gguf(write(tmp_path, raw)).tensors[0].name == "n" * 63


def test_tensor_name_of_64_bytes_is_refused(tmp_path: Path):
    """gguf.cpp: `name.length() >= GGML_MAX_NAME` (64) fails the file."""
    raw = build([], [tinfo("ok", (8,), int(QT.F32), 0), tinfo("n" * 64, (8,), int(QT.F32), 32)], data=b"\0" * 64)
    assert error_of(write(tmp_path, raw)).endswith("bad.gguf: tensor name 2 of 2 is 64 bytes long (GGML_MAX_NAME "
                                                   "allows at most 63)")


def test_half_gib_tensor_name_is_refused_before_it_is_read(tmp_path: Path):
    """The file really holds 0.5 GiB after the length (sparse): the old reader copied and decoded all of it (6.7 GB
    RSS) and put it in a multi-GB "one line" error."""
    raw = build([], n_tensors=1, pad_to=1) + struct.pack("<Q", 1 << 29)
    path = sparse(tmp_path, raw, len(raw) + (1 << 29) + 64)
    assert refused_cheaply(path).endswith("big.gguf: tensor name 1 of 1 is 536870912 bytes long (GGML_MAX_NAME "
                                          "allows at most 63)")


def test_huge_claimed_key_is_refused_before_it_is_read(tmp_path: Path):
    raw = build([], n_kv=1, pad_to=1) + struct.pack("<Q", 1 << 29)
    path = sparse(tmp_path, raw, len(raw) + (1 << 29) + 64)
    assert refused_cheaply(path).endswith("big.gguf: key 1 of 1 is 536870912 bytes long (autoctx reads keys of at "
                                          "most 1023)")


def test_long_string_value_is_left_in_the_file(tmp_path: Path):
    """A string over MAX_STRING (1 MiB) is skipped, not decoded: a GGUFString says where it is."""
    text = b"0123456789abcdef" * (reader_mod.MAX_STRING // 16 + 1)
    raw = build([kv("general.name", VT.STRING, s(text)), kv("after", VT.UINT8, b"\7")])
    path = write(tmp_path, raw)
    f = read_gguf(path)
    name = f.metadata["general.name"]
    assert isinstance(name, GGUFString)
    assert (name.length, len(name), str(name)) == (len(text), len(text), f"<string of {len(text)} bytes>")
    assert path.read_bytes()[name.offset : name.offset + name.length] == text
    assert f.metadata["after"] == 7
    longest = text[: reader_mod.MAX_STRING]  # exactly 1 MiB: still decoded
    exact = build([kv("general.name", VT.STRING, s(longest))])
    assert read_gguf(write(tmp_path, exact, "exact.gguf")).metadata["general.name"] == longest.decode()


def test_huge_claimed_string_value_is_skipped(tmp_path: Path):
    raw = build([], n_kv=2, pad_to=1) + s("k") + struct.pack("<IQ", int(VT.STRING), 100 * MiB)
    tail = s("after") + struct.pack("<I", int(VT.UINT8)) + b"\7"
    path = sparse(tmp_path, raw, len(raw) + 100 * MiB)
    with open(path, "r+b") as fh:
        fh.seek(len(raw) + 100 * MiB)
        fh.write(tail + b"\0" * 32)
    import tracemalloc

    tracemalloc.start()
    f = read_gguf(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MiB
    assert (str(f.metadata["k"]), f.metadata["after"]) == (f"<string of {100 * MiB} bytes>", 7)


def test_header_past_128_mib_is_refused(tmp_path: Path):
    """A header may not span more than MAX_HEADER (128 MiB) of the file: the rest is never mapped or read."""
    raw = build([], n_kv=2, pad_to=1) + s("k") + struct.pack("<IQ", int(VT.STRING), 200 * MiB)
    path = sparse(tmp_path, raw, len(raw) + 300 * MiB)
    assert refused_cheaply(path).endswith(f"big.gguf: the header runs past 128 MiB at 'k' (offset {len(raw)}): "
                                          "more than autoctx reads")


def test_decoded_text_is_bounded(tmp_path: Path):
    """Strings of 1 MiB each are decoded, up to 16 MiB of keys and strings in all."""
    one = s(b"x" * reader_mod.MAX_STRING)
    raw = build([kv(f"k{i}", VT.STRING, one) for i in range(17)])
    msg = error_of(write(tmp_path, raw))
    assert msg.endswith("bad.gguf: more than 16 MiB of keys and strings to decode (at 'k15'): more than autoctx "
                        "reads")


def test_string_array_elements_are_bounded(tmp_path: Path):
    """A string array is walked one length at a time: 2**22 elements at most (a real tokenizer + merges: ~500k).
    Refused before walking, in a file that holds them all (empty strings, a sparse hole)."""
    n = reader_mod.MAX_ITEMS + 1
    raw = build([], n_kv=1, pad_to=1) + s("tokenizer.ggml.merges") + struct.pack("<IIQ", int(VT.ARRAY),
                                                                                   int(VT.STRING), n)
    path = sparse(tmp_path, raw, len(raw) + 8 * n + 64)
    assert refused_cheaply(path, 0.5).endswith(f"big.gguf: array 'tokenizer.ggml.merges' of {n} elements goes past "
                                               "the 4194304 array elements autoctx reads one by one in a header")


def test_string_array_budget_is_shared_by_all_arrays(tmp_path: Path):
    half = reader_mod.MAX_ITEMS // 2 + 1
    arr = struct.pack("<IQ", int(VT.STRING), half) + struct.pack("<Q", 0) * half
    raw = build([kv("a", VT.ARRAY, arr), kv("b", VT.ARRAY, arr)])
    assert error_of(write(tmp_path, raw)).endswith(f"array 'b' of {half} elements goes past the 4194304 array "
                                                   "elements autoctx reads one by one in a header")


@pytest.mark.parametrize("n_tensors,n_kv", [(reader_mod.MAX_TENSORS + 1, 0), (0, reader_mod.MAX_KEYS + 1)])
def test_key_and_tensor_counts_are_bounded(tmp_path: Path, n_tensors, n_kv):
    raw = build([], n_tensors=n_tensors, n_kv=n_kv, pad_to=1)
    path = sparse(tmp_path, raw, 64 * MiB)
    assert refused_cheaply(path).endswith(f"big.gguf: {n_tensors} tensors and {n_kv} keys: more than autoctx reads "
                                          "(16384 tensors, 65536 keys)")


def test_split_parts_share_the_tensor_bound(tmp_path: Path, monkeypatch):
    parts = write_split(tmp_path)
    monkeypatch.setattr(reader_mod, "MAX_TENSORS", 4)  # 3 tensors in part 1, 2 in part 2
    assert error_of(parts[0]) == f"{parts[1]}: the parts hold more than 4 tensors: more than autoctx reads"


def test_split_count_of_99999_parts_is_cheap(tmp_path: Path):
    path = write(tmp_path, build([kv("x", VT.UINT8, b"\1")]), "m-00001-of-99999.gguf")
    t0 = time.process_time()
    assert error_of(path).endswith("m-00001-of-99999.gguf: file name says 99999 parts but split.count is 1")
    assert time.process_time() - t0 < 0.5


@pytest.mark.parametrize("key,vtype,payload,shown", [
    ("split.count", VT.STRING, s("2"), "'2'"),
    ("split.count", VT.FLOAT32, struct.pack("<f", 2.0), "2.0"),
    ("split.count", VT.BOOL, b"\1", "True"),
    ("split.tensors.count", VT.ARRAY, struct.pack("<IQ", int(VT.INT32), 2) + struct.pack("<ii", 1, 2), "[1, 2]"),
])
def test_split_keys_must_be_integers(tmp_path: Path, key, vtype, payload, shown):
    raw = build([kv(key, vtype, payload)])
    assert error_of(write(tmp_path, raw)).endswith(f"bad.gguf: {key} must be an integer, not {shown}")


def test_messages_quote_keys_and_names_on_one_short_line(tmp_path: Path):
    raw = build([kv("a\nb" + "k" * 200, 99, b"\0" * 8)])
    msg = error_of(write(tmp_path, raw))
    assert msg.endswith("bad.gguf: key 'a\\nb" + "k" * 74 + "\u2026 has an unknown value type 99")


@pytest.mark.parametrize("value,shown", [
    ("abc", "'abc'"),
    ("a\nb\x00", "'a\\nb\\x00'"),
    ("x" * 100, "'" + "x" * 78 + "\u2026"),
    (12, "12"),
    ([1, 2], "[1, 2]"),
    (list(range(100)), repr(list(range(100)))[:79] + "\u2026"),
    (GGUFArray(int(VT.STRING), 262144, 100, "p"), "<array of 262144>"),
    (GGUFString(5 << 20, 100, "p"), "<string of 5242880 bytes>"),
])
def test_clip(value, shown):
    assert clip(value) == shown
    assert len(clip(value)) <= 80


# ---------------------------------------------------------------------------------------------------------------
# ggml_types helpers
# ---------------------------------------------------------------------------------------------------------------


def test_quant_sizes_match_gguf():
    assert GGML_QUANT_SIZES == {int(k): v for k, v in gguf.GGML_QUANT_SIZES.items()}
    assert GGML_QUANT_SIZES[int(QT.Q4_K)] == (256, 144)
    assert GGML_QUANT_SIZES[int(QT.Q8_0)] == (32, 34)
    assert GGML_QUANT_SIZES[int(QT.F16)] == (1, 2)
    assert int(GGMLType.Q6_K) == int(QT.Q6_K) == 14


@pytest.mark.parametrize("name,value", [("f32", 0), ("F16", 1), ("q4_0", 2), ("q8_0", 8), ("Q4_K", 12),
                                        ("q6_k", 14), ("bf16", 30), ("iq4_nl", 20), ("mxfp4", 39)])
def test_type_from_name(name, value):
    assert type_from_name(name) == value
    assert type(type_from_name(name)) is int


def test_type_from_name_unknown():
    with pytest.raises(ValueError, match="unknown ggml type 'q9_9'"):
        type_from_name("q9_9")


@pytest.mark.parametrize("value,name", [(0, "f32"), (1, "f16"), (12, "q4_k"), (30, "bf16"), (4, "type4"),
                                        (999, "type999")])
def test_type_name(value, name):
    assert type_name(value) == name


@pytest.mark.parametrize("qt,ne0,expected", [
    (QT.F32, 640, 2560), (QT.F16, 640, 1280), (QT.BF16, 3, 6), (QT.Q8_0, 640, 20 * 34), (QT.Q4_0, 64, 2 * 18),
    (QT.Q4_K, 2048, 8 * 144), (QT.Q6_K, 256, 210), (QT.Q5_0, 32, 22),
])
def test_row_bytes(qt, ne0, expected):
    assert row_bytes(int(qt), ne0) == expected
    block, size = gguf.GGML_QUANT_SIZES[qt]
    assert row_bytes(int(qt), ne0) == ne0 // block * size


@pytest.mark.parametrize("qt,shape,expected", [
    (QT.F32, (5,), 20), (QT.F16, (8, 4), 64), (QT.Q8_0, (64, 2), 136), (QT.Q4_K, (512, 3), 864),
    (QT.Q4_K, (256, 262144), 144 * 262144), (QT.F32, (4, 3, 2, 2), 192), (QT.F32, (), 0),
])
def test_tensor_bytes(qt, shape, expected):
    assert tensor_bytes(int(qt), shape) == expected


def test_tensor_info_properties():
    t = TensorInfo("blk.0.attn_q.weight", (512, 3), int(QT.Q4_K), 64, 864, 1)
    assert t.type_name == "q4_k"
    assert t.n_elements == 1536
    assert t.file_index == 1
