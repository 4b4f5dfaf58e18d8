"""ModelSpec from GGUF headers: the per-architecture facts llama.cpp hard-codes, read the way it reads them."""

from __future__ import annotations

import gguf
import pytest

from autoctx.errors import UnsupportedModel
from autoctx.model import load_spec

# name -> (arch, n_layer, n_ctx_train, n_vocab, n_head_kv, head_k, head_v, swa_type, n_swa, SWA layers, KV layers,
#          MLA, tied output, experts, used, expert width)
EXPECTED = {
    "llama-3.1-8b": ("llama", 32, 131072, 128256, 8, 128, 128, "none", 0, 0, 32, False, False, 0, 0, 0),
    "llama-2-7b": ("llama", 32, 4096, 32000, 32, 128, 128, "none", 0, 0, 32, False, False, 0, 0, 0),
    "qwen2.5-7b": ("qwen2", 28, 32768, 152064, 4, 128, 128, "none", 0, 0, 28, False, False, 0, 0, 0),
    "qwen3-30b-a3b": ("qwen3moe", 48, 40960, 151936, 4, 128, 128, "none", 0, 0, 48, False, False, 128, 8, 768),
    "mixtral-8x7b": ("llama", 32, 32768, 32000, 8, 128, 128, "none", 0, 0, 32, False, False, 8, 2, 14336),
    "gemma-2-9b": ("gemma2", 42, 8192, 256000, 8, 256, 256, "standard", 4096, 21, 42, False, True, 0, 0, 0),
    "gemma-3-4b": ("gemma3", 34, 131072, 262144, 4, 256, 256, "standard", 1024, 29, 34, False, True, 0, 0, 0),
    "gpt-oss-20b": ("gpt-oss", 24, 131072, 201088, 8, 64, 64, "standard", 128, 12, 24, False, False, 32, 4, 2880),
    "command-r7b": ("cohere2", 32, 132096, 256000, 8, 128, 128, "standard", 4096, 24, 32, False, True, 0, 0, 0),
    "deepseek-v2-lite": ("deepseek2", 27, 163840, 102400, 1, 576, 512, "none", 0, 0, 27, True, False, 64, 6, 1408),
    "phi-3-mini": ("phi3", 32, 4096, 32064, 32, 96, 96, "none", 0, 0, 32, False, False, 0, 0, 0),
    "lfm2-350m": ("lfm2", 16, 128000, 65536, 0, 64, 64, "none", 0, 0, 6, False, True, 0, 0, 0),
    "lfm2-8b-a1b": ("lfm2moe", 24, 128000, 65536, 0, 64, 64, "none", 0, 0, 6, False, True, 32, 4, 1792),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_facts(shape_file, name):
    s = load_spec(shape_file(name))
    got = (s.architecture, s.n_layer, s.n_ctx_train, s.n_vocab, s.n_head_kv[0], s.head_k, s.head_v, s.swa_type,
           s.n_swa, sum(s.is_swa), sum(s.has_kv), s.is_mla, s.tied_output, s.n_expert, s.n_expert_used, s.n_ff_exp)
    assert got == EXPECTED[name]
    assert s.weight_bytes == sum(s.layer_bytes())


def test_swa_patterns_follow_each_family(shape_file):
    assert load_spec(shape_file("gemma-3-4b")).is_swa[:12] == (True,) * 5 + (False,) + (True,) * 5 + (False,)
    assert load_spec(shape_file("gemma-2-9b")).is_swa[:4] == (True, False, True, False)
    assert load_spec(shape_file("command-r7b")).is_swa[:8] == (True, True, True, False) * 2
    assert load_spec(shape_file("gpt-oss-20b")).is_swa[:4] == (True, False, True, False)


def test_real_gemma_3_270m(gemma_path):
    s = load_spec(gemma_path)
    assert (s.architecture, s.n_layer, s.n_embd, s.n_vocab, s.n_swa) == ("gemma3", 18, 640, 262144, 512)
    assert [il for il in range(18) if not s.is_swa[il]] == [5, 11, 17]
    assert s.tied_output and s.weight_bytes == 246587904
    assert s.layer_bytes()[0] == 178257920  # token_embd, q8_0 [640, 262144]


def _write(tmp_path, arch: str, extra: dict, name="m.gguf"):
    path = tmp_path / name
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(4)
    w.add_context_length(8192)
    w.add_embedding_length(256)
    w.add_head_count(4)
    for key, value in extra.items():
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_per_layer_head_count_kv_array(tmp_path):
    s = load_spec(_write(tmp_path, "llama", {"llama.attention.head_count_kv": [4, 2, 2, 1]}))
    assert s.n_head_kv == (4, 2, 2, 1)
    assert [s.n_embd_k_gqa(il) for il in range(4)] == [256, 128, 128, 64]


def test_sliding_window_pattern_array_and_period_keys(tmp_path):
    arr = load_spec(_write(tmp_path, "gemma3", {"gemma3.attention.sliding_window": 64,
                                                "gemma3.attention.sliding_window_pattern": [True, False, True, True]}))
    assert arr.is_swa == (True, False, True, True) and arr.n_swa == 64
    period = load_spec(_write(tmp_path, "gemma3", {"gemma3.attention.sliding_window": 64,
                                                   "gemma3.attention.sliding_window_pattern": 2}, "p.gguf"))
    assert period.is_swa == (True, False, True, False)
    no_window = load_spec(_write(tmp_path, "gemma3", {}, "n.gguf"))  # gemma3 without the key: no SWA at all
    assert no_window.swa_type == "none" and not any(no_window.is_swa)


def test_hybrid_recurrent_layers_have_no_kv(tmp_path):
    s = load_spec(_write(tmp_path, "qwen3next", {"qwen3next.ssm.conv_kernel": 4, "qwen3next.ssm.inner_size": 512,
                                                 "qwen3next.ssm.state_size": 128, "qwen3next.ssm.group_count": 2,
                                                 "qwen3next.full_attention_interval": 2}))
    assert s.is_recurrent == (True, False, True, False)
    assert s.has_kv == (False, True, False, True)
    assert (s.n_embd_r, s.n_embd_s) == (3 * (512 + 2 * 2 * 128), 128 * 512)


def test_unknown_architecture_is_named(tmp_path):
    with pytest.raises(UnsupportedModel,
                       match="architecture 'frobnet' is not supported: not an architecture of the pinned"):
        load_spec(_write(tmp_path, "frobnet", {}))


def test_lfm2_conv_state_and_attention_layers(shape_file):
    s = load_spec(shape_file("lfm2-350m"))
    attn = (2, 5, 8, 10, 12, 14)
    assert s.has_kv == tuple(il in attn for il in range(16))
    assert s.is_recurrent == tuple(il not in attn for il in range(16))
    assert (s.n_embd_r, s.n_embd_s) == (1024 * (3 - 1), 0)  # n_embd x (shortconv.l_cache - 1), no SSM state
    assert s.tensor_layer[[t.name for t in s.tensors].index("token_embd_norm.weight")] == 16  # the output norm
    m = load_spec(shape_file("lfm2-8b-a1b"))
    assert (m.n_layer_dense_lead, m.n_embd_r, sum(m.has_kv)) == (2, 2048 * 2, 6)


def test_lfm2_window_makes_every_attention_layer_slide(tmp_path):
    heads = [0, 0, 4, 0]
    s = load_spec(_write(tmp_path, "lfm2", {"lfm2.attention.head_count_kv": heads, "lfm2.shortconv.l_cache": 3,
                                           "lfm2.attention.sliding_window": 512}))
    assert (s.swa_type, s.n_swa, s.is_swa) == ("standard", 512, (False, False, True, False))


# ---------------------------------------------------------------------------------------------------------------
# Untrusted headers: every hyperparameter autoctx reads is typed and range-checked where it is read; a bad one is
# one UnsupportedModel line naming the key and the file. Headers here are in memory (GGUFFile), as the reader
# returns them: ints, floats, strings, bools, lists, and lazy GGUFArray/GGUFString values.
# ---------------------------------------------------------------------------------------------------------------

from autoctx.gguf import GGUFArray, GGUFFile, GGUFString, TensorInfo  # noqa: E402
from autoctx.model import spec_from_gguf  # noqa: E402

BASE = {"block_count": 4, "context_length": 8192, "embedding_length": 256, "attention.head_count": 4}


def spec_of_header(arch: str = "llama", tensors: tuple = (), **keys):
    """ModelSpec of a header with BASE plus `keys` (suffixes after the arch, '.' as '__'; None removes a key)."""
    md = {"general.architecture": arch}
    for suffix, value in {**BASE, **{k.replace("__", "."): v for k, v in keys.items()}}.items():
        if value is not None:
            md[suffix if suffix.startswith(("general.", "tokenizer.")) else f"{arch}.{suffix}"] = value
    return spec_from_gguf(GGUFFile(["m.gguf"], 3, "<", md, list(tensors), 32, [0], [1 << 40]))


def refusal(arch: str = "llama", tensors: tuple = (), **keys) -> str:
    with pytest.raises(UnsupportedModel) as exc:
        spec_of_header(arch, tensors, **keys)
    return str(exc.value)


STR_ARRAY = int(gguf.GGUFValueType.STRING)


@pytest.mark.parametrize("arch,keys,message", [
    # types: an integer key given as anything else
    ("llama", {"block_count": "4"}, "bad llama.block_count '4': an integer is required, not a string"),
    ("llama", {"block_count": 4.0}, "bad llama.block_count 4.0: an integer is required, not a float"),
    ("llama", {"block_count": True}, "bad llama.block_count True: an integer is required, not a bool"),
    ("llama", {"block_count": [4]}, "bad llama.block_count [4]: an integer is required, not an array of 1 entry"),
    ("llama", {"embedding_length": GGUFArray(5, 5000, 0, "m.gguf")},
     "bad llama.embedding_length <array of 5000>: an integer is required, not an array of 5000 entries"),
    ("llama", {"attention__key_length": GGUFString(2 << 20, 0, "m.gguf")},
     "bad llama.attention.key_length <string of 2097152 bytes>: an integer is required, not a string"),
    ("llama", {"attention__head_count": ["4", "4", "4", "4"]},
     "bad llama.attention.head_count '4': an integer is required, not a string"),
    ("llama", {"general.architecture": 5}, "bad general.architecture 5: a string is required, not an integer"),
    ("llama", {"tokenizer.ggml.tokens": -1}, "bad tokenizer.ggml.tokens -1: an array of strings is required"),
    ("llama", {"tokenizer.ggml.tokens": [1, 2]}, "bad tokenizer.ggml.tokens [1, 2]: an array of strings is required"),
    ("llama", {"tokenizer.ggml.tokens": GGUFArray(6, 5000, 0, "m.gguf")},
     "bad tokenizer.ggml.tokens <array of 5000>: an array of strings is required"),
    # ranges (llama.cpp: 0 < block_count <= LLAMA_MAX_LAYERS, expert_count <= LLAMA_MAX_EXPERTS, int32 positions)
    ("llama", {"block_count": None}, "missing llama.block_count"),
    ("llama", {"block_count": 0}, "bad llama.block_count 0: must be 1..512"),
    ("llama", {"block_count": 513}, "bad llama.block_count 513: must be 1..512"),
    ("llama", {"block_count": 100000}, "bad llama.block_count 100000: must be 1..512"),
    ("llama", {"embedding_length": None}, "missing or zero llama.embedding_length"),
    ("llama", {"embedding_length": 0}, "missing or zero llama.embedding_length"),
    ("llama", {"embedding_length": 2**32}, "bad llama.embedding_length 4294967296: must be 0..4294967295"),
    ("llama", {"context_length": None}, "missing llama.context_length"),
    ("llama", {"context_length": 0}, "bad llama.context_length 0: must be 1..2147483648"),
    ("llama", {"context_length": -1}, "bad llama.context_length -1: must be 1..2147483648"),
    ("llama", {"context_length": 2**31 + 1}, "bad llama.context_length 2147483649: must be 1..2147483648"),
    ("llama", {"vocab_size": -1}, "bad llama.vocab_size -1: must be 0..4294967295"),
    ("llama", {"nextn_predict_layers": 5}, "bad llama.nextn_predict_layers 5: must be 0..4"),
    # per-layer arrays: exactly one entry per block (get_key_or_arr)
    ("llama", {"attention__head_count": [4, 4, 4]},
     "bad llama.attention.head_count [4, 4, 4]: an array of 3 entries for 4 layers"),
    ("llama", {"attention__head_count_kv": GGUFArray(5, 5000, 0, "m.gguf")},
     "bad llama.attention.head_count_kv <array of 5000>: an array of 5000 entries for 4 layers"),
    ("llama", {"feed_forward_length": [1024] * 5},
     "bad llama.feed_forward_length [1024, 1024, 1024, 1024, 1024]: an array of 5 entries for 4 layers"),
    # attention that makes a model
    ("llama", {"attention__head_count": 0}, "missing or zero llama.attention.head_count for an attention model"),
    ("llama", {"attention__head_count": None}, "missing or zero llama.attention.head_count for an attention model"),
    ("llama", {"attention__head_count_kv": 8}, "bad llama.attention.head_count_kv 8 in layer 0: must divide "
                                               "head_count 4"),
    ("llama", {"attention__head_count_kv": 3}, "bad llama.attention.head_count_kv 3 in layer 0: must divide "
                                               "head_count 4"),
    ("llama", {"attention__head_count_kv": [4, 4, 8, 4]}, "bad llama.attention.head_count_kv 8 in layer 2: must "
                                                          "divide head_count 4"),
    ("llama", {"attention__key_length": 0}, "bad llama.attention.key_length 0: layer 0 has 4 KV heads"),
    ("llama", {"embedding_length": 2}, "bad llama.attention.key_length 0: layer 0 has 4 KV heads"),  # 2 // 4
    ("gemma2", {"attention__value_length_swa": 0}, "bad gemma2.attention.value_length_swa 0: layer 0 has 4 KV heads"),
    # experts (load_hparams asserts)
    ("llama", {"expert_count": 4, "expert_used_count": 5},
     "bad llama.expert_used_count 5: must be 1..4 (expert_count)"),
    ("llama", {"expert_count": 8}, "bad llama.expert_used_count 0: must be 1..8 (expert_count)"),
    ("llama", {"expert_used_count": 2}, "bad llama.expert_used_count 2: the model has no experts (expert_count 0)"),
    ("llama", {"expert_count": 1025}, "bad llama.expert_count 1025: must be 0..1024"),
    ("llama", {"expert_count": 8, "expert_used_count": 2, "leading_dense_block_count": 5},
     "bad llama.leading_dense_block_count 5: must be 0..4"),
    # sliding window
    ("gpt-oss", {}, "missing or zero gpt-oss.attention.sliding_window for a sliding-window model"),
    ("gemma3", {"attention__sliding_window": 64, "attention__sliding_window_pattern": [True, False]},
     "bad gemma3.attention.sliding_window_pattern [True, False]: an array of 2 entries for 4 layers"),
    ("gemma3", {"attention__sliding_window": 64, "attention__sliding_window_pattern": GGUFArray(7, 5000, 0, "m")},
     "bad gemma3.attention.sliding_window_pattern <array of 5000>: an array of 5000 entries for 4 layers"),
    ("gemma3", {"attention__sliding_window": "64"}, "bad gemma3.attention.sliding_window '64': an integer is required, "
                                                    "not a string"),
    ("gemma3", {"attention__sliding_window": 64, "attention__sliding_window_pattern": 2.5},
     "bad gemma3.attention.sliding_window_pattern 2.5: an integer is required, not a float"),
    # recurrent and hybrid
    ("qwen3next", {"full_attention_interval": 0}, "bad qwen3next.full_attention_interval 0: must be 1..4294967295"),
    ("qwen3next", {"attention__recurrent_layers": [1, 0]},
     "bad qwen3next.attention.recurrent_layers [1, 0]: an array of 2 entries for 4 layers"),
    ("mamba", {"ssm__inner_size": -1}, "bad mamba.ssm.inner_size -1: must be 0..4294967295"),
    ("gemma4", {"attention__sliding_window": 512, "attention__sliding_window_pattern": [True] * 4,
                "attention__shared_kv_layers": 5}, "bad gemma4.attention.shared_kv_layers 5: must be 0..4"),
])
def test_bad_hyperparameters_are_one_line_naming_key_and_file(arch, keys, message):
    assert refusal(arch, **keys) == f"m.gguf: {message}"


def test_tensor_past_the_last_block():
    t = TensorInfo("blk.4.attn_q.weight", (256, 256), 0, 0, 256 * 256 * 4)
    assert refusal(tensors=(t,)) == "m.gguf: tensor 'blk.4.attn_q.weight' is past the last block (llama.block_count " \
                                    "is 4)"


def test_long_or_odd_values_stay_short_in_messages():
    msg = refusal(block_count="x\n" * 10_000)
    assert msg == "m.gguf: bad llama.block_count '" + "x\\n" * 26 + "\u2026: an integer is required, not a string"


def test_general_name_is_one_short_line():
    assert spec_of_header(**{"general.name": "Model\nName\t" + "x" * 500}).name == "Model Name " + "x" * 108 + "\u2026"
    assert spec_of_header(**{"general.name": GGUFString(5 << 20, 0, "m.gguf")}).name == ""
    assert spec_of_header(**{"general.name": 42}).name == ""


@pytest.mark.parametrize("arch,keys,kv_layers,recurrent", [
    ("llama", {"attention__head_count_kv": [4, 2, 2, 1]}, 4, 0),  # per-layer GQA
    ("llama", {"attention__head_count_kv": [True] * 4}, 4, 0),  # a bool array (get_arr accepts bools)
    ("deci", {"attention__head_count_kv": [4, 0, 1, 0]}, 4, 0),  # attention-free layers: no KV width, no error
    ("jamba", {"attention__head_count_kv": [0, 0, 0, 1]}, 1, 3),  # 0 KV heads: a Mamba layer
    ("mamba", {"attention__head_count": 0, "ssm__conv_kernel": 4}, 0, 4),  # no attention at all
    ("rwkv6", {"attention__head_count": None, "wkv__head_size": 64}, 0, 4),
    ("qwen3next", {"attention__recurrent_layers": [1, 1, 1, 0]}, 1, 3),
    ("gemma3", {"attention__sliding_window": 64, "attention__sliding_window_pattern": [1, 1, 0, 1, 1]}, 4, 0),
    ("llama", {"context_length": 2**31, "block_count": 512, "expert_count": 1024, "expert_used_count": [8] * 512}, 512,
     0),
])
def test_edge_models_stay_valid(arch, keys, kv_layers, recurrent):
    s = spec_of_header(arch, **keys)
    assert (sum(s.has_kv), sum(s.is_recurrent)) == (kv_layers, recurrent)


def test_bad_hyperparameter_in_a_file_names_the_file(tmp_path):
    path = _write(tmp_path, "llama", {"llama.attention.head_count_kv": 8})
    with pytest.raises(UnsupportedModel) as exc:
        load_spec(path)
    assert str(exc.value) == f"{path}: bad llama.attention.head_count_kv 8 in layer 0: must divide head_count 4"
