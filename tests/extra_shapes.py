"""Shape-only GGUFs of the files llama-server loads beside a model: a vision projector (`--mmproj`, a `clip`
GGUF) and a LoRA adapter (`--lora`). Like tests/shapes_writer.py's files, each file is a real header (the keys the
converters write, every tensor's name, shape and type) followed by a sparse hole for the data, so that llama-server
loads it and prints the buffers it would print for the real file; the weights read as zeros.

* `gemma3_mmproj`: the projector of Gemma-3-4B-it as llama.cpp's converter writes it (conversion/gemma.py
  Gemma3VisionModel + MmprojModel in conversion/base.py): SigLIP-so400m (vision_config of google/gemma-3-4b-it's
  config.json: hidden_size 1152, intermediate_size 4304, 27 layers, 16 heads, image_size 896, patch_size 14) and
  the Gemma 3 projector (mm.input_projection [2560, 1152], forced F16; `.embeddings.` tensors forced F32; the rest
  F16 as in `mmproj-model-f16.gguf`; norms and biases F32).
* `lora_adapter`: a PEFT LoRA as convert_lora_to_gguf.py writes it (general.type adapter, adapter.type lora,
  adapter.lora.alpha; `<tensor>.lora_a` [n_in, r] and `<tensor>.lora_b` [r, n_out], F32 by default) for the given
  target tensors of a catalog shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoctx.gguf.ggml_types import GGMLType, tensor_bytes

F32 = int(GGMLType.F32)
F16 = int(GGMLType.F16)


@dataclass(frozen=True)
class HeaderShape:
    """A GGUF header without a tokenizer: metadata (full key names) and tensors (name, GGML-order shape, type)."""

    name: str
    arch: str
    metadata: dict[str, Any]
    tensors: tuple[tuple[str, tuple[int, ...], int], ...]

    @property
    def nbytes(self) -> int:
        return sum(tensor_bytes(t, s) for _, s, t in self.tensors)


def gemma3_mmproj(projection_dim: int = 2560) -> HeaderShape:
    """mmproj of Gemma-3-4B-it (projection_dim = the text model's hidden size: 2560 for 4B, 3840 for 12B, 5376 for
    27B; the vision tower is the same SigLIP for all three)."""
    n_embd, n_ff, n_layer, n_head, image, patch = 1152, 4304, 27, 16, 896, 14
    n_pos = (image // patch) ** 2
    t: list[tuple[str, tuple[int, ...], int]] = [
        ("mm.input_projection.weight", (projection_dim, n_embd), F16),
        ("mm.soft_emb_norm.weight", (n_embd,), F32),
        ("v.patch_embd.bias", (n_embd,), F32),
        ("v.patch_embd.weight", (patch, patch, 3, n_embd), F32),
        ("v.position_embd.weight", (n_embd, n_pos), F32),
    ]
    for i in range(n_layer):
        b = f"v.blk.{i}"
        for w in ("attn_k", "attn_out", "attn_q", "attn_v"):
            t += [(f"{b}.{w}.bias", (n_embd,), F32), (f"{b}.{w}.weight", (n_embd, n_embd), F16)]
        t += [(f"{b}.ffn_down.bias", (n_embd,), F32), (f"{b}.ffn_down.weight", (n_ff, n_embd), F16),
              (f"{b}.ffn_up.bias", (n_ff,), F32), (f"{b}.ffn_up.weight", (n_embd, n_ff), F16)]
        for w in ("ln1", "ln2"):
            t += [(f"{b}.{w}.bias", (n_embd,), F32), (f"{b}.{w}.weight", (n_embd,), F32)]
    t += [("v.post_ln.bias", (n_embd,), F32), ("v.post_ln.weight", (n_embd,), F32)]
    md = {
        "general.architecture": "clip",
        "general.type": "mmproj",
        "general.name": "Gemma-3-4B-It mmproj (shape only)",
        "general.file_type": 1,
        "clip.projector_type": "gemma3",
        "clip.has_vision_encoder": True,
        "clip.use_gelu": True,
        "clip.vision.projection_dim": projection_dim,
        "clip.vision.image_size": image,
        "clip.vision.patch_size": patch,
        "clip.vision.embedding_length": n_embd,
        "clip.vision.feed_forward_length": n_ff,
        "clip.vision.block_count": n_layer,
        "clip.vision.attention.head_count": n_head,
        "clip.vision.attention.layer_norm_epsilon": 1e-6,
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
    }
    return HeaderShape("gemma-3-4b-mmproj", "clip", md, tuple(t))


def lora_adapter(base: Any, rank: int = 16, targets: tuple[str, ...] = ("attn_q", "attn_v"),
                 alpha: float = 32.0, ggml_type: int = F32) -> HeaderShape:
    """A LoRA of rank `rank` on the `targets` weights of every block of `base` (an autoctx.catalog.Shape)."""
    t: list[tuple[str, tuple[int, ...], int]] = []
    for name, shape in ((x.name, x.shape) for x in base.tensors):
        parts = name.split(".")
        if parts[0] != "blk" or parts[-1] != "weight" or parts[2] not in targets or len(shape) != 2:
            continue
        n_in, n_out = shape
        t += [(f"{name}.lora_a", (n_in, rank), ggml_type), (f"{name}.lora_b", (rank, n_out), ggml_type)]
    md = {
        "general.architecture": base.arch,
        "general.type": "adapter",
        "general.name": f"{base.title} LoRA r{rank} (shape only)",
        "adapter.type": "lora",
        "adapter.lora.alpha": float(alpha),
    }
    return HeaderShape(f"{base.name}-lora-r{rank}", base.arch, md, tuple(t))


def write_header_gguf(shape: HeaderShape, path: str | Path) -> Path:
    """Write `shape` as a GGUF whose tensor data is a sparse hole (as shapes_writer.write_shape_gguf)."""
    import gguf

    from tests.shapes_writer import add_metadata, write_sparse

    writer = gguf.GGUFWriter(None, shape.arch)  # adds general.architecture itself
    for key, value in shape.metadata.items():
        if key != "general.architecture":
            add_metadata(writer, gguf, key, value)
    return write_sparse(writer, list(shape.tensors), Path(path))


def header_file(shape: HeaderShape, path: str = ""):
    """The GGUFFile a written HeaderShape reads back as (offsets aligned to 32), without writing it."""
    from autoctx.gguf import GGUFFile, TensorInfo

    tensors, offset = [], 0
    for name, shp, ggml_type in shape.tensors:
        nbytes = tensor_bytes(ggml_type, shp)
        tensors.append(TensorInfo(name, shp, ggml_type, offset, nbytes))
        offset += (nbytes + 31) // 32 * 32
    return GGUFFile([path or f"shape:{shape.name}"], 3, "<", dict(shape.metadata), tensors, 32, [0], [offset])
