"""Sizes and names of ggml types, from the tables generated out of the pinned `gguf` package (ggml_tables.py)."""

from __future__ import annotations

import functools

from .ggml_tables import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLType, GGUFValueType

__all__ = ["GGML_QUANT_SIZES", "GGUF_DEFAULT_ALIGNMENT", "GGUF_MAGIC", "GGMLType", "GGUFValueType", "row_bytes",
           "tensor_bytes", "type_from_name", "type_name"]

_NAMES = {int(t): t.name.lower() for t in GGMLType}
_IDS = {name: t for t, name in _NAMES.items()}


def type_name(t: int) -> str:
    """GGMLType.Q8_0 -> 'q8_0'; an unknown id -> 'type<id>'."""
    return _NAMES.get(t) or f"type{t}"


@functools.lru_cache(maxsize=None)
def type_from_name(name: str) -> int:
    """'q8_0' -> GGMLType.Q8_0; raises ValueError on an unknown name."""
    try:
        return _IDS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def row_bytes(t: int, ne0: int) -> int:
    """Bytes of one row of ne0 elements of type t (ggml_row_size)."""
    block, size = GGML_QUANT_SIZES[t]
    return ne0 // block * size


def tensor_bytes(t: int, shape: tuple[int, ...]) -> int:
    """ggml_nbytes for a contiguous tensor: row bytes × the other dims."""
    n = row_bytes(t, shape[0]) if shape else 0
    for d in shape[1:]:
        n *= d
    return n
