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
from .gguf import GGUFArray, GGUFFile, TensorInfo

# ---------------------------------------------------------------------------------------------------------------
# Per-architecture facts that are not in the GGUF (llama.cpp hard-codes them in src/models/<arch>.cpp).
#   swa:     "none" | "standard" (always, pattern from GGUF or the period) | "if_window" (only when the GGUF has a
#            sliding_window > 0, e.g. gemma3) | "chunked" (llama4) | "disabled" (phi3: key ignored)
#   period:  default sliding_window_pattern period; dense_first: pattern counts the full layer first
#   n_swa:   default window when the GGUF has none
#   recurrent: "none" | "all" (pure SSM/RWKV) | "head_kv0" (layers with 0 KV heads) | "interval" (qwen3next family)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchRule:
    swa: str = "none"
    period: int = 0
    dense_first: bool = False
    n_swa: int = 0
    recurrent: str = "none"
    kv_from_start: int = -1  # gemma3n: only the first N layers own a KV cache


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
}

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


def _per_layer(value: Any, n: int, key: str, default: int) -> tuple[int, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, GGUFArray):
        raise UnsupportedModel(f"{key}: per-layer array of {value.count} entries is too long")
    if isinstance(value, list):
        if len(value) != n:
            raise UnsupportedModel(f"{key}: per-layer array has {len(value)} entries for {n} layers")
        return tuple(int(v) for v in value)
    return (int(value),) * n


def _classify(name: str, n_layer: int) -> int:
    m = _BLK.match(name)
    if m:
        return int(m.group(1))
    if name.startswith(_OUTPUT_NAMES):
        return n_layer
    return -1


def spec_from_gguf(f: GGUFFile) -> ModelSpec:
    """Build a ModelSpec from a GGUF header. Raises UnsupportedModel for architectures llama.cpp rules are unknown."""
    arch = f.architecture
    if not arch:
        raise UnsupportedModel(f"{f.path}: no general.architecture key (not a model GGUF?)")
    rule = ARCH_RULES.get(arch)
    if rule is None:
        raise UnsupportedModel(f"{f.path}: architecture {arch!r} is not supported by autoctx yet")
    md = f.metadata

    def k(suffix: str, default: Any = None) -> Any:
        return md.get(f"{arch}.{suffix}", default)

    n_layer = int(k("block_count", 0))
    if n_layer <= 0 or n_layer > 4096:
        raise UnsupportedModel(f"{f.path}: bad {arch}.block_count {k('block_count')!r}")
    n_nextn = int(k("nextn_predict_layers", 0) or 0)
    n_embd = int(k("embedding_length", 0))
    n_head = _per_layer(k("attention.head_count"), n_layer, "head_count", 0)
    n_head_kv = _per_layer(k("attention.head_count_kv"), n_layer, "head_count_kv", -1)
    if n_head_kv[0] == -1:
        n_head_kv = n_head
    n_ff = _per_layer(k("feed_forward_length"), n_layer, "feed_forward_length", 0)

    tokens = md.get("tokenizer.ggml.tokens")
    n_vocab = int(k("vocab_size", 0) or 0) or (len(tokens) if tokens is not None else 0)
    emb = f.tensor("token_embd.weight")
    if not n_vocab and emb is not None and len(emb.shape) > 1:
        n_vocab = emb.shape[1]

    h0 = n_head[0]
    head_k = int(k("attention.key_length", n_embd // h0 if h0 else 0))
    head_v = int(k("attention.value_length", n_embd // h0 if h0 else 0))
    if not h0:
        head_k = head_v = 0
    head_k_swa = int(k("attention.key_length_swa", head_k))
    head_v_swa = int(k("attention.value_length_swa", head_v))

    # --- sliding window (load_swa_pattern, llama-model.cpp; set_swa_pattern, llama-hparams.cpp) ---
    window = k("attention.sliding_window")
    swa_type, n_swa = "none", 0
    is_swa = [False] * n_layer
    if rule.swa in ("standard", "chunked") or (rule.swa == "if_window" and window):
        swa_type = "chunked" if rule.swa == "chunked" else "standard"
        n_swa = int(window) if window else rule.n_swa
        if rule.swa == "chunked" and window == 0:
            swa_type, n_swa = "none", 0
        pattern = k("attention.sliding_window_pattern")
        if swa_type != "none":
            if isinstance(pattern, list):
                if len(pattern) < n_layer:
                    raise UnsupportedModel(f"{f.path}: sliding_window_pattern has {len(pattern)} entries")
                is_swa = [bool(v) for v in pattern[:n_layer]]
            else:
                period = int(pattern) if pattern is not None else rule.period
                main = n_layer - n_nextn
                for il in range(main):
                    if rule.dense_first:
                        is_swa[il] = period == 0 or il % period != 0
                    else:
                        is_swa[il] = period == 0 or il % period < period - 1
            if not any(is_swa):
                swa_type, n_swa = "none", 0

    # --- recurrent layers ---
    is_recr = [False] * n_layer
    if rule.recurrent == "all":
        is_recr = [True] * n_layer
    elif rule.recurrent == "head_kv0":
        is_recr = [n_head_kv[il] == 0 for il in range(n_layer)]
    elif rule.recurrent == "interval":
        arr = k("attention.recurrent_layers")
        if isinstance(arr, list):
            is_recr = [bool(v) for v in arr[:n_layer]]
        else:
            interval = int(k("full_attention_interval", 4))
            is_recr = [il < n_layer - n_nextn and (il + 1) % interval != 0 for il in range(n_layer)]
    n_embd_r = n_embd_s = 0
    if any(is_recr):
        wkv = int(k("wkv.head_size", 0) or 0)
        if wkv:
            n_embd_r = int(k("token_shift_count", 2)) * n_embd
            n_embd_s = n_embd * wkv
        else:
            d_conv = int(k("ssm.conv_kernel", 0) or 0)
            d_inner = int(k("ssm.inner_size", 0) or 0)
            d_state = int(k("ssm.state_size", 0) or 0)
            n_group = int(k("ssm.group_count", 0) or 0)
            n_embd_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
            n_embd_s = d_state * d_inner

    # --- which layers own KV cells (has_kv + the NextN filter, llama-model.cpp create_memory) ---
    kv_from_start = rule.kv_from_start
    if arch == "gemma4":
        kv_from_start = n_layer - int(k("attention.shared_kv_layers", 0) or 0)
    has_kv = []
    for il in range(n_layer):
        ok = not is_recr[il] and (kv_from_start < 0 or il < kv_from_start)
        if n_nextn and il >= n_layer - n_nextn:
            ok = False
        has_kv.append(ok)

    is_mla = k("attention.key_length_mla") is not None and k("attention.value_length_mla") is not None
    n_expert = int(k("expert_count", 0) or 0)
    used = k("expert_used_count", 0) or 0
    n_expert_used = max(used) if isinstance(used, list) else int(used)
    ff_exp = k("expert_feed_forward_length")
    n_ff_exp = (max(ff_exp) if isinstance(ff_exp, list) else int(ff_exp)) if ff_exp else (max(n_ff) if n_expert else 0)
    n_dense_lead = int(k("leading_dense_block_count", 0) or 0) if n_expert else n_layer

    tensor_layer = tuple(_classify(t.name, n_layer) for t in f.tensors)
    tied = f.tensor("output.weight") is None
    n_ctx_train = int(k("context_length", 0) or 0)
    if n_ctx_train <= 0:
        raise UnsupportedModel(f"{f.path}: missing {arch}.context_length")

    return ModelSpec(
        path=f.path, architecture=arch, name=str(md.get("general.name", "")), n_layer=n_layer,
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
