"""The ggml type llama-quantize gives each tensor of a model: llama-quant.cpp's policy for Q4_K_M (and the other
quantizations the shipped catalog uses), as pure code over tensor names and shapes.

Types follow `llama-quantize ... Q4_K_M` (src/llama-quant.cpp, `llama_tensor_get_type`): the default Q4_K;
attn_v-like tensors (attn_v, attn_qkv, attn_kv_b) and ffn_down Q6_K only on the layers `use_more_bits` picks (the
first and last eighth, every third between); the output, or the token embedding when it doubles as the output, Q6_K;
8-expert models keep attn_v/attn_k in Q8_0 and attn_output in Q5_K; norms, routers (`ffn_gate_inp`), 1-D tensors
(`attn_sinks`, `rope_freqs`), biases and the names llama-quant never quantizes F32. A type whose block does not divide
the row falls back as llama-quant does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, else F16). gpt-oss follows its
published MXFP4_MOE files (experts MXFP4, every other weight Q8_0), and Ollama's own gpt-oss blobs keep every
non-expert weight BF16.
"""

from __future__ import annotations

from typing import Any

from .gguf.ggml_types import GGML_QUANT_SIZES, GGMLType

F32 = int(GGMLType.F32)
F16 = int(GGMLType.F16)
Q8_0 = int(GGMLType.Q8_0)
Q4_K = int(GGMLType.Q4_K)
Q5_K = int(GGMLType.Q5_K)
Q6_K = int(GGMLType.Q6_K)
MXFP4 = int(GGMLType.MXFP4)

FTYPE_MOSTLY_Q4_K_M = 15  # llama_ftype, general.file_type of a Q4_K_M file
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
_VISION = ("v.", "mm.")  # vision-tower tensors an Ollama blob carries beside the text model: kept F16 (1-D F32)
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
    n_wv = sum(1 for n, _ in names_shapes
               if _category(n) in ("attn_qkv", "attn_v", "attn_kv_b") and not n.startswith(_VISION))
    i_wv = i_down = 0
    out = []
    for name, shape in names_shapes:
        if name.startswith(_VISION):  # a vision tower inside the file (an Ollama blob): not llama-quantize's
            out.append(F32 if len(shape) < 2 else F16)
            continue
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


# Ollama's own Q4_K_M (`ollama create --quantize q4_K_M`, the library's blobs of its new-engine models): its
# server/quantization.go (github.com/ollama/ollama, newType and getTensorNewType) ports llama_tensor_get_type with
# differences: vision tensors (v.*, mm.*) stay in their converted type (F16 here, 1-D F32); token_embd is Q4_K
# unless it doubles as the output; MLA tensors (attn_k_b, attn_v_b, attn_kv_a_mqa, attn_q_a, attn_q_b) Q8_0;
# attn_qkv Q5_K; ffn_down counted over every ffn_down* tensor against the number of blk.* layers; qwen3next/qwen35/
# qwen35moe take fixed types per name (attention and DeltaNet projections Q4_K, attn_v and the experts' down Q6_K);
# per_layer_token_embd stays as converted (F16 here)
FTYPE_OLLAMA_Q4_K_M = -15
_OLLAMA_QWEN_LINEAR = {"attn_q": Q4_K, "attn_k": Q4_K, "attn_v": Q6_K, "attn_output": Q4_K, "attn_qkv": Q4_K,
                       "attn_gate": Q4_K, "ssm_ba": Q4_K, "ssm_beta": Q4_K, "ssm_alpha": Q4_K, "ssm_out": Q4_K,
                       "ffn_down_exps": Q6_K, "ffn_down_shexp": Q6_K, "ffn_gate_exps": Q4_K, "ffn_gate_shexp": Q4_K,
                       "ffn_up_exps": Q4_K, "ffn_up_shexp": Q4_K}
_OLLAMA_KEEP = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight",
                "shortconv.conv.weight", "time_mix_first.weight", "time_mix_w1.weight", "time_mix_w2.weight",
                "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
                "attn_rel_b.weight")


def ollama_types(names_shapes: list[tuple[str, tuple[int, ...]]], *, arch: str, n_expert: int) -> list[int]:
    """The ggml type Ollama's quantizer gives each tensor (in file order) of a model it quantizes to Q4_K_M from
    its converted F16/F32 tensors (server/quantization.go newType)."""
    names = [n for n, _ in names_shapes]
    has_output = "output.weight" in names
    n_attn_v = sum(1 for n in names if any(k in n for k in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")))
    n_ffn_down = len({n.split(".")[1] for n in names if n.startswith("blk.")})
    i_attn_v = i_ffn_down = 0
    out = []
    for name, shape in names_shapes:
        src = F32 if len(shape) < 2 else F16  # the converter's type: 1-D tensors F32, the rest F16
        if (not name.endswith("weight") or name.startswith("v.") or "mm." in name or len(shape) < 2
                or any(k in name for k in _OLLAMA_KEEP) or name in ("position_embd.weight", "token_types.weight")
                or "per_layer_token_embd.weight" in name):
            out.append(src)
            continue
        role = _role(name)
        if arch in ("qwen3next", "qwen35", "qwen35moe") and role in _OLLAMA_QWEN_LINEAR:
            out.append(_OLLAMA_QWEN_LINEAR[role])
            continue
        new = Q4_K
        if name == "output.weight" or (not has_output and name == "token_embd.weight"):
            new = Q8_0 if shape[0] % 256 else Q6_K
        elif "attn_v.weight" in name:
            if _use_more_bits(i_attn_v, n_attn_v):
                new = Q6_K
            if n_expert == 8:
                new = Q8_0
            i_attn_v += 1
        elif "attn_k.weight" in name:
            if n_expert == 8:
                new = Q8_0
        elif any(k in name for k in ("attn_k_b.weight", "attn_v_b.weight", "attn_kv_a_mqa.weight", "attn_q_a.weight",
                                     "attn_q_b.weight")):
            new = Q8_0
        elif "ffn_down" in name:
            if _use_more_bits(i_ffn_down, n_ffn_down):
                new = Q6_K
            i_ffn_down += 1
        elif "attn_output.weight" in name:
            if n_expert == 8:
                new = Q5_K
        elif "attn_qkv.weight" in name:
            new = Q5_K
        out.append(_fit(new, shape[0]))
    return out


# the quantizations a catalog entry may name (autoctx/data/catalog/*.toml `quantization`)
QUANTIZATIONS = {"Q4_K_M": FTYPE_MOSTLY_Q4_K_M, "Q4_0": FTYPE_MOSTLY_Q4_0, "MXFP4_MOE": FTYPE_MOSTLY_MXFP4_MOE,
                 "OLLAMA_MXFP4_BF16": FTYPE_OLLAMA_MXFP4_BF16, "OLLAMA_Q4_K_M": FTYPE_OLLAMA_Q4_K_M}


def model_types(names_shapes: list[tuple[str, tuple[int, ...]]], metadata: dict[str, Any],
                quantization: str = "Q4_K_M") -> list[int]:
    """quant_types for a model described by its GGUF metadata: the layer and expert counts from
    `<arch>.block_count`/`expert_count`, and llama-quant's LLM_TYPE_70B (a LLaMA of 80 layers with GQA)."""
    arch = metadata["general.architecture"]
    n_layer = int(metadata[f"{arch}.block_count"])
    n_head, n_head_kv = metadata.get(f"{arch}.attention.head_count"), metadata.get(f"{arch}.attention.head_count_kv")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}")
    if quantization == "OLLAMA_Q4_K_M":
        return ollama_types(names_shapes, arch=arch, n_expert=int(metadata.get(f"{arch}.expert_count") or 0))
    return quant_types(names_shapes, arch=arch, n_layer=n_layer,
                       n_expert=int(metadata.get(f"{arch}.expert_count") or 0), ftype=QUANTIZATIONS[quantization],
                       is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv)
