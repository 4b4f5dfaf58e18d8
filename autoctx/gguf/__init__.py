"""GGUF header reading (fast, bounded) and the ggml type tables (generated from the pinned `gguf` package)."""

from .ggml_types import GGML_QUANT_SIZES, GGMLType, row_bytes, tensor_bytes, type_from_name, type_name
from .reader import GGUFArray, GGUFError, GGUFFile, GGUFString, TensorInfo, clip, read_gguf, split_paths

__all__ = [
    "GGML_QUANT_SIZES", "GGMLType", "GGUFArray", "GGUFError", "GGUFFile", "GGUFString", "TensorInfo", "clip",
    "read_gguf", "row_bytes", "split_paths", "tensor_bytes", "type_from_name", "type_name",
]
