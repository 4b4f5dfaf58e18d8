"""Shape-only GGUF files for the tests and benchmarks: a catalog entry (autoctx.catalog) written as a file that
llama.cpp loads like the real model.

`write_shape_gguf` writes a full header (metadata, a stand-in tokenizer, tensor infos) followed by a data section that
is a sparse hole of the right length. Nothing but the header is written, so a "70B" file costs a few MB of disk, and
llama-server maps it and reports the model, KV-cache and compute buffer sizes it would report for real weights of
these shapes and types (they depend on nothing else). Such files are for measuring memory, not for generating text:
every weight reads as zero.

* Python types map to GGUF types: `bool` -> BOOL, `int` -> UINT32, `float` -> FLOAT32, `str` -> STRING, and a list
  -> ARRAY of INT32 / FLOAT32 / BOOL / STRING (the element types the converter writes for per-layer values).
* The tokenizer is a stand-in: an SPM ("llama") vocabulary of `n_vocab` unique tokens with the 256 byte tokens
  `<0x00>`..`<0xFF>` present (llama.cpp looks up `<0x0A>` for the newline token) and the model's real special
  token ids. SPM needs no merges table, so this is the cheapest vocabulary llama.cpp accepts; its size is the real
  one, which is what the output tensor and the logits buffer depend on.

Test and bench tooling only: it needs the `gguf` package and numpy (the `test` extra); the installed autoctx never
imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autoctx.catalog import Shape
from autoctx.gguf.ggml_types import tensor_bytes

__all__ = ["add_metadata", "write_shape_gguf", "write_sparse"]

_SPECIAL_KEYS = ("bos", "eos", "eot", "unk", "sep", "pad")
# Texts of the stand-in special tokens; "</s>" and "<|eot_id|>" are among the texts llama.cpp marks end-of-generation.
_SPECIAL_TEXT = {"bos": "<s>", "eos": "</s>", "eot": "<|eot_id|>", "unk": "<unk>", "sep": "<sep>", "pad": "<pad>"}
# llama_token_type values (tokenizer.ggml.token_type)
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_BYTE = 1, 2, 3, 6
# Texts llama.cpp looks up by name while loading some vocabularies: "<unk>" is SPM's default unknown token (id 0
# when free), and a general.name containing "phi-3"/"phi3" makes the loader set attributes on "<unk>", "<s>", "</s>"
# and "<|endoftext|>" with unordered_map::at, which throws (and fails the load) if any of them is missing.
_ALWAYS_PRESENT = (("<unk>", _TOKEN_UNKNOWN), ("<s>", _TOKEN_CONTROL), ("</s>", _TOKEN_CONTROL),
                   ("<|endoftext|>", _TOKEN_CONTROL))


def _stand_in_vocab(shape: Shape) -> tuple[list[str], list[int]]:
    """n_vocab unique token texts and types: the special ids at their real positions; then, in the first free ids,
    the common special texts llama.cpp may look up by name and the 256 SPM byte tokens; then plain filler."""
    n = shape.n_vocab
    tokens: list[str | None] = [None] * n
    types = [_TOKEN_NORMAL] * n
    present: set[str] = set()

    def put(i: int, text: str, ttype: int) -> None:
        tokens[i], types[i] = text, ttype
        present.add(text)

    for kind in _SPECIAL_KEYS:
        tid = shape.metadata.get(f"tokenizer.ggml.{kind}_token_id")
        if tid is not None and tokens[tid] is None:
            put(tid, _SPECIAL_TEXT[kind], _TOKEN_UNKNOWN if kind == "unk" else _TOKEN_CONTROL)
    free = (i for i in range(n) if tokens[i] is None)  # lazy: sees the slots filled so far
    for text, ttype in _ALWAYS_PRESENT:
        if text not in present:
            put(next(free), text, ttype)
    for byte in range(256):
        put(next(free), f"<0x{byte:02X}>", _TOKEN_BYTE)
    for i in free:
        tokens[i] = f"t{i}"
    return tokens, types  # type: ignore[return-value]


def add_metadata(writer: Any, gguf: Any, key: str, value: Any) -> None:
    vt = gguf.GGUFValueType
    if isinstance(value, bool):
        writer.add_key_value(key, value, vt.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, vt.UINT32)
    elif isinstance(value, float):
        writer.add_key_value(key, value, vt.FLOAT32)
    elif isinstance(value, str):
        writer.add_key_value(key, value, vt.STRING)
    elif isinstance(value, (list, tuple)) and value:
        first = value[0]
        sub = (vt.BOOL if isinstance(first, bool) else vt.INT32 if isinstance(first, int)
               else vt.FLOAT32 if isinstance(first, float) else vt.STRING)
        writer.add_key_value(key, list(value), vt.ARRAY, sub_type=sub)
    else:
        raise TypeError(f"metadata {key!r}: unsupported value {value!r}")


def write_shape_gguf(shape: Shape, path: str | Path) -> Path:
    """Write `shape` as a GGUF whose tensor data is a sparse hole; returns `path`.

    The header (metadata, stand-in tokenizer, tensor infos) is written to a temporary file next to `path`, which is
    then extended with `truncate` to the full size a real file would have (each tensor's data aligned to 32 bytes,
    the default `general.alignment`) and renamed over `path`, so readers never see a half-written file and
    concurrent writers of the same shape do not clash.
    """
    import gguf

    path = Path(path)
    tokens, types = _stand_in_vocab(shape)
    vt = gguf.GGUFValueType

    writer = gguf.GGUFWriter(None, shape.arch)  # adds general.architecture itself
    for key, value in shape.metadata.items():
        if key != "general.architecture":
            add_metadata(writer, gguf, key, value)
    writer.add_key_value("tokenizer.ggml.tokens", tokens, vt.ARRAY, sub_type=vt.STRING)
    writer.add_key_value("tokenizer.ggml.scores", [0.0] * shape.n_vocab, vt.ARRAY, sub_type=vt.FLOAT32)
    writer.add_key_value("tokenizer.ggml.token_type", types, vt.ARRAY, sub_type=vt.INT32)

    return write_sparse(writer, [(t.name, t.shape, t.ggml_type) for t in shape.tensors], path)


def write_sparse(writer: Any, tensors: list[tuple[str, tuple[int, ...], int]], path: Path) -> Path:
    """Add the tensor infos (name, GGML-order shape, ggml type) to a gguf.GGUFWriter that holds the metadata, write
    the header to a temporary file beside `path`, extend it with a hole for the data and rename it over `path`."""
    import gguf
    import numpy as np

    align = writer.data_alignment
    data_size = 0
    for name, shp, ggml_type in tensors:
        nbytes = tensor_bytes(ggml_type, shp)
        # numpy order (outermost first), as GGUFWriter expects; raw_dtype carries the ggml type
        writer.add_tensor_info(name, tuple(reversed(shp)), np.dtype(np.float32), nbytes,
                               raw_dtype=gguf.GGMLQuantizationType(ggml_type))
        data_size += writer.ggml_pad(nbytes, align)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        header_size = writer.ggml_pad(writer.fout[0].tell(), align)
        writer.close()
        os.truncate(tmp, header_size + data_size)
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path



def write_bare_header(path: Path, arch: str, n_ctx: int) -> Path:
    """A GGUF with only an architecture name, 2 blocks and a context length, and no tensors: what an architecture
    check reads before anything else."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(n_ctx)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
