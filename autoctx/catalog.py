"""The architecture catalog: real models' GGUF headers as package data, to plan a model before it is downloaded.

Each entry is one TOML file in autoctx/data/catalog/ (the format: README.md there): the GGUF metadata a Q4_K_M file of
that model carries (hyperparameters from the model's Hugging Face config.json, keys as convert_hf_to_gguf.py writes
them), the tensors llama.cpp's loader asks for in file order (name and shape, GGML order, runs of equal blocks written
once), the quantization, and where one exists a published file of that quantization whose size the computed weights
are checked against. The tensor types come from llama-quantize's policy (autoctx/quant_policy.py). Nothing here
imports numpy or the `gguf` package; the writer of shape-only GGUF files for the tests and benchmarks is
tests/shapes_writer.py.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gguf.ggml_types import tensor_bytes
from .quant_policy import model_types

__all__ = ["CATALOG", "Shape", "TensorShape", "get_shape", "header_view", "names", "projector_of"]

CATALOG = Path(__file__).resolve().parent / "data" / "catalog"  # package data (pyproject.toml)


@dataclass(frozen=True)
class TensorShape:
    """One tensor as the GGUF header describes it."""

    name: str  # GGUF tensor name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # GGML order: ne0 first (token_embd = (n_embd, n_vocab))
    ggml_type: int  # GGMLType value

    @property
    def nbytes(self) -> int:
        """Exact size of the tensor's data (ggml_nbytes)."""
        return tensor_bytes(self.ggml_type, self.shape)


@dataclass(frozen=True)
class Shape:
    """A real model's GGUF header, minus the tokenizer arrays (a writer makes those up from `n_vocab`)."""

    name: str  # catalog key, e.g. "llama-3.1-8b"
    title: str  # e.g. "Llama-3.1-8B-Instruct Q4_K_M"
    arch: str  # general.architecture
    source: str  # where the hyperparameters come from (HF config.json repo id)
    metadata: dict[str, Any]  # all GGUF key/values except tokenizer arrays, full key names
    n_vocab: int
    tensors: tuple[TensorShape, ...]
    quantization: str = "Q4_K_M"
    published: dict[str, Any] | None = None  # a published file of this quantization: file, bytes, url

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def weight_bytes(self) -> int:
        """Sum of the tensors' data sizes, unpadded."""
        return sum(t.nbytes for t in self.tensors)

    def tensor(self, name: str) -> TensorShape:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def names() -> list[str]:
    """The catalog's entries, sorted."""
    return sorted(p.stem for p in CATALOG.glob("*.toml"))


def _tensor_list(name: str, groups: list[dict]) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for g in groups:
        first, last = g.get("blocks", (None, None))
        for i in ([None] if first is None else range(first, last + 1)):
            for tname, dims in g["list"]:
                if not dims or any(not isinstance(d, int) or d <= 0 for d in dims):
                    raise ValueError(f"catalog {name}: tensor {tname!r} has a bad shape {dims!r}")
                out.append((tname if i is None else f"blk.{i}.{tname}", tuple(dims)))
    return out


def get_shape(name: str) -> Shape:
    """The catalog entry `name`; an unknown name raises ValueError listing the known ones."""
    path = CATALOG / f"{name}.toml"
    if "/" in name or not path.is_file():
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(names())}")
    d = tomllib.loads(path.read_text())
    md = d["metadata"]
    listed = _tensor_list(name, d["tensors"])
    types = model_types(listed, md, d.get("quantization", "Q4_K_M"))
    for kind in ("bos", "eos", "eot", "unk", "sep", "pad"):
        tid = md.get(f"tokenizer.ggml.{kind}_token_id")
        if tid is not None and not 0 <= tid < d["n_vocab"]:
            raise ValueError(f"{name}: {kind} token id {tid} outside the vocabulary of {d['n_vocab']}")
    return Shape(name=d["name"], title=d["title"], arch=d["arch"], source=d["source"], metadata=md,
                 n_vocab=d["n_vocab"], tensors=tuple(TensorShape(n, s, t) for (n, s), t in zip(listed, types)),
                 quantization=d.get("quantization", "Q4_K_M"), published=d.get("published"))


VISION_PREFIXES = ("v.", "mm.")  # a vision tower inside the model file (Ollama's blobs of its new-engine models)


def header_view(shape: Shape, path: str = "", text_only: bool = False):
    """The GGUFFile a written shape file would read back as (tensor offsets aligned to 32), without any file:
    enough for ModelSpec and the memory model, e.g. to plan a model before it is downloaded. `text_only` leaves out
    a vision tower inside the file (v.*, mm.*: what llama-server loads from it as the --mmproj, not as the model)."""
    from .gguf import GGUFFile, TensorInfo

    tensors, offset = [], 0
    for t in shape.tensors:
        if text_only and t.name.startswith(VISION_PREFIXES):
            continue
        tensors.append(TensorInfo(t.name, t.shape, t.ggml_type, offset, t.nbytes))
        offset += (t.nbytes + 31) // 32 * 32
    meta = dict(shape.metadata)
    meta.setdefault(f"{shape.arch}.vocab_size", shape.n_vocab)
    return GGUFFile([path or f"shape:{shape.name}"], 3, "<", meta, tensors, 32, [0], [offset])


def projector_of(shape: Shape, path: str = ""):
    """The vision tower a catalog entry carries inside its file (an Ollama blob's v.*/mm.* tensors and
    <arch>.vision.* keys) as the projector llama-server loads from it (extras.ProjectorSpec), or None."""
    from .extras import inline_projector

    return inline_projector(header_view(shape, path))
