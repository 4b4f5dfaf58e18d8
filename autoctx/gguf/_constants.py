"""The `gguf` package's type enums and block sizes, without the cost of importing the package.

`import gguf` pulls in numpy and its reader (~0.4 s); its `constants.py` alone is plain Python. We load that one
file as a stand-alone module so the header reader stays fast, yet never retype llama.cpp's tables.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from types import ModuleType


def _load() -> ModuleType:
    already = sys.modules.get("gguf.constants")
    if already is not None:
        return already
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'gguf' package is required (pip install gguf)")
    path = f"{list(spec.submodule_search_locations)[0]}/constants.py"
    cspec = importlib.util.spec_from_file_location("autoctx._gguf_constants", path)
    assert cspec is not None and cspec.loader is not None
    mod = importlib.util.module_from_spec(cspec)
    sys.modules["autoctx._gguf_constants"] = mod
    cspec.loader.exec_module(mod)
    return mod


C = _load()
GGMLType = C.GGMLQuantizationType
GGUFValueType = C.GGUFValueType
GGML_QUANT_SIZES: dict[int, tuple[int, int]] = {int(k): v for k, v in C.GGML_QUANT_SIZES.items()}
GGUF_MAGIC: int = C.GGUF_MAGIC
GGUF_DEFAULT_ALIGNMENT: int = C.GGUF_DEFAULT_ALIGNMENT


@functools.lru_cache(maxsize=None)  # called per tensor per estimate: the enum lookup is slow
def type_name(t: int) -> str:
    try:
        return GGMLType(t).name.lower()
    except ValueError:
        return f"type{t}"


@functools.lru_cache(maxsize=None)
def type_from_name(name: str) -> int:
    """'q8_0' -> GGMLType.Q8_0; raises ValueError on an unknown name."""
    try:
        return int(GGMLType[name.upper()])
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
