"""ModelSpec: what the memory model needs to know about a model, read from its GGUF header.

The hyperparameter rules mirror llama.cpp's loader (src/llama-model.cpp `load_hparams`, the per-architecture
`load_arch_hparams` in src/models/*.cpp, and src/llama-hparams.cpp): per-layer head counts, key/value lengths and
their `_swa` variants, which layers use a sliding window, which layers keep a KV cache, MLA, recurrent state.
Everything here is pure data; the allocation arithmetic lives in `autoctx.memory`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import UnsupportedModel
from .gguf import GGUFArray, GGUFFile, GGUFString, TensorInfo, clip
from .gguf.ggml_types import GGUFValueType

# ---------------------------------------------------------------------------------------------------------------
# Per-architecture facts that are not in the GGUF (llama.cpp hard-codes them in src/models/<arch>.cpp).
#   swa:     "none" | "standard" (always, pattern from GGUF or the period) | "if_window" (only when the GGUF has a
#            sliding_window > 0, e.g. gemma3) | "chunked" (llama4) | "disabled" (phi3: key ignored)
#   period:  default sliding_window_pattern period; dense_first: pattern counts the full layer first
#   n_swa:   default window when the GGUF has none
#   recurrent: "none" | "all" (pure SSM/RWKV) | "head_kv0" (layers with 0 KV heads) | "interval" (qwen3next family)
#   shortconv: recurrent layers are LFM2 short convolutions: their state is n_embd x (shortconv.l_cache - 1), no SSM
#   swa "attn_if_window": every attention layer slides when the GGUF has a sliding_window > 0 (lfm2)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchRule:
    swa: str = "none"
    period: int = 0
    dense_first: bool = False
    n_swa: int = 0
    recurrent: str = "none"
    kv_from_start: int = -1  # gemma3n: only the first N layers own a KV cache
    shortconv: bool = False


_DENSE = ArchRule()
ARCH_RULES: dict[str, ArchRule] = {
    **{a: _DENSE for a in (
        "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "qwen2vl", "qwen3vl", "qwen3vlmoe", "mistral3",
        "deepseek", "deepseek2", "command-r", "starcoder2", "granite", "granitemoe", "olmo", "olmoe", "internlm2",
        "stablelm", "gemma", "falcon", "gpt2", "gptneox", "phi2", "phimoe", "minicpm", "minicpm3", "baichuan",
        "chatglm", "glm4", "glm4moe", "exaone", "smollm3", "seed_oss", "ernie4_5", "ernie4_5-moe", "hunyuan-moe",
        "hunyuan-dense", "dots1", "arcee", "apertus", "bitnet", "nemotron", "xverse", "orion", "dbrx", "grok",
        "mpt", "starcoder", "refact", "bloom", "codeshell", "plamo", "deci", "jais", "arctic", "minimax-m2",
        "mistral4", "llama-embed",
    )},
    "gemma2": ArchRule(swa="standard", period=2, n_swa=4096),
    "gemma3": ArchRule(swa="if_window", period=6),
    "gemma3n": ArchRule(swa="standard", period=5, kv_from_start=20),
    "gemma4": ArchRule(swa="standard"),  # pattern array is mandatory in the GGUF
    "gpt-oss": ArchRule(swa="standard", period=2),
    "cohere2": ArchRule(swa="standard", period=4),
    "cohere2moe": ArchRule(swa="standard", period=4, dense_first=True),
    "exaone4": ArchRule(swa="if_window", period=4, n_swa=4096),
    "exaone-moe": ArchRule(swa="standard", period=4, n_swa=128),
    "olmo2": ArchRule(swa="if_window", period=4),
    "llama4": ArchRule(swa="chunked", period=4, n_swa=8192),
    "phi3": ArchRule(swa="disabled"),
    "mamba": ArchRule(recurrent="all"),
    "mamba2": ArchRule(recurrent="all"),
    "rwkv6": ArchRule(recurrent="all"),
    "rwkv7": ArchRule(recurrent="all"),
    "jamba": ArchRule(recurrent="head_kv0"),
    "granitehybrid": ArchRule(recurrent="head_kv0"),
    "falcon-h1": ArchRule(recurrent="head_kv0"),
    "nemotron_h": ArchRule(recurrent="head_kv0"),
    "qwen3next": ArchRule(recurrent="interval"),
    "qwen35": ArchRule(recurrent="interval"),
    "qwen35moe": ArchRule(recurrent="interval"),
    # src/models/lfm2.cpp, lfm2moe.cpp: conv layers are the ones with 0 KV heads (llama_memory_hybrid)
    "lfm2": ArchRule(swa="attn_if_window", recurrent="head_kv0", shortconv=True),
    "lfm2moe": ArchRule(recurrent="head_kv0", shortconv=True),
}

# Every architecture name of the pinned llama.cpp (src/llama-arch.cpp LLM_ARCH_NAMES, "(unknown)" left out), in its
# order. tests/test_arch_coverage.py compares it with the cached source; scripts/gen_arch_table.py prints the README's
# table from it.
LLAMA_ARCHS: tuple[str, ...] = (
    "clip", "llama", "llama4", "deci", "falcon", "grok", "gpt2", "gptj", "gptneox", "mpt", "baichuan",
    "starcoder", "refact", "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
    "jina-bert-v3", "eurobert", "bloom", "stablelm", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3",
    "qwen3moe", "qwen3next", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "clef", "qwen4exp", "phi2", "phi3",
    "phimoe", "plamo", "plamo2", "plamo3", "codeshell", "orion", "internlm2", "minicpm", "minicpm3", "gemma",
    "gemma2", "gemma3", "gemma3n", "gemma4", "gemma4-assistant", "gemma-embedding", "starcoder2", "mamba",
    "mamba2", "maple", "jamba", "falcon-h1", "xverse", "command-r", "cohere2", "cohere2moe", "dbrx", "olmo",
    "olmo2", "olmoe", "muse-glimmer", "openelm", "arctic", "deepseek", "deepseek2", "deepseek2-ocr",
    "deepseek32", "deepseek4", "chatglm", "glm4", "glm4moe", "glm-dsa", "bitnet", "t5", "t5encoder", "jais",
    "jais2", "nemotron", "nemotron_h", "nemotron_h_moe", "exaone", "exaone4", "exaone-moe", "rwkv6",
    "rwkv6qwen2", "rwkv7", "arwkv7", "granite", "granitemoe", "granitehybrid", "graniteswitch", "granite_swa",
    "chameleon", "wavtokenizer-dec", "plm", "bailingmoe", "bailingmoe2", "bailingmoe3", "dots1", "dots3note",
    "arcee", "afmoe", "laguna", "ernie4_5", "ernie4_5-moe", "hunyuan-moe", "hunyuan-dense", "hunyuan_vl",
    "hy_v3", "hy_v4", "smollm3", "gpt-oss", "lfm2", "lfm2moe", "dream", "smallthinker", "llada", "llada-moe",
    "seed_oss", "grovemoe", "apertus", "minimax-01", "hrm_text", "minimax-m2", "minimax-m3", "cogvlm", "rnd1",
    "pangu-embedded", "mistral3", "eagle3", "dflash", "mistral4", "paddleocr", "mimo2", "step35", "spark2_5",
    "llama-embed", "maincoder", "kimi-linear", "kimi-k3", "glm5-next", "talkie", "mellum", "nanbeige",
    "qwen3tts", "pockettts",
)

# Architectures that are no decoder for text generation (autoctx plans llama-server's generation memory): the reason
# is the one line a refusal gives. llama-model.cpp create_memory gives the encoders, embedders, diffusion models and
# classifiers no memory at all.
_ENCODER = "an encoder (embeddings/reranking, no KV cache)"
_DIFFUSION = "a diffusion model (no KV cache; llama-diffusion-cli, not llama-server generation)"
_TTS = "text-to-speech"
OUT_OF_SCOPE: dict[str, str] = {
    "clip": "a vision/audio tower (mmproj; llama-quantize's stand-in architecture)",
    **{a: _ENCODER for a in ("bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
                             "jina-bert-v3", "eurobert", "gemma-embedding", "t5encoder")},
    "t5": "an encoder-decoder (the encoder's output is no KV cache autoctx models)",
    **{a: _DIFFUSION for a in ("dream", "llada", "llada-moe", "rnd1")},
    "clef": "a decision-head classifier on Qwen3.5 (no memory)",
    "wavtokenizer-dec": f"{_TTS} (an audio codec decoder)",
    "qwen3tts": _TTS,
    "pockettts": _TTS,
    "gptj": "not loadable by the pinned build (no loader for it in src/llama-model.cpp)",
}


def arch_status(arch: str) -> tuple[str, str]:
    """("modelled" | "not modelled" | "out of scope" | "unknown", why) for an architecture name."""
    if arch in ARCH_RULES:
        return "modelled", ""
    if arch in OUT_OF_SCOPE:
        return "out of scope", OUT_OF_SCOPE[arch]
    if arch in LLAMA_ARCHS:
        return "not modelled", "not modelled yet"
    return "unknown", "not an architecture of the pinned llama.cpp"


def refusal(arch: str) -> str:
    """The one line autoctx gives for an architecture it does not model."""
    status, why = arch_status(arch)
    name = clip(arch)
    if status == "out of scope":
        return f"architecture {name} is out of scope: {why}; autoctx plans decoder text generation"
    if status == "not modelled":
        return f"architecture {name} is not modelled yet"
    return f"architecture {name} is not supported: {why}"

_BLK = re.compile(r"^blk\.(\d+)\.")
_OUTPUT_NAMES = ("output.", "output_norm.", "cls.", "cls_out.", "cls_norm.")


@dataclass(frozen=True)
class ModelSpec:
    """A model as llama.cpp sees it for memory purposes. Per-layer tuples have one entry per block (n_layer)."""

    path: str
    architecture: str
    name: str
    n_layer: int  # block_count: all blocks, NextN/MTP included (llama.cpp's n_layer_all)
    n_layer_nextn: int  # trailing NextN/MTP blocks (no KV in the main context, weights skipped)
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    n_ff: tuple[int, ...]
    head_k: int  # key_length (full-attention layers)
    head_v: int
    head_k_swa: int
    head_v_swa: int
    swa_type: str  # "none" | "standard" | "chunked"
    n_swa: int
    is_swa: tuple[bool, ...]
    has_kv: tuple[bool, ...]  # layer owns KV cells in the main context
    is_recurrent: tuple[bool, ...]
    n_embd_r: int  # recurrent conv/shift state per layer (f32 elements per sequence row)
    n_embd_s: int  # recurrent SSM/WKV state per layer
    is_mla: bool
    n_expert: int
    n_expert_used: int
    n_ff_exp: int  # width of one routed expert (expert_feed_forward_length, else feed_forward_length)
    n_layer_dense_lead: int  # leading dense (non-MoE) blocks, e.g. DeepSeek's first layer
    tied_output: bool  # no output.weight: token_embd is duplicated onto the output device
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    tensor_layer: tuple[int, ...] = field(repr=False)  # per tensor: -1 input, 0..n_layer-1 block, n_layer output
    data_offsets: tuple[int, ...] = field(repr=False, default=(0,))
    file_sizes: tuple[int, ...] = field(repr=False, default=(0,))
    source: str = "gguf"  # where the facts came from (gguf | profile | ollama-show)

    # --- derived widths (src/llama-hparams.cpp) ---
    def n_embd_head_k(self, il: int) -> int:
        return self.head_k_swa if self.is_swa[il] else self.head_k

    def n_embd_head_v(self, il: int) -> int:
        return self.head_v_swa if self.is_swa[il] else self.head_v

    def n_embd_k_gqa(self, il: int) -> int:
        return self.n_embd_head_k(il) * self.n_head_kv[il]

    def n_embd_v_gqa(self, il: int) -> int:
        return self.n_embd_head_v(il) * self.n_head_kv[il]

    def n_embd_v_gqa_max(self) -> int:
        return max([self.n_embd_v_gqa(il) for il in range(self.n_layer)] + [self.head_v * self.n_head_kv[0]])

    @property
    def n_layer_main(self) -> int:
        return self.n_layer - self.n_layer_nextn

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def layer_bytes(self) -> list[int]:
        out = [0] * (self.n_layer + 2)  # [input, blk0..blkN-1, output]
        for t, li in zip(self.tensors, self.tensor_layer):
            out[li + 1] += t.nbytes
        return out

    def summary(self) -> dict[str, Any]:
        kv_layers = [il for il in range(self.n_layer) if self.has_kv[il]]
        return {
            "path": self.path,
            "architecture": self.architecture,
            "name": self.name,
            "n_ctx_train": self.n_ctx_train,
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_vocab": self.n_vocab,
            "n_head": self.n_head[0] if len(set(self.n_head)) == 1 else list(self.n_head),
            "n_head_kv": self.n_head_kv[0] if len(set(self.n_head_kv)) == 1 else list(self.n_head_kv),
            "head_k": self.head_k,
            "head_v": self.head_v,
            "swa_type": self.swa_type,
            "n_swa": self.n_swa,
            "swa_layers": sum(1 for il in kv_layers if self.is_swa[il]),
            "kv_layers": len(kv_layers),
            "recurrent_layers": sum(self.is_recurrent),
            "mla": self.is_mla,
            "n_expert": self.n_expert,
            "n_expert_used": self.n_expert_used,
            "n_ff_exp": self.n_ff_exp,
            "tied_output": self.tied_output,
            "weight_bytes": self.weight_bytes,
        }


# llama.cpp's own limits (src/llama-hparams.h): load_hparams asserts 0 < block_count <= LLAMA_MAX_LAYERS and
# expert_count <= LLAMA_MAX_EXPERTS. Hyperparameters are uint32 there; positions (llama_pos) are int32, so no
# context can exceed 2**31 tokens.
MAX_LAYERS = 512
MAX_EXPERTS = 1024
MAX_CTX = 2**31
U32 = 2**32 - 1


def _kind(value: Any) -> str:
    """What a metadata value is, in GGUF words, for a message."""
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, (str, GGUFString)):
        return "a string"
    if isinstance(value, (list, GGUFArray)):
        return f"an array of {len(value)} entr{'y' if len(value) == 1 else 'ies'}"
    return type(value).__name__


class _Keys:
    """Typed, range-checked reads of one model's metadata; every refusal names the key and the file."""

    def __init__(self, f: GGUFFile, arch: str):
        self.path, self.arch, self.md = f.path, arch, f.metadata

    def bad(self, key: str, value: Any, why: str) -> UnsupportedModel:
        return UnsupportedModel(f"{self.path}: bad {key} {clip(value)}: {why}")

    def raw(self, suffix: str) -> Any:
        return self.md.get(f"{self.arch}.{suffix}")

    def check_int(self, key: str, value: Any, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, value, f"an integer is required, not {_kind(value)}")
        if not lo <= value <= hi:
            raise self.bad(key, value, f"must be {lo}..{hi}")
        return value

    def num(self, suffix: str, default: int, lo: int = 0, hi: int = U32) -> int:
        """An integer key of this architecture; `default` when absent."""
        value = self.raw(suffix)
        return default if value is None else self.check_int(f"{self.arch}.{suffix}", value, lo, hi)

    def per_layer(self, suffix: str, n: int, default: int, lo: int = 0, hi: int = U32) -> tuple[int, ...]:
        """One integer, or an array of exactly one per layer (llama_model_loader::get_key_or_arr)."""
        key, value = f"{self.arch}.{suffix}", self.raw(suffix)
        if value is None:
            return (default,) * n
        if isinstance(value, (list, GGUFArray)):
            if len(value) != n:
                raise self.bad(key, value, f"{_kind(value)} for {n} layers")
            # array elements may be bools (get_arr accepts bool arrays for integer fields)
            return tuple(self.check_int(key, int(v) if isinstance(v, bool) else v, lo, hi) for v in value)
        return (self.check_int(key, value, lo, hi),) * n


def _classify(name: str, n_layer: int, arch: str = "") -> int:
    m = _BLK.match(name)
    if m:
        return int(m.group(1))
    if name.startswith(_OUTPUT_NAMES) or (arch in ("lfm2", "lfm2moe") and name.startswith("token_embd_norm.")):
        return n_layer  # LFM2's output norm is named token_embd_norm (LLM_TENSOR_OUTPUT_NORM_LFM2, an output tensor)
    return -1


def _text(value: Any, limit: int = 120) -> str:
    """A string value (a name) made one short line, or '' when the key holds something else."""
    if not isinstance(value, str):
        return ""
    text = "".join(c if c.isprintable() else " " for c in value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def spec_from_gguf(f: GGUFFile) -> ModelSpec:
    """Build a ModelSpec from a GGUF header. Raises UnsupportedModel for architectures llama.cpp rules are unknown
    and for hyperparameters llama.cpp would refuse (or that make no model): wrong types, out-of-range values,
    contradicting keys. Every message names the key and the file."""
    md = f.metadata
    arch = md.get("general.architecture", "")
    if not isinstance(arch, str):
        raise UnsupportedModel(f"{f.path}: bad general.architecture {clip(arch)}: a string is required, not "
                               f"{_kind(arch)}")
    if not arch:
        raise UnsupportedModel(f"{f.path}: no general.architecture key (not a model GGUF?)")
    rule = ARCH_RULES.get(arch)
    if rule is None:
        raise UnsupportedModel(f"{f.path}: {refusal(arch)}")
    keys = _Keys(f, arch)

    def k(suffix: str, default: Any = None) -> Any:
        return md.get(f"{arch}.{suffix}", default)

    if k("block_count") is None:
        raise UnsupportedModel(f"{f.path}: missing {arch}.block_count")
    n_layer = keys.num("block_count", 0, 1, MAX_LAYERS)
    n_nextn = keys.num("nextn_predict_layers", 0, 0, n_layer)
    n_embd = keys.num("embedding_length", 0)
    if n_embd <= 0:
        raise UnsupportedModel(f"{f.path}: missing or zero {arch}.embedding_length")
    n_head = keys.per_layer("attention.head_count", n_layer, 0)
    n_head_kv = keys.per_layer("attention.head_count_kv", n_layer, 0) if k("attention.head_count_kv") is not None \
        else n_head
    n_ff = keys.per_layer("feed_forward_length", n_layer, 0)

    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, (str, GGUFString)) for t in tokens)
                                   or isinstance(tokens, GGUFArray) and tokens.item_type == GGUFValueType.STRING):
        raise keys.bad("tokenizer.ggml.tokens", tokens, "an array of strings is required")
    n_vocab = keys.num("vocab_size", 0) or (len(tokens) if tokens is not None else 0)
    emb = f.tensor("token_embd.weight")
    if not n_vocab and emb is not None and len(emb.shape) > 1:
        n_vocab = emb.shape[1]

    h0 = n_head[0]
    head_k = keys.num("attention.key_length", n_embd // h0 if h0 else 0)
    head_v = keys.num("attention.value_length", n_embd // h0 if h0 else 0)
    if not h0:
        head_k = head_v = 0
    head_k_swa = keys.num("attention.key_length_swa", head_k)
    head_v_swa = keys.num("attention.value_length_swa", head_v)

    # --- sliding window (load_swa_pattern, llama-model.cpp; set_swa_pattern, llama-hparams.cpp) ---
    window = keys.num("attention.sliding_window", 0) if k("attention.sliding_window") is not None else None
    swa_type, n_swa = "none", 0
    is_swa = [False] * n_layer
    if rule.swa == "attn_if_window" and window:
        # lfm2: with a window, every attention layer (the non-conv ones) slides
        swa_type, n_swa = "standard", window
        is_swa = [n_head_kv[il] > 0 for il in range(n_layer)]
    elif rule.swa in ("standard", "chunked") or (rule.swa == "if_window" and window):
        swa_type = "chunked" if rule.swa == "chunked" else "standard"
        n_swa = window if window else rule.n_swa
        if rule.swa == "chunked" and window == 0:
            swa_type, n_swa = "none", 0
        pattern = k("attention.sliding_window_pattern")
        if swa_type != "none":
            key = f"{arch}.attention.sliding_window_pattern"
            if isinstance(pattern, (list, GGUFArray)):
                if not n_layer <= len(pattern) <= MAX_LAYERS:
                    raise keys.bad(key, pattern, f"{_kind(pattern)} for {n_layer} layers")
                is_swa = [bool(keys.check_int(key, int(v) if isinstance(v, bool) else v, 0, U32))
                          for v in pattern[:n_layer]]
            else:
                period = keys.num("attention.sliding_window_pattern", rule.period)
                main = n_layer - n_nextn
                for il in range(main):
                    if rule.dense_first:
                        is_swa[il] = period == 0 or il % period != 0
                    else:
                        is_swa[il] = period == 0 or il % period < period - 1
            if not any(is_swa):
                swa_type, n_swa = "none", 0
            elif n_swa <= 0:
                raise UnsupportedModel(f"{f.path}: missing or zero {arch}.attention.sliding_window for a "
                                       "sliding-window model")

    # --- recurrent layers ---
    is_recr = [False] * n_layer
    if rule.recurrent == "all":
        is_recr = [True] * n_layer
    elif rule.recurrent == "head_kv0":
        is_recr = [n_head_kv[il] == 0 for il in range(n_layer)]
    elif rule.recurrent == "interval":
        if k("attention.recurrent_layers") is not None:
            is_recr = [bool(v) for v in keys.per_layer("attention.recurrent_layers", n_layer, 0)]
        else:
            interval = keys.num("full_attention_interval", 4, 1)
            is_recr = [il < n_layer - n_nextn and (il + 1) % interval != 0 for il in range(n_layer)]
    n_embd_r = n_embd_s = 0
    if any(is_recr):
        wkv = keys.num("wkv.head_size", 0)
        if rule.shortconv:
            # llama-hparams.cpp n_embd_r: n_embd x (l_cache - 1) for LFM2; no SSM state (n_embd_s 0)
            if k("shortconv.l_cache") is None:
                raise UnsupportedModel(f"{f.path}: missing {arch}.shortconv.l_cache")
            n_embd_r = n_embd * (keys.num("shortconv.l_cache", 0, 1) - 1)
        elif wkv:
            n_embd_r = keys.num("token_shift_count", 2) * n_embd
            n_embd_s = n_embd * wkv
        else:
            d_conv = keys.num("ssm.conv_kernel", 0)
            d_inner = keys.num("ssm.inner_size", 0)
            d_state = keys.num("ssm.state_size", 0)
            n_group = keys.num("ssm.group_count", 0)
            n_embd_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
            n_embd_s = d_state * d_inner

    # --- which layers own KV cells (has_kv + the NextN filter, llama-model.cpp create_memory) ---
    kv_from_start = rule.kv_from_start
    if arch == "gemma4":
        kv_from_start = n_layer - keys.num("attention.shared_kv_layers", 0, 0, n_layer)
    has_kv = []
    for il in range(n_layer):
        ok = not is_recr[il] and (kv_from_start < 0 or il < kv_from_start)
        if n_nextn and il >= n_layer - n_nextn:
            ok = False
        has_kv.append(ok)

    # --- attention that makes sense: the graph broadcasts K/V heads over query heads (ggml_mul_mat needs
    # n_head % n_head_kv == 0); a layer with KV heads needs key and value widths. n_head_kv 0 on a KV layer is
    # an attention-free layer (deci), fine. ---
    if rule.recurrent != "all" and not any(n_head):
        raise UnsupportedModel(f"{f.path}: missing or zero {arch}.attention.head_count for an attention model")
    for il in range(n_layer):
        hkv, h = n_head_kv[il], n_head[il]
        if not has_kv[il] or not hkv:
            continue
        if hkv > h or h % hkv:
            raise UnsupportedModel(f"{f.path}: bad {arch}.attention.head_count_kv {hkv} in layer {il}: "
                                   f"must divide head_count {h}")
        swa = "_swa" if is_swa[il] else ""
        for what, width in (("key_length", head_k_swa if swa else head_k),
                            ("value_length", head_v_swa if swa else head_v)):
            if width <= 0:
                raise UnsupportedModel(f"{f.path}: bad {arch}.attention.{what}{swa} 0: layer {il} has "
                                       f"{hkv} KV heads")

    is_mla = k("attention.key_length_mla") is not None and k("attention.value_length_mla") is not None
    if is_mla:
        keys.num("attention.key_length_mla", 0)
        keys.num("attention.value_length_mla", 0)
    n_expert = keys.num("expert_count", 0, 0, MAX_EXPERTS)
    n_expert_used = max(keys.per_layer("expert_used_count", n_layer, 0))
    if n_expert_used > n_expert or (n_expert and not n_expert_used):  # load_hparams asserts these
        why = f"must be 1..{n_expert} (expert_count)" if n_expert else "the model has no experts (expert_count 0)"
        raise UnsupportedModel(f"{f.path}: bad {arch}.expert_used_count {n_expert_used}: {why}")
    ff_exp = k("expert_feed_forward_length")
    n_ff_exp = max(keys.per_layer("expert_feed_forward_length", n_layer, 0)) if ff_exp \
        else (max(n_ff) if n_expert else 0)
    n_dense_lead = keys.num("leading_dense_block_count", 0, 0, n_layer) if n_expert else n_layer

    tensor_layer = tuple(_classify(t.name, n_layer, arch) for t in f.tensors)
    beyond = next((t.name for t, li in zip(f.tensors, tensor_layer) if li >= n_layer and _BLK.match(t.name)), None)
    if beyond is not None:
        raise UnsupportedModel(f"{f.path}: tensor {clip(beyond)} is past the last block ({arch}.block_count is "
                               f"{n_layer})")
    tied = f.tensor("output.weight") is None
    if k("context_length") is None:
        raise UnsupportedModel(f"{f.path}: missing {arch}.context_length")
    n_ctx_train = keys.num("context_length", 0, 1, MAX_CTX)

    return ModelSpec(
        path=f.path, architecture=arch, name=_text(md.get("general.name", "")), n_layer=n_layer,
        n_layer_nextn=n_nextn, n_ctx_train=n_ctx_train, n_embd=n_embd, n_vocab=n_vocab, n_head=n_head,
        n_head_kv=n_head_kv, n_ff=n_ff, head_k=head_k, head_v=head_v, head_k_swa=head_k_swa, head_v_swa=head_v_swa,
        swa_type=swa_type, n_swa=n_swa, is_swa=tuple(is_swa), has_kv=tuple(has_kv), is_recurrent=tuple(is_recr),
        n_embd_r=n_embd_r, n_embd_s=n_embd_s, is_mla=is_mla, n_expert=n_expert, n_expert_used=n_expert_used,
        n_ff_exp=n_ff_exp, n_layer_dense_lead=n_dense_lead,
        tied_output=tied, tensors=tuple(f.tensors), tensor_layer=tensor_layer,
        data_offsets=tuple(f.data_offsets), file_sizes=tuple(f.file_sizes),
    )


def load_spec(path: str) -> ModelSpec:
    """Read a GGUF file (or the first part of a split one) and build its ModelSpec."""
    from .gguf import read_gguf

    return spec_from_gguf(read_gguf(path))
