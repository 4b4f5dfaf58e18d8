"""A catalog of real model architectures, and a writer of "shape-only" GGUF files for them.

Each catalog entry (a `Shape`) holds what a Q4_K_M GGUF of that model carries in its header: the architecture
keys as today's `convert_hf_to_gguf.py` writes them (values from the model's Hugging Face `config.json`, whose repo
is named in `Shape.source`), and exactly the tensors llama.cpp's loader asks for, each with its name, its shape in
GGML order (ne0 first) and a ggml type chosen the way a Q4_K_M quantization would.

`write_shape_gguf` turns a shape into a file that llama.cpp loads like the real model: a full header (metadata,
a stand-in tokenizer, tensor infos) followed by a data section that is a sparse hole of the right length. Nothing
but the header is written, so a "70B" file costs a few MB of disk, and llama-server maps it in seconds and reports
the model, KV-cache and compute buffer sizes it would report for real weights of these shapes and types (they
depend on nothing else). Such files are for measuring memory, not for generating text: every weight reads as zero.

Conventions the catalog follows (see the llama.cpp source the tests build against):

* Metadata keys are full GGUF key names. Python types map to GGUF types: `bool` -> BOOL, `int` -> UINT32,
  `float` -> FLOAT32, `str` -> STRING, and a list -> ARRAY of INT32 / FLOAT32 / BOOL / STRING (the element types
  the converter writes for per-layer values). Keys the converter leaves out are left out here too, even where
  llama.cpp then falls back to a per-architecture default (the sliding-window pattern of gemma2/gemma3/cohere2/
  gpt-oss, for instance), so a reader of these files meets the same gaps it meets in real ones.
* Types follow `llama-quantize ... Q4_K_M` (src/llama-quant.cpp, `quant_types`): the default Q4_K; attn_v-like
  tensors (attn_v, attn_qkv, attn_kv_b) and ffn_down Q6_K only on the layers `use_more_bits` picks (the first and
  last eighth, every third between); the output, or the token embedding when it doubles as the output, Q6_K;
  8-expert models keep attn_v/attn_k in Q8_0 and attn_output in Q5_K; norms, routers (`ffn_gate_inp`), 1-D tensors
  (`attn_sinks`, `rope_freqs`), biases and the names llama-quant never quantizes F32. A type whose block does not
  divide the row falls back as llama-quant does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, else F16).
  gpt-oss follows its published MXFP4_MOE files: experts MXFP4, every other weight Q8_0.
* The tokenizer is a stand-in: an SPM ("llama") vocabulary of `n_vocab` unique tokens with the 256 byte tokens
  `<0x00>`..`<0xFF>` present (llama.cpp looks up `<0x0A>` for the newline token) and the model's real special
  token ids. SPM needs no merges table, so this is the cheapest vocabulary llama.cpp accepts; its size is the real
  one, which is what the output tensor and the logits buffer depend on.

This module imports neither `gguf` nor numpy at import time; only `write_shape_gguf` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .gguf.ggml_types import GGML_QUANT_SIZES, GGMLType, tensor_bytes

__all__ = ["SHAPES", "Shape", "TensorShape", "get_shape", "write_shape_gguf"]

F32 = int(GGMLType.F32)
F16 = int(GGMLType.F16)
Q8_0 = int(GGMLType.Q8_0)
Q4_K = int(GGMLType.Q4_K)
Q5_K = int(GGMLType.Q5_K)
Q6_K = int(GGMLType.Q6_K)
# MXFP4 arrived in gguf 0.17.1; with an older package gpt-oss's experts fall back to Q8_0.
MXFP4 = int(GGMLType.MXFP4) if hasattr(GGMLType, "MXFP4") else Q8_0

FTYPE_MOSTLY_Q4_K_M = 15  # llama_ftype, general.file_type of a Q4_K_M file


@dataclass(frozen=True)
class TensorShape:
    """One tensor as the GGUF header describes it."""

    name: str  # GGUF tensor name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # GGML order: ne0 first (token_embd = (n_embd, n_vocab))
    ggml_type: int  # gguf.GGMLQuantizationType value

    @property
    def nbytes(self) -> int:
        """Exact size of the tensor's data (ggml_nbytes)."""
        return tensor_bytes(self.ggml_type, self.shape)


@dataclass(frozen=True)
class Shape:
    """A real model's GGUF header, minus the tokenizer arrays (the writer makes those up from `n_vocab`)."""

    name: str  # catalog key, e.g. "llama-3.1-8b"
    title: str  # e.g. "Llama-3.1-8B-Instruct Q4_K_M"
    arch: str  # general.architecture
    source: str  # where the hyperparameters come from (HF config.json repo id)
    metadata: dict[str, Any]  # all GGUF key/values except tokenizer arrays, full key names
    n_vocab: int
    tensors: tuple[TensorShape, ...]

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


# --------------------------------------------------------------------------------------------------------------
# Tensor types: llama-quantize's Q4_K_M (and MXFP4_MOE) policy, src/llama-quant.cpp
# --------------------------------------------------------------------------------------------------------------

Q5_0 = int(GGMLType.Q5_0)
Q5_1 = int(GGMLType.Q5_1)
FTYPE_MOSTLY_MXFP4_MOE = 38  # llama_ftype LLAMA_FTYPE_MOSTLY_MXFP4_MOE
FTYPE_MOSTLY_Q4_0 = 2  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_0 (the default tag of Ollama's older models)
# Not a llama-quantize type: Ollama's own gpt-oss blobs keep the experts MXFP4 and every other weight BF16 (their
# published sizes, 14 GB and 65 GB, fit that mix; MXFP4_MOE's Q8_0 would give 12.1 GB and 61 GB)
FTYPE_OLLAMA_MXFP4_BF16 = -38
Q4_0 = int(GGMLType.Q4_0)
BF16 = int(GGMLType.BF16)
# tensor_allows_quantization: names kept in their source type (F32 here, as the converter writes them)
_KEEP_NAMES = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
               "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
               "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
               "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
               "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
               "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
               "time_mix_lerp_fused.weight", "attn_rel_b.weight")
# 1-D-like tensors the converter stores in F32 whatever their rank
_F32_ROLES = {"ffn_gate_inp", "attn_sinks", "rope_freqs"}
# tensor_type_fallback: a type whose block does not divide the row falls back to a 32-block type, then F16
_FALLBACK = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}


def _role(name: str) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v'; 'output.weight' -> 'output'."""
    parts = name.split(".")
    if parts[0] == "blk":
        parts = parts[2:]
    return ".".join(parts[:-1])


def _category(name: str) -> str:
    """tensor_get_category: broad categories by substring, in llama-quant.cpp's order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for cat in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight",
                "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if cat in name:
            return cat.removesuffix(".weight")
    return "other"


def _fit(ggml_type: int, ne0: int) -> int:
    """tensor_type_fallback: the type itself if rows of ne0 elements split into its blocks, else its 32-block
    fallback (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), else F16."""
    if ne0 % GGML_QUANT_SIZES[ggml_type][0] == 0:
        return ggml_type
    fallback = _FALLBACK.get(ggml_type, ggml_type)
    return fallback if ne0 % GGML_QUANT_SIZES[fallback][0] == 0 else F16


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def quant_types(names_shapes: list[tuple[str, tuple[int, ...]]], *, arch: str, n_layer: int, n_expert: int,
                ftype: int = FTYPE_MOSTLY_Q4_K_M, is_70b: bool = False) -> list[int]:
    """The ggml type llama-quantize gives each tensor (in file order) of a model quantized to `ftype`
    (Q4_K_M or MXFP4_MOE), as llama_tensor_get_type does: attn_v-like tensors (attn_v, attn_qkv, attn_kv_b) and
    ffn_down get Q6_K only on the layers use_more_bits picks (the first and last eighth, every third between),
    counted per tensor for attn_v and per layer (from the name when the model has experts) for ffn_down; the output
    (or the token embedding when it doubles as the output) Q6_K; everything else the default Q4_K; 8-expert models
    keep attn_v/attn_k in Q8_0 and attn_output in Q5_K; a LLaMA 70B's attn_v gets Q5_K. Norms, routers, 1-D
    tensors and the names tensor_allows_quantization skips stay F32. Rows that a type's block does not divide
    fall back (tensor_type_fallback)."""
    tied = not any(n == "output.weight" for n, _ in names_shapes)
    n_wv = sum(1 for n, _ in names_shapes if _category(n) in ("attn_qkv", "attn_v", "attn_kv_b"))
    i_wv = i_down = 0
    out = []
    for name, shape in names_shapes:
        cat = _category(name)
        if (len(shape) < 2 or not name.endswith("weight") or any(k in name for k in _KEEP_NAMES)
                or _role(name) in _F32_ROLES):
            out.append(F32)
            continue
        new = Q4_0 if ftype == FTYPE_MOSTLY_Q4_0 else Q4_K
        if ftype == FTYPE_OLLAMA_MXFP4_BF16:
            new = MXFP4 if len(shape) > 2 and shape[2] > 1 else BF16
        elif cat == "output" or (tied and cat == "token_embd"):
            new = Q8_0 if (ftype == FTYPE_MOSTLY_MXFP4_MOE or arch == "falcon" or shape[0] % 256) else Q6_K
        elif ftype == FTYPE_MOSTLY_MXFP4_MOE:
            new = MXFP4 if len(shape) > 2 and shape[2] > 1 else Q8_0
        elif cat == "token_embd":
            pass
        elif ftype == FTYPE_MOSTLY_Q4_0:
            # Q4_0 changes nothing but the 8-expert attn_v/attn_k (Q8_0) and the output (above)
            if n_expert == 8 and cat in ("attn_v", "attn_k"):
                new = Q8_0
        elif cat in ("attn_qkv", "attn_v", "attn_kv_b"):
            if _use_more_bits(i_wv, n_wv):
                new = Q6_K
            if is_70b and new == Q4_K:
                new = Q5_K
            if n_expert == 8:
                new = Q8_0
            i_wv += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = Q8_0
        elif cat == "ffn_down":
            i_layer = int(name.split(".")[1]) if n_expert > 1 else i_down
            if arch == "falcon":
                new = Q6_K if i_layer < n_layer // 16 else Q5_K if _use_more_bits(i_layer, n_layer) else Q4_K
            elif _use_more_bits(i_layer, n_layer):
                new = Q6_K
            i_down += 1
        elif cat == "attn_output":
            if arch != "falcon" and n_expert == 8:
                new = Q5_K
        out.append(_fit(new, shape[0]))
    return out


class _Tensors:
    """Collects tensors in file order; `_shape` types the ones without an explicit type by llama-quant's policy."""

    def __init__(self, tied: bool) -> None:
        self.tied = tied
        self.items: list[TensorShape] = []

    def add(self, name: str, *shape: int, ggml_type: int | None = None) -> None:
        """A tensor; its type is the quantization policy's (see `quant_types`, applied by `_shape`) unless given."""
        self.items.append(TensorShape(name, tuple(int(d) for d in shape), -1 if ggml_type is None
                                      else _fit(ggml_type, int(shape[0]))))

    def blk(self, i: int, role: str, *shape: int, kind: str = "weight", ggml_type: int | None = None) -> None:
        self.add(f"blk.{i}.{role}.{kind}", *shape, ggml_type=ggml_type)

    # shared building blocks -----------------------------------------------------------------------------------

    def embeddings(self, n_embd: int, n_vocab: int) -> None:
        """token_embd first; output_norm/output come from `head`."""
        self.add("token_embd.weight", n_embd, n_vocab)

    def head(self, n_embd: int, n_vocab: int) -> None:
        self.add("output_norm.weight", n_embd)
        if not self.tied:
            self.add("output.weight", n_embd, n_vocab)

    def attention(self, i: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int, *,
                  qkv_bias: bool = False, out_bias: bool = False, qk_norm: bool = False) -> None:
        q, kv = n_head * head_dim, n_head_kv * head_dim
        self.blk(i, "attn_q", n_embd, q)
        self.blk(i, "attn_k", n_embd, kv)
        self.blk(i, "attn_v", n_embd, kv)
        if qkv_bias:
            self.blk(i, "attn_q", q, kind="bias")
            self.blk(i, "attn_k", kv, kind="bias")
            self.blk(i, "attn_v", kv, kind="bias")
        self.blk(i, "attn_output", q, n_embd)
        if out_bias:
            self.blk(i, "attn_output", n_embd, kind="bias")
        if qk_norm:
            self.blk(i, "attn_q_norm", head_dim)
            self.blk(i, "attn_k_norm", head_dim)

    def mlp(self, i: int, n_embd: int, n_ff: int, suffix: str = "") -> None:
        """SwiGLU MLP: gate, down, up (suffix '_shexp' for a shared expert)."""
        self.blk(i, "ffn_gate" + suffix, n_embd, n_ff)
        self.blk(i, "ffn_down" + suffix, n_ff, n_embd)
        self.blk(i, "ffn_up" + suffix, n_embd, n_ff)

    def experts(self, i: int, n_embd: int, n_ff_exp: int, n_expert: int, *,
                bias: bool = False, ggml_type: int | None = None) -> None:
        """Router plus the merged 3-D expert tensors (ne2 = expert)."""
        self.blk(i, "ffn_gate_inp", n_embd, n_expert)
        if bias:
            self.blk(i, "ffn_gate_inp", n_expert, kind="bias")
        self.blk(i, "ffn_gate_exps", n_embd, n_ff_exp, n_expert, ggml_type=ggml_type)
        self.blk(i, "ffn_down_exps", n_ff_exp, n_embd, n_expert, ggml_type=ggml_type)
        self.blk(i, "ffn_up_exps", n_embd, n_ff_exp, n_expert, ggml_type=ggml_type)
        if bias:
            self.blk(i, "ffn_gate_exps", n_ff_exp, n_expert, kind="bias")
            self.blk(i, "ffn_down_exps", n_embd, n_expert, kind="bias")
            self.blk(i, "ffn_up_exps", n_ff_exp, n_expert, kind="bias")


# --------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------

_SPECIAL_KEYS = ("bos", "eos", "eot", "unk", "sep", "pad")
# Texts of the stand-in special tokens; "</s>" and "<|eot_id|>" are among the texts llama.cpp marks end-of-generation.
_SPECIAL_TEXT = {"bos": "<s>", "eos": "</s>", "eot": "<|eot_id|>", "unk": "<unk>", "sep": "<sep>", "pad": "<pad>"}


def _metadata(arch: str, title: str, source: str, arch_kv: dict[str, Any], *,
              specials: dict[str, int], add_bos: bool | None = None) -> dict[str, Any]:
    """General keys + `<arch>.*` keys (given without the prefix) + tokenizer scalars."""
    md: dict[str, Any] = {
        "general.architecture": arch,
        "general.type": "model",
        "general.name": title,
        "general.source.huggingface.repository": source,
        "general.file_type": FTYPE_MOSTLY_Q4_K_M,
        "general.quantization_version": 2,
    }
    md.update({f"{arch}.{k}": v for k, v in arch_kv.items() if v is not None})
    md["tokenizer.ggml.model"] = "llama"
    for kind in _SPECIAL_KEYS:
        if kind in specials:
            md[f"tokenizer.ggml.{kind}_token_id"] = specials[kind]
    if add_bos is not None:
        md["tokenizer.ggml.add_bos_token"] = add_bos
    return md


def _shape(name: str, title: str, arch: str, source: str, n_vocab: int, arch_kv: dict[str, Any],
           t: _Tensors, *, specials: dict[str, int], add_bos: bool | None = None,
           ftype: int = FTYPE_MOSTLY_Q4_K_M) -> Shape:
    for kind, tid in specials.items():
        if not 0 <= tid < n_vocab:
            raise ValueError(f"{name}: {kind} token id {tid} outside the vocabulary of {n_vocab}")
    n_layer = int(arch_kv["block_count"])
    n_head, n_head_kv = arch_kv.get("attention.head_count"), arch_kv.get("attention.head_count_kv")
    policy = quant_types([(x.name, x.shape) for x in t.items], arch=arch, n_layer=n_layer,
                         n_expert=int(arch_kv.get("expert_count") or 0), ftype=ftype,
                         is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv)
    tensors = tuple(x if x.ggml_type >= 0 else TensorShape(x.name, x.shape, ty) for x, ty in zip(t.items, policy))
    md = _metadata(arch, title, source, arch_kv, specials=specials, add_bos=add_bos)
    md["general.file_type"] = FTYPE_MOSTLY_MXFP4_MOE if ftype == FTYPE_OLLAMA_MXFP4_BF16 else ftype
    return Shape(name=name, title=title, arch=arch, source=source, metadata=md, n_vocab=n_vocab, tensors=tensors)


# --------------------------------------------------------------------------------------------------------------
# Architecture families
# --------------------------------------------------------------------------------------------------------------


def _llama(name: str, title: str, source: str, *, n_layer: int, n_ctx: int, n_embd: int, n_ff: int, n_head: int,
           n_head_kv: int, n_vocab: int, rope_base: float, rms_eps: float, llama3_rope: bool = False,
           n_expert: int = 0, n_expert_used: int = 0, tied: bool = False, specials: dict[str, int],
           ftype: int = FTYPE_MOSTLY_Q4_K_M) -> Shape:
    """LLM_ARCH_LLAMA: Llama 2/3, Mistral, and Mixtral (experts in merged ffn_*_exps tensors). `tied`: no
    output.weight, the embedding doubles as the output (Llama 3.2 1B/3B)."""
    head_dim = n_embd // n_head
    t = _Tensors(tied=tied)
    t.embeddings(n_embd, n_vocab)
    if llama3_rope:
        # Llama 3.1 "llama3" rope scaling is baked into per-dimension frequency factors, one F32 per rotary pair.
        t.add("rope_freqs.weight", head_dim // 2)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.attention(i, n_embd, n_head, n_head_kv, head_dim)
        t.blk(i, "ffn_norm", n_embd)
        if n_expert:
            t.experts(i, n_embd, n_ff, n_expert)
        else:
            t.mlp(i, n_embd, n_ff)
    t.head(n_embd, n_vocab)
    kv = {
        "vocab_size": n_vocab,
        "context_length": n_ctx,
        "embedding_length": n_embd,
        "block_count": n_layer,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "rope.freq_base": rope_base,
        "attention.layer_norm_rms_epsilon": rms_eps,
        "rope.dimension_count": head_dim,
        "expert_count": n_expert or None,
        "expert_used_count": n_expert_used or None,
    }
    return _shape(name, title, "llama", source, n_vocab, kv, t, specials=specials, ftype=ftype)


def _qwen(name: str, title: str, source: str, *, arch: str, n_layer: int, n_ctx: int, n_embd: int, n_ff: int,
          n_head: int, n_head_kv: int, n_vocab: int, rope_base: float, rms_eps: float, head_dim: int | None = None,
          n_expert: int = 0, n_expert_used: int = 0, n_ff_exp: int = 0, tied: bool = False,
          specials: dict[str, int]) -> Shape:
    """qwen2 (q/k/v biases), qwen3 (q/k RMS norms, explicit head_dim) and qwen3moe (qwen3 + routed experts).
    `tied`: no output.weight (the small Qwen2.5 models)."""
    qwen3 = arch in ("qwen3", "qwen3moe")
    hd = head_dim or n_embd // n_head
    t = _Tensors(tied=tied)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.attention(i, n_embd, n_head, n_head_kv, hd, qkv_bias=not qwen3, qk_norm=qwen3)
        t.blk(i, "ffn_norm", n_embd)
        if n_expert:
            t.experts(i, n_embd, n_ff_exp, n_expert)
        else:
            t.mlp(i, n_embd, n_ff)
    t.head(n_embd, n_vocab)
    kv = {
        "block_count": n_layer,
        "context_length": n_ctx,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "rope.freq_base": rope_base,
        "attention.layer_norm_rms_epsilon": rms_eps,
        "expert_count": n_expert or None,
        "expert_used_count": n_expert_used or None,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "expert_feed_forward_length": n_ff_exp or None,
    }
    return _shape(name, title, arch, source, n_vocab, kv, t, specials=specials)


_GEMMA_SPECIALS = {"bos": 2, "eos": 1, "unk": 3, "pad": 0}


def _gemma2(name: str, title: str, source: str, *, n_layer: int, n_ctx: int, n_embd: int, n_ff: int, n_head: int,
            n_head_kv: int, head_dim: int, n_vocab: int, rms_eps: float, sliding_window: int,
            attn_softcap: float, final_softcap: float) -> Shape:
    """Gemma 2: tied embeddings, pre+post norms around attention and MLP, logit soft-capping, SWA on even layers."""
    t = _Tensors(tied=True)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.attention(i, n_embd, n_head, n_head_kv, head_dim)
        t.blk(i, "post_attention_norm", n_embd)
        t.blk(i, "ffn_norm", n_embd)
        t.mlp(i, n_embd, n_ff)
        t.blk(i, "post_ffw_norm", n_embd)
    t.head(n_embd, n_vocab)
    kv = {
        "context_length": n_ctx,
        "embedding_length": n_embd,
        "block_count": n_layer,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "attention.layer_norm_rms_epsilon": rms_eps,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "attn_logit_softcapping": attn_softcap,
        "final_logit_softcapping": final_softcap,
        "attention.sliding_window": sliding_window,
    }
    return _shape(name, title, "gemma2", source, n_vocab, kv, t, specials=_GEMMA_SPECIALS, add_bos=True)


def _gemma3(name: str, title: str, source: str, *, n_layer: int, n_embd: int, n_ff: int, n_head: int,
            n_head_kv: int, head_dim: int = 256) -> Shape:
    """Gemma 3 text: as Gemma 2 plus q/k norms; 5 of every 6 layers use a 1024-token sliding window
    (llama.cpp's default pattern, the converter writes no pattern key), local rope base 10k, global 1M with
    linear scaling x8."""
    n_vocab = 262144
    t = _Tensors(tied=True)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.attention(i, n_embd, n_head, n_head_kv, head_dim, qk_norm=True)
        t.blk(i, "post_attention_norm", n_embd)
        t.blk(i, "ffn_norm", n_embd)
        t.mlp(i, n_embd, n_ff)
        t.blk(i, "post_ffw_norm", n_embd)
    t.head(n_embd, n_vocab)
    kv = {
        "block_count": n_layer,
        "context_length": 131072,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "rope.scaling.type": "linear",
        "rope.scaling.factor": 8.0,
        "rope.freq_base": 1000000.0,
        "rope.freq_base_swa": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "attention.sliding_window": 1024,
    }
    return _shape(name, title, "gemma3", source, n_vocab, kv, t, specials={**_GEMMA_SPECIALS, "eot": 106},
                  add_bos=True)


# --------------------------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------------------------

_LLAMA3_SPECIALS = {"bos": 128000, "eos": 128009}
_MISTRAL_SPECIALS = {"bos": 1, "eos": 2, "unk": 0}
_QWEN_SPECIALS = {"bos": 151643, "eos": 151645, "pad": 151643}


def llama_3_1_8b() -> Shape:
    return _llama("llama-3.1-8b", "Llama-3.1-8B-Instruct Q4_K_M", "meta-llama/Llama-3.1-8B-Instruct",
                  n_layer=32, n_ctx=131072, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=128256,
                  rope_base=500000.0, rms_eps=1e-5, llama3_rope=True, specials=_LLAMA3_SPECIALS)


def llama_3_2_1b() -> Shape:
    return _llama("llama-3.2-1b", "Llama-3.2-1B-Instruct Q4_K_M", "meta-llama/Llama-3.2-1B-Instruct",
                  n_layer=16, n_ctx=131072, n_embd=2048, n_ff=8192, n_head=32, n_head_kv=8, n_vocab=128256,
                  rope_base=500000.0, rms_eps=1e-5, llama3_rope=True, tied=True, specials=_LLAMA3_SPECIALS)


def llama_2_7b() -> Shape:
    return _llama("llama-2-7b", "Llama-2-7b-chat Q4_K_M", "meta-llama/Llama-2-7b-chat-hf",
                  n_layer=32, n_ctx=4096, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32, n_vocab=32000,
                  rope_base=10000.0, rms_eps=1e-5, specials=_MISTRAL_SPECIALS)


def llama_3_1_70b() -> Shape:
    return _llama("llama-3.1-70b", "Llama-3.1-70B-Instruct Q4_K_M", "meta-llama/Llama-3.1-70B-Instruct",
                  n_layer=80, n_ctx=131072, n_embd=8192, n_ff=28672, n_head=64, n_head_kv=8, n_vocab=128256,
                  rope_base=500000.0, rms_eps=1e-5, llama3_rope=True, specials=_LLAMA3_SPECIALS)


def mistral_7b() -> Shape:
    return _llama("mistral-7b", "Mistral-7B-Instruct-v0.3 Q4_K_M", "mistralai/Mistral-7B-Instruct-v0.3",
                  n_layer=32, n_ctx=32768, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=32768,
                  rope_base=1000000.0, rms_eps=1e-5, specials=_MISTRAL_SPECIALS)


def mixtral_8x7b() -> Shape:
    return _llama("mixtral-8x7b", "Mixtral-8x7B-Instruct-v0.1 Q4_K_M", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                  n_layer=32, n_ctx=32768, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=32000,
                  rope_base=1000000.0, rms_eps=1e-5, n_expert=8, n_expert_used=2, specials=_MISTRAL_SPECIALS)


def qwen2_5_0_5b() -> Shape:
    # n_embd 896 is no multiple of 256: most weights fall back to Q8_0 (as the published Q4_K_M mixes Q5_0/Q8_0)
    return _qwen("qwen2.5-0.5b", "Qwen2.5-0.5B-Instruct Q4_K_M", "Qwen/Qwen2.5-0.5B-Instruct", arch="qwen2",
                 n_layer=24, n_ctx=32768, n_embd=896, n_ff=4864, n_head=14, n_head_kv=2, n_vocab=151936,
                 rope_base=1000000.0, rms_eps=1e-6, tied=True, specials=_QWEN_SPECIALS)


def qwen2_5_7b() -> Shape:
    return _qwen("qwen2.5-7b", "Qwen2.5-7B-Instruct Q4_K_M", "Qwen/Qwen2.5-7B-Instruct", arch="qwen2",
                 n_layer=28, n_ctx=32768, n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4, n_vocab=152064,
                 rope_base=1000000.0, rms_eps=1e-6, specials=_QWEN_SPECIALS)


def qwen2_5_32b() -> Shape:
    return _qwen("qwen2.5-32b", "Qwen2.5-32B-Instruct Q4_K_M", "Qwen/Qwen2.5-32B-Instruct", arch="qwen2",
                 n_layer=64, n_ctx=32768, n_embd=5120, n_ff=27648, n_head=40, n_head_kv=8, n_vocab=152064,
                 rope_base=1000000.0, rms_eps=1e-6, specials=_QWEN_SPECIALS)


def qwen2_5_14b() -> Shape:
    return _qwen("qwen2.5-14b", "Qwen2.5-14B-Instruct Q4_K_M", "Qwen/Qwen2.5-14B-Instruct", arch="qwen2",
                 n_layer=48, n_ctx=32768, n_embd=5120, n_ff=13824, n_head=40, n_head_kv=8, n_vocab=152064,
                 rope_base=1000000.0, rms_eps=1e-6, specials=_QWEN_SPECIALS)


def deepseek_r1_14b() -> Shape:
    """DeepSeek-R1-Distill-Qwen-14B: the Qwen2.5-14B architecture with a 128k trained context."""
    return _qwen("deepseek-r1-14b", "DeepSeek-R1-Distill-Qwen-14B Q4_K_M", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
                 arch="qwen2", n_layer=48, n_ctx=131072, n_embd=5120, n_ff=13824, n_head=40, n_head_kv=8,
                 n_vocab=152064, rope_base=1000000.0, rms_eps=1e-5, specials=_QWEN_SPECIALS)


def deepseek_r1_1_5b() -> Shape:
    """DeepSeek-R1-Distill-Qwen-1.5B: Qwen2.5-Math-1.5B (untied output, rope base 10k, 128k context)."""
    return _qwen("deepseek-r1-1.5b", "DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M",
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                 arch="qwen2", n_layer=28, n_ctx=131072, n_embd=1536, n_ff=8960, n_head=12, n_head_kv=2,
                 n_vocab=151936, rope_base=10000.0, rms_eps=1e-6, specials=_QWEN_SPECIALS)


def deepseek_r1_7b() -> Shape:
    """DeepSeek-R1-Distill-Qwen-7B: Qwen2.5-Math-7B (rope base 10k, 128k context)."""
    return _qwen("deepseek-r1-7b", "DeepSeek-R1-Distill-Qwen-7B Q4_K_M", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                 arch="qwen2", n_layer=28, n_ctx=131072, n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4,
                 n_vocab=152064, rope_base=10000.0, rms_eps=1e-6, specials=_QWEN_SPECIALS)


def deepseek_r1_32b() -> Shape:
    """DeepSeek-R1-Distill-Qwen-32B: the Qwen2.5-32B architecture with a 128k context."""
    return _qwen("deepseek-r1-32b", "DeepSeek-R1-Distill-Qwen-32B Q4_K_M", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
                 arch="qwen2", n_layer=64, n_ctx=131072, n_embd=5120, n_ff=27648, n_head=40, n_head_kv=8,
                 n_vocab=152064, rope_base=1000000.0, rms_eps=1e-5, specials=_QWEN_SPECIALS)


def deepseek_r1_70b() -> Shape:
    """DeepSeek-R1-Distill-Llama-70B: the Llama-3.3-70B architecture."""
    return _llama("deepseek-r1-70b", "DeepSeek-R1-Distill-Llama-70B Q4_K_M",
                  "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
                  n_layer=80, n_ctx=131072, n_embd=8192, n_ff=28672, n_head=64, n_head_kv=8, n_vocab=128256,
                  rope_base=500000.0, rms_eps=1e-5, llama3_rope=True, specials={"bos": 128000, "eos": 128001})


def mixtral_8x7b_q4_0() -> Shape:
    """Mixtral-8x7B-Instruct-v0.1 as Ollama's default mixtral:8x7b tag, Q4_0 (8 experts: attn_v/attn_k Q8_0)."""
    return _llama("mixtral-8x7b-q4_0", "Mixtral-8x7B-Instruct-v0.1 Q4_0", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                  n_layer=32, n_ctx=32768, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=32000,
                  rope_base=1000000.0, rms_eps=1e-5, n_expert=8, n_expert_used=2, specials=_MISTRAL_SPECIALS,
                  ftype=FTYPE_MOSTLY_Q4_0)


def qwen3_8b() -> Shape:
    return _qwen("qwen3-8b", "Qwen3-8B Q4_K_M", "Qwen/Qwen3-8B", arch="qwen3",
                 n_layer=36, n_ctx=40960, n_embd=4096, n_ff=12288, n_head=32, n_head_kv=8, head_dim=128,
                 n_vocab=151936, rope_base=1000000.0, rms_eps=1e-6, specials=_QWEN_SPECIALS)


def qwen3_30b_a3b() -> Shape:
    return _qwen("qwen3-30b-a3b", "Qwen3-30B-A3B Q4_K_M", "Qwen/Qwen3-30B-A3B", arch="qwen3moe",
                 n_layer=48, n_ctx=40960, n_embd=2048, n_ff=6144, n_head=32, n_head_kv=4, head_dim=128,
                 n_vocab=151936, rope_base=1000000.0, rms_eps=1e-6, n_expert=128, n_expert_used=8, n_ff_exp=768,
                 specials=_QWEN_SPECIALS)


def gemma_2_9b() -> Shape:
    return _gemma2("gemma-2-9b", "gemma-2-9b-it Q4_K_M", "google/gemma-2-9b-it",
                   n_layer=42, n_ctx=8192, n_embd=3584, n_ff=14336, n_head=16, n_head_kv=8, head_dim=256,
                   n_vocab=256000, rms_eps=1e-6, sliding_window=4096, attn_softcap=50.0, final_softcap=30.0)


def gemma_3_4b() -> Shape:
    return _gemma3("gemma-3-4b", "gemma-3-4b-it Q4_K_M (text)", "google/gemma-3-4b-it",
                   n_layer=34, n_embd=2560, n_ff=10240, n_head=8, n_head_kv=4)


def gemma_3_12b() -> Shape:
    return _gemma3("gemma-3-12b", "gemma-3-12b-it Q4_K_M (text)", "google/gemma-3-12b-it",
                   n_layer=48, n_embd=3840, n_ff=15360, n_head=16, n_head_kv=8)


def gemma_3_27b() -> Shape:
    return _gemma3("gemma-3-27b", "gemma-3-27b-it Q4_K_M (text)", "google/gemma-3-27b-it",
                   n_layer=62, n_embd=5376, n_ff=21504, n_head=32, n_head_kv=16, head_dim=128)


def phi_3_mini() -> Shape:
    """Phi-3-mini-4k: fused attn_qkv and a fused gate+up (`ffn_up` is 2*n_ff wide); MHA 32/32, rotary dims 96.
    Its sliding window (2047) is written, and ignored by llama.cpp (Phi SWA is disabled there)."""
    n_layer, n_embd, n_ff, n_head, n_vocab = 32, 3072, 8192, 32, 32064
    t = _Tensors(tied=False)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.blk(i, "attn_qkv", n_embd, 3 * n_embd)
        t.blk(i, "attn_output", n_embd, n_embd)
        t.blk(i, "ffn_norm", n_embd)
        t.blk(i, "ffn_down", n_ff, n_embd)
        t.blk(i, "ffn_up", n_embd, 2 * n_ff)
    t.head(n_embd, n_vocab)
    kv = {
        "context_length": 4096,
        "rope.scaling.original_context_length": 4096,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "block_count": n_layer,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head,
        "attention.layer_norm_rms_epsilon": 1e-5,
        "rope.dimension_count": n_embd // n_head,
        "rope.freq_base": 10000.0,
        "attention.sliding_window": 2047,
    }
    return _shape("phi-3-mini", "Phi-3-mini-4k-instruct Q4_K_M", "phi3", "microsoft/Phi-3-mini-4k-instruct",
                  n_vocab, kv, t, specials={"bos": 1, "eos": 32000, "unk": 0, "pad": 32000}, add_bos=False)


def deepseek_v2_lite() -> Shape:
    """DeepSeek-V2-Lite: MLA attention (no q LoRA in the Lite model; kv compressed to rank 512 plus a 64-dim rope
    key shared by all heads), one leading dense layer, then 64 routed experts (6 used) + 2 shared experts.

    As the current converter writes it, MLA is stored as MQA over the compressed latent: head_count_kv 1,
    key_length 576 (= 512 + 64) and value_length 512 describe the KV cache rows, while key_length_mla 192
    (= 128 nope + 64 rope) and value_length_mla 128 are the per-head sizes after decompression; kv_b is split into
    attn_k_b (transposed, per head) and attn_v_b."""
    n_layer, n_embd, n_ff, n_head, n_vocab = 27, 2048, 10944, 16, 102400
    n_expert, n_expert_used, n_expert_shared, n_ff_exp = 64, 6, 2, 1408
    kv_lora_rank, qk_nope, qk_rope, v_head = 512, 128, 64, 128
    t = _Tensors(tied=False)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.blk(i, "attn_kv_a_norm", kv_lora_rank)
        t.blk(i, "attn_q", n_embd, n_head * (qk_nope + qk_rope))
        t.blk(i, "attn_kv_a_mqa", n_embd, kv_lora_rank + qk_rope)
        t.blk(i, "attn_k_b", qk_nope, kv_lora_rank, n_head)
        t.blk(i, "attn_v_b", kv_lora_rank, v_head, n_head)
        t.blk(i, "attn_output", n_head * v_head, n_embd)
        t.blk(i, "ffn_norm", n_embd)
        if i < 1:
            t.mlp(i, n_embd, n_ff)
        else:
            t.experts(i, n_embd, n_ff_exp, n_expert)
            t.mlp(i, n_embd, n_ff_exp * n_expert_shared, suffix="_shexp")
    t.head(n_embd, n_vocab)
    kv = {
        "block_count": n_layer,
        "context_length": 163840,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": 1,
        "rope.scaling.type": "yarn",
        "rope.scaling.factor": 40.0,
        "rope.scaling.original_context_length": 4096,
        "rope.scaling.yarn_beta_fast": 32.0,
        "rope.scaling.yarn_beta_slow": 1.0,
        "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "expert_count": n_expert,
        "expert_used_count": n_expert_used,
        "expert_group_count": 1,
        "expert_group_used_count": 1,
        "expert_gating_func": 1,  # softmax
        "leading_dense_block_count": 1,
        "vocab_size": n_vocab,
        "attention.kv_lora_rank": kv_lora_rank,
        "attention.key_length": kv_lora_rank + qk_rope,
        "attention.value_length": kv_lora_rank,
        "attention.key_length_mla": qk_nope + qk_rope,
        "attention.value_length_mla": v_head,
        "expert_feed_forward_length": n_ff_exp,
        "expert_shared_count": n_expert_shared,
        "expert_weights_scale": 1.0,
        "rope.dimension_count": qk_rope,
        "rope.scaling.yarn_log_multiplier": 0.1 * 0.707,  # the converter's legacy 0.1 * mscale_all_dim
    }
    return _shape("deepseek-v2-lite", "DeepSeek-V2-Lite-Chat Q4_K_M", "deepseek2",
                  "deepseek-ai/DeepSeek-V2-Lite-Chat", n_vocab, kv, t,
                  specials={"bos": 100000, "eos": 100001, "pad": 100001})


def _gpt_oss(name: str, title: str, source: str, *, n_layer: int, n_expert: int, ftype: int) -> Shape:
    """gpt-oss (llama.cpp arch "gpt-oss"): alternating 128-token sliding-window / full attention (llama.cpp's
    default pattern 2, sliding first), one learned attention sink per head, biases everywhere, experts (4 used)
    stored MXFP4. n_embd 2880 is not a multiple of 256: with MXFP4_MOE the other weights are Q8_0."""
    n_embd, n_head, n_head_kv, head_dim, n_vocab = 2880, 64, 8, 64, 201088
    n_expert_used, n_ff_exp = 4, 2880
    t = _Tensors(tied=False)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.attention(i, n_embd, n_head, n_head_kv, head_dim, qkv_bias=True, out_bias=True)
        t.blk(i, "attn_sinks", n_head)
        t.blk(i, "post_attention_norm", n_embd)
        t.experts(i, n_embd, n_ff_exp, n_expert, bias=True, ggml_type=MXFP4 if ftype != FTYPE_OLLAMA_MXFP4_BF16
                  else None)
    t.head(n_embd, n_vocab)
    kv = {
        "block_count": n_layer,
        "context_length": 131072,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff_exp,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "rope.scaling.type": "yarn",
        "rope.scaling.factor": 32.0,
        "rope.scaling.original_context_length": 4096,
        "rope.scaling.yarn_beta_fast": 32.0,
        "rope.scaling.yarn_beta_slow": 1.0,
        "rope.freq_base": 150000.0,
        "attention.layer_norm_rms_epsilon": 1e-5,
        "expert_count": n_expert,
        "expert_used_count": n_expert_used,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "attention.sliding_window": 128,
        "expert_feed_forward_length": n_ff_exp,
    }
    return _shape(name, title, "gpt-oss", source, n_vocab, kv, t,
                  specials={"bos": 199998, "eos": 200002, "pad": 199999}, add_bos=False, ftype=ftype)


def gpt_oss_20b() -> Shape:
    """gpt-oss-20b as its published MXFP4_MOE GGUF: 24 layers, 32 experts."""
    return _gpt_oss("gpt-oss-20b", "gpt-oss-20b MXFP4/Q8_0", "openai/gpt-oss-20b", n_layer=24, n_expert=32,
                    ftype=FTYPE_MOSTLY_MXFP4_MOE)


def gpt_oss_20b_ollama() -> Shape:
    """gpt-oss-20b as Ollama's gpt-oss:20b blob: MXFP4 experts, every other weight BF16."""
    return _gpt_oss("gpt-oss-20b-ollama", "gpt-oss-20b MXFP4/BF16 (Ollama)", "openai/gpt-oss-20b", n_layer=24,
                    n_expert=32, ftype=FTYPE_OLLAMA_MXFP4_BF16)


def gpt_oss_120b_ollama() -> Shape:
    """gpt-oss-120b as Ollama's gpt-oss:120b blob: 36 layers, 128 experts (4 used), MXFP4 experts, the rest BF16."""
    return _gpt_oss("gpt-oss-120b-ollama", "gpt-oss-120b MXFP4/BF16 (Ollama)", "openai/gpt-oss-120b", n_layer=36,
                    n_expert=128, ftype=FTYPE_OLLAMA_MXFP4_BF16)


def command_r7b() -> Shape:
    """Command R7B (cohere2): parallel attention+MLP blocks behind one LayerNorm (weight only), tied embeddings,
    three 4096-token sliding-window layers then one global layer without rope (llama.cpp's default pattern 4)."""
    n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab = 32, 4096, 14336, 32, 8, 256000
    head_dim = n_embd // n_head
    t = _Tensors(tied=True)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        t.attention(i, n_embd, n_head, n_head_kv, head_dim)
        t.mlp(i, n_embd, n_ff)
    t.head(n_embd, n_vocab)
    kv = {
        "block_count": n_layer,
        "context_length": 132096,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "rope.freq_base": 50000.0,
        "attention.layer_norm_epsilon": 1e-5,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "logit_scale": 0.25,
        "attention.sliding_window": 4096,
        "vocab_size": n_vocab,
        "rope.dimension_count": head_dim,
        "rope.scaling.type": "none",
    }
    return _shape("command-r7b", "c4ai-command-r7b-12-2024 Q4_K_M", "cohere2", "CohereLabs/c4ai-command-r7b-12-2024",
                  n_vocab, kv, t, specials={"bos": 5, "eos": 255001, "pad": 0}, add_bos=True)


def _lfm2(name: str, title: str, source: str, *, arch: str, n_layer: int, n_embd: int, n_ff: int, n_head: int,
          n_head_kv: int, attn_layers: tuple[int, ...], n_vocab: int, l_cache: int = 3, n_expert: int = 0,
          n_expert_used: int = 0, n_ff_exp: int = 0, n_dense_lead: int = 0) -> Shape:
    """LFM2 / LFM2-MoE (src/models/lfm2.cpp, lfm2moe.cpp): short-convolution blocks (`shortconv.conv` [l_cache,
    n_embd], in_proj to 3 x n_embd, out_proj) with a few GQA attention blocks (q/k norms) between them, marked by
    their KV head count (0 on the conv blocks, written per layer); tied embeddings, the final norm is named
    `token_embd_norm`. MoE: after `n_dense_lead` dense blocks, routed experts with a selection bias (exp_probs_b)."""
    head_dim = n_embd // n_head
    t = _Tensors(tied=True)
    t.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        t.blk(i, "attn_norm", n_embd)
        if i in attn_layers:
            t.blk(i, "attn_q", n_embd, n_embd)
            t.blk(i, "attn_k", n_embd, n_head_kv * head_dim)
            t.blk(i, "attn_v", n_embd, n_head_kv * head_dim)
            t.blk(i, "attn_output", n_embd, n_embd)
            t.blk(i, "attn_q_norm", head_dim)
            t.blk(i, "attn_k_norm", head_dim)
        else:
            t.blk(i, "shortconv.conv", l_cache, n_embd)
            t.blk(i, "shortconv.in_proj", n_embd, 3 * n_embd)
            t.blk(i, "shortconv.out_proj", n_embd, n_embd)
        t.blk(i, "ffn_norm", n_embd)
        if n_expert and i >= n_dense_lead:
            t.experts(i, n_embd, n_ff_exp, n_expert)
            t.blk(i, "exp_probs_b", n_expert, kind="bias")
        else:
            t.mlp(i, n_embd, n_ff)
    t.add("token_embd_norm.weight", n_embd)
    kv = {
        "block_count": n_layer,
        "context_length": 128000,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": [n_head_kv if i in attn_layers else 0 for i in range(n_layer)],
        "rope.freq_base": 1000000.0,
        "vocab_size": n_vocab,
        "shortconv.l_cache": l_cache,
        "attention.layer_norm_rms_epsilon": 1e-5,
        "expert_count": n_expert or None,
        "expert_used_count": n_expert_used or None,
        "leading_dense_block_count": n_dense_lead if n_expert else None,
        "expert_feed_forward_length": n_ff_exp or None,
        "expert_gating_func": 2 if n_expert else None,  # sigmoid (the converter's LFM2-MoE value)
    }
    return _shape(name, title, arch, source, n_vocab, kv, t, specials={"bos": 1, "eos": 7, "pad": 0}, add_bos=True)


def lfm2_350m() -> Shape:
    """LFM2-350M: 16 blocks, attention at 2, 5, 8, 10, 12, 14; block_ff_dim 6656 auto-adjusted by the converter
    (2/3, rounded up to block_multiple_of 256) to 4608."""
    return _lfm2("lfm2-350m", "LFM2-350M Q4_K_M", "LiquidAI/LFM2-350M", arch="lfm2", n_layer=16, n_embd=1024,
                 n_ff=4608, n_head=16, n_head_kv=8, attn_layers=(2, 5, 8, 10, 12, 14), n_vocab=65536)


def lfm2_8b_a1b() -> Shape:
    """LFM2-8B-A1B: 24 blocks, attention at 2, 6, 10, 14, 18, 21; two dense blocks (intermediate 7168), then 32
    experts of 1792 (4 used)."""
    return _lfm2("lfm2-8b-a1b", "LFM2-8B-A1B Q4_K_M", "LiquidAI/LFM2-8B-A1B", arch="lfm2moe", n_layer=24,
                 n_embd=2048, n_ff=7168, n_head=32, n_head_kv=8, attn_layers=(2, 6, 10, 14, 18, 21), n_vocab=65536,
                 n_expert=32, n_expert_used=4, n_ff_exp=1792, n_dense_lead=2)


SHAPES: dict[str, Callable[[], Shape]] = {
    "llama-3.1-8b": llama_3_1_8b,
    "llama-3.2-1b": llama_3_2_1b,
    "llama-2-7b": llama_2_7b,
    "llama-3.1-70b": llama_3_1_70b,
    "mistral-7b": mistral_7b,
    "mixtral-8x7b": mixtral_8x7b,
    "qwen2.5-0.5b": qwen2_5_0_5b,
    "qwen2.5-7b": qwen2_5_7b,
    "qwen2.5-14b": qwen2_5_14b,
    "qwen2.5-32b": qwen2_5_32b,
    "deepseek-r1-14b": deepseek_r1_14b,
    "qwen3-8b": qwen3_8b,
    "qwen3-30b-a3b": qwen3_30b_a3b,
    "gemma-2-9b": gemma_2_9b,
    "gemma-3-4b": gemma_3_4b,
    "gemma-3-12b": gemma_3_12b,
    "gemma-3-27b": gemma_3_27b,
    "phi-3-mini": phi_3_mini,
    "deepseek-v2-lite": deepseek_v2_lite,
    "gpt-oss-20b": gpt_oss_20b,
    "command-r7b": command_r7b,
    "lfm2-350m": lfm2_350m,
    "lfm2-8b-a1b": lfm2_8b_a1b,
    "deepseek-r1-1.5b": deepseek_r1_1_5b,
    "deepseek-r1-7b": deepseek_r1_7b,
    "deepseek-r1-32b": deepseek_r1_32b,
    "deepseek-r1-70b": deepseek_r1_70b,
    "mixtral-8x7b-q4_0": mixtral_8x7b_q4_0,
    "gpt-oss-20b-ollama": gpt_oss_20b_ollama,
    "gpt-oss-120b-ollama": gpt_oss_120b_ollama,
}


def get_shape(name: str) -> Shape:
    """Build the catalog entry `name`; an unknown name raises ValueError listing the known ones."""
    builder = SHAPES.get(name)
    if builder is None:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(sorted(SHAPES))}")
    return builder()


# --------------------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------------------

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


def _add_metadata(writer: Any, gguf: Any, key: str, value: Any) -> None:
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
            _add_metadata(writer, gguf, key, value)
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


def header_view(shape: Shape, path: str = ""):
    """The GGUFFile a written shape file would read back as (tensor offsets aligned to 32), without any file:
    enough for ModelSpec and the memory model, e.g. to plan a model before it is downloaded."""
    from .gguf import GGUFFile, TensorInfo

    tensors, offset = [], 0
    for t in shape.tensors:
        tensors.append(TensorInfo(t.name, t.shape, t.ggml_type, offset, t.nbytes))
        offset += (t.nbytes + 31) // 32 * 32
    meta = dict(shape.metadata)
    meta.setdefault(f"{shape.arch}.vocab_size", shape.n_vocab)
    return GGUFFile([path or f"shape:{shape.name}"], 3, "<", meta, tensors, 32, [0], [offset])
