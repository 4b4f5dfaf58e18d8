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
    with pytest.raises(UnsupportedModel, match="architecture 'frobnet' is not supported"):
        load_spec(_write(tmp_path, "frobnet", {}))
