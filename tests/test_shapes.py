"""The shape catalog (autoctx.catalog): stable tensor inventories, well-formed shape-only GGUFs, and the real proof,
a CPU llama-server loading every one of them and printing its buffer sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from autoctx.gguf import GGML_QUANT_SIZES, GGMLType, read_gguf, type_name
from autoctx import catalog
from autoctx.catalog import Shape, TensorShape, get_shape
from tests.shapes_writer import write_shape_gguf

ROOT = Path(__file__).resolve().parent.parent

# name -> (tensor count, total weight bytes). Regression values: a change here changes every prediction made
# from these shapes, so it must be deliberate. Tensor counts match the published Q4_K_M GGUFs of these models; the
# bytes follow llama-quant.cpp's Q4_K_M policy (gpt-oss: MXFP4_MOE).
EXPECTED = {
    "llama-3.1-8b": (292, 4912898304),
    "llama-2-7b": (291, 4080263168),
    "llama-3.1-70b": (724, 42512531712),
    "mistral-7b": (291, 4372054016),
    "mixtral-8x7b": (323, 28447727616),
    "qwen2.5-7b": (339, 4677120000),
    "qwen2.5-32b": (771, 19845357568),
    "qwen3-8b": (399, 5021827072),
    "qwen3-30b-a3b": (579, 18550716416),
    "gemma-2-9b": (464, 5755000832),
    "gemma-3-4b": (444, 2483218432),
    "gemma-3-12b": (626, 7294024704),
    "phi-3-mini": (195, 2396032512),
    "deepseek-v2-lite": (404, 10363959296),
    "gpt-oss-20b": (459, 12096558336),
    "command-r7b": (258, 5046091776),
    "qwen2.5-14b": (579, 8982142976),
    "deepseek-r1-14b": (579, 8982142976),
    "gemma-3-27b": (808, 16539843584),
    "qwen2.5-0.5b": (290, 391859712),  # tied embedding, n_embd 896: Q8_0 fallbacks
    "llama-3.2-1b": (147, 799862912),  # tied embedding
    "llama-3.2-3b": (255, 2011539712),  # tied embedding; the llama3.2:3b tag
    "lfm2-350m": (148, 226925568),  # lfm2: 10 short-conv + 6 attention blocks, tied
    "lfm2-8b-a1b": (256, 5042386688),  # lfm2moe
    "deepseek-r1-1.5b": (339, 1111370240),
    "deepseek-r1-7b": (339, 4677120000),
    "deepseek-r1-32b": (771, 19845357568),
    "deepseek-r1-70b": (724, 42512531712),
    "mixtral-8x7b-q4_0": (323, 26442850304),
    "gpt-oss-20b-ollama": (459, 13779630336),
    "gpt-oss-120b-ollama": (687, 65355994368),
    "phi-4": (243, 9055703040),  # as the published Q4_K_M GGUF (243 tensors)
    "deepseek-r1-671b": (1086, 404488847360),  # 1025 tensors with a fused attn_kv_b; the converter now splits it
    "qwen3.5-9b": (442, 5769121792),  # qwen35: 24 DeltaNet + 8 attention blocks + the MTP block
    # Ollama's blobs: Ollama's Q4_K_M (quant_policy.ollama_types) and the vision tower inside (F16)
    "qwen3.5-9b-ollama": (883, 6580902848),
    "qwen3.5-35b-a3b-ollama": (1194, 23881522624),
    "gemma-4-31b": (833, 18671229168),  # gemma4: 50 SWA + 10 full-attention layers (K = V), tied
    "llama-4-scout": (628, 65346798336),  # llama4: 48 MoE layers (16 experts + shared), chunked attention
    "llama-4-scout-ollama": (1182, 67091921920),  # + the vision tower inside Ollama's blob (F16)
    "mistral-small-3.2-24b": (363, 14326026240),  # mistral3 (the 14.33GB Q4_K_M file of the same policy)
    # MoE variants whose model/KV/RS/output buffers the real server prints as predicted but whose CPU compute is
    # over-predicted by 3 n_embd rows per token (+14 %: memory's MoE peak holds 6 rows where these graphs hold 3)
    "qwen3.5-35b-a3b": (753, 21702472192),  # qwen35moe: 96.02 MiB predicted, 84.02 printed (-c 16384 -np 2)
    "gemma-4-26b-a4b": (658, 16780192888),  # gemma4 MoE: 138.52 MiB predicted, 122.03 printed (-c 16384)
}

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------------------------


def test_catalog_is_the_expected_set():
    assert set(catalog.names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shape_builds_with_stable_inventory(name):
    shape = get_shape(name)
    assert isinstance(shape, Shape) and shape.name == name
    assert shape.metadata["general.architecture"] == shape.arch
    assert "/" in shape.source  # a Hugging Face repo id
    assert (shape.n_tensors, shape.weight_bytes) == EXPECTED[name]
    names = [t.name for t in shape.tensors]
    assert len(names) == len(set(names))
    for t in shape.tensors:
        assert isinstance(t, TensorShape) and all(d > 0 for d in t.shape)
        assert t.shape[0] % GGML_QUANT_SIZES[t.ggml_type][0] == 0, t  # whole blocks per row
    n_layer = shape.metadata[f"{shape.arch}.block_count"]
    assert {f"blk.{i}.attn_norm.weight" for i in range(n_layer)} <= set(names)
    assert shape.tensor("token_embd.weight").shape == (shape.metadata[f"{shape.arch}.embedding_length"],
                                                       shape.n_vocab)
    assert get_shape(name) == shape  # loading is pure


def _type_counts(name: str) -> dict[str, int]:
    return dict(Counter(type_name(t.ggml_type) for t in get_shape(name).tensors))


def test_types_follow_llama_quant_q4_k_m():
    # llama-quant.cpp use_more_bits: Q6_K for attn_v and ffn_down only on layers i < n/8, i >= 7n/8 or
    # (i - n/8) % 3 == 2 (16 of 32), plus the output: Llama 3 8B Q4_K_M loads as "q4_K: 193, q6_K: 33"
    assert _type_counts("llama-3.1-8b") == {"f32": 66, "q4_k": 193, "q6_k": 33}  # + rope_freqs (f32)
    s = get_shape("llama-3.1-8b")
    q6 = [i for i in range(32) if s.tensor(f"blk.{i}.attn_v.weight").ggml_type == GGMLType.Q6_K]
    assert q6 == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(32) if s.tensor(f"blk.{i}.ffn_down.weight").ggml_type == GGMLType.Q6_K] == q6
    assert _type_counts("qwen2.5-7b") == {"f32": 141, "q4_k": 169, "q6_k": 29}  # 28 layers: 14 + 14 + output
    # rows of 896 (Qwen2.5-0.5B): Q4_K falls back to Q5_0, Q6_K to Q8_0; the tied embedding is the output
    counts = _type_counts("qwen2.5-0.5b")
    assert counts["q5_0"] == 132 and get_shape("qwen2.5-0.5b").tensor("token_embd.weight").ggml_type == GGMLType.Q8_0
    # 8 experts (Mixtral): attn_v and attn_k Q8_0, attn_output Q5_K; a LLaMA 70B's other attn_v Q5_K
    s = get_shape("mixtral-8x7b")
    assert {s.tensor(f"blk.5.{r}.weight").ggml_type for r in ("attn_v", "attn_k")} == {GGMLType.Q8_0}
    assert s.tensor("blk.5.attn_output.weight").ggml_type == GGMLType.Q5_K
    s = get_shape("llama-3.1-70b")
    assert (s.tensor("blk.10.attn_v.weight").ggml_type, s.tensor("blk.12.attn_v.weight").ggml_type) == \
        (GGMLType.Q5_K, GGMLType.Q6_K)


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(ValueError, match="llama-3.1-8b"):
        get_shape("no-such-model")


def test_the_catalog_loads_without_numpy_or_gguf():
    code = ("import sys; from autoctx.catalog import get_shape, header_view, names; "
            "[header_view(get_shape(n)) for n in names()]; "
            "assert 'numpy' not in sys.modules and 'gguf' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_catalog_file_names_itself_and_cites_its_config():
    from autoctx.catalog import CATALOG

    for path in CATALOG.glob("*.toml"):
        shape = get_shape(path.stem)
        assert shape.name == path.stem
        assert f"https://huggingface.co/{shape.source} (config.json)" in path.read_text()


def test_a_bad_catalog_entry_is_refused(tmp_path, monkeypatch):
    from autoctx import catalog

    monkeypatch.setattr(catalog, "CATALOG", tmp_path)
    text = (ROOT / "autoctx" / "data" / "catalog" / "llama-3.2-1b.toml").read_text()
    (tmp_path / "bad.toml").write_text(text.replace('["attn_q.weight", [2048, 2048]]', '["attn_q.weight", [2048, 0]]'))
    with pytest.raises(ValueError, match="catalog bad: tensor 'attn_q.weight' has a bad shape"):
        get_shape("bad")
    (tmp_path / "bad.toml").write_text(text.replace('"tokenizer.ggml.bos_token_id" = 128000',
                                                    '"tokenizer.ggml.bos_token_id" = 128256'))
    with pytest.raises(ValueError, match="bos token id 128256 outside the vocabulary of 128256"):
        get_shape("bad")
    (tmp_path / "bad.toml").write_text(text.replace('quantization = "Q4_K_M"', 'quantization = "Q3_K_S"'))
    with pytest.raises(ValueError, match="unknown quantization 'Q3_K_S'"):
        get_shape("bad")
    with pytest.raises(ValueError, match="known shapes: bad"):
        get_shape("../bad")


def test_architecture_details():
    # Llama 3.1: GQA 32/8, llama3 rope factors, untied output in Q6_K
    s = get_shape("llama-3.1-8b")
    assert s.tensor("blk.0.attn_k.weight").shape == (4096, 1024)
    assert s.tensor("rope_freqs.weight").shape == (64,)
    assert s.tensor("output.weight").ggml_type == GGMLType.Q6_K
    assert s.tensor("token_embd.weight").ggml_type == GGMLType.Q4_K
    # Llama 2: MHA
    s = get_shape("llama-2-7b")
    assert s.metadata["llama.attention.head_count_kv"] == s.metadata["llama.attention.head_count"] == 32
    # Qwen2.5: q/k/v biases
    s = get_shape("qwen2.5-7b")
    assert s.tensor("blk.0.attn_k.bias").shape == (512,)
    # Qwen3: q/k norms of head_dim, explicit key/value length
    s = get_shape("qwen3-8b")
    assert s.tensor("blk.0.attn_q_norm.weight").shape == (128,)
    assert s.metadata["qwen3.attention.key_length"] == 128
    # Qwen3 MoE: 128 experts of 768
    s = get_shape("qwen3-30b-a3b")
    assert s.tensor("blk.0.ffn_down_exps.weight").shape == (768, 2048, 128)
    assert s.tensor("blk.0.attn_q.weight").shape == (2048, 4096)  # 32 heads x 128 != n_embd
    # Mixtral: llama arch with experts
    s = get_shape("mixtral-8x7b")
    assert s.arch == "llama" and s.metadata["llama.expert_count"] == 8
    assert s.tensor("blk.31.ffn_gate_exps.weight").shape == (4096, 14336, 8)
    # Gemma: tied embeddings (no output.weight; token_embd in Q6_K), soft-capping, sliding window
    for name in ("gemma-2-9b", "gemma-3-4b", "gemma-3-12b", "command-r7b"):
        s = get_shape(name)
        assert not any(t.name == "output.weight" for t in s.tensors), name
        assert s.tensor("token_embd.weight").ggml_type == GGMLType.Q6_K
    s = get_shape("gemma-2-9b")
    assert s.metadata["gemma2.attn_logit_softcapping"] == 50.0
    assert s.metadata["gemma2.attention.sliding_window"] == 4096
    s = get_shape("gemma-3-4b")
    assert s.n_vocab == 262144 and s.metadata["gemma3.attention.sliding_window"] == 1024
    assert s.metadata["gemma3.attention.key_length"] == 256
    # Phi-3: fused qkv and gate+up
    s = get_shape("phi-3-mini")
    assert s.tensor("blk.0.attn_qkv.weight").shape == (3072, 9216)
    assert s.tensor("blk.0.ffn_up.weight").shape == (3072, 16384)
    assert s.n_vocab == 32064
    # DeepSeek-V2-Lite: MLA as the current converter writes it, dense first layer, shared experts
    s = get_shape("deepseek-v2-lite")
    md = s.metadata
    assert (md["deepseek2.attention.key_length"], md["deepseek2.attention.value_length"]) == (576, 512)
    assert (md["deepseek2.attention.key_length_mla"], md["deepseek2.attention.value_length_mla"]) == (192, 128)
    assert md["deepseek2.attention.kv_lora_rank"] == 512 and md["deepseek2.rope.dimension_count"] == 64
    assert s.tensor("blk.0.attn_k_b.weight").shape == (128, 512, 16)
    assert s.tensor("blk.0.ffn_down.weight").shape == (10944, 2048)
    assert s.tensor("blk.1.ffn_down_exps.weight").shape == (1408, 2048, 64)
    assert s.tensor("blk.1.ffn_up_shexp.weight").shape == (2048, 2816)
    # gpt-oss: sinks, MXFP4 experts, Q8_0 fallback for 2880-wide rows
    s = get_shape("gpt-oss-20b")
    assert s.arch == "gpt-oss" and s.metadata["gpt-oss.attention.sliding_window"] == 128
    assert s.tensor("blk.0.attn_sinks.weight").shape == (64,)
    exp_type = GGMLType.MXFP4 if hasattr(GGMLType, "MXFP4") else GGMLType.Q8_0
    assert s.tensor("blk.0.ffn_gate_exps.weight").ggml_type == exp_type
    assert s.tensor("blk.0.attn_q.weight").ggml_type == GGMLType.Q8_0
    assert s.tensor("blk.0.attn_output.weight").ggml_type == GGMLType.Q8_0  # MXFP4_MOE: every non-expert Q8_0
    # Command R7B
    s = get_shape("command-r7b")
    assert s.metadata["cohere2.attention.sliding_window"] == 4096 and s.metadata["cohere2.logit_scale"] == 0.25


# ---------------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["phi-3-mini", "deepseek-v2-lite", "gpt-oss-20b"])
def test_written_header_round_trips(tmp_path, name):
    shape = get_shape(name)
    path = write_shape_gguf(shape, tmp_path / f"{name}.gguf")
    assert path == tmp_path / f"{name}.gguf"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    g = read_gguf(str(path))
    assert g.architecture == shape.arch and g.alignment == 32
    for key, value in shape.metadata.items():
        expected = pytest.approx(value, rel=1e-6) if isinstance(value, float) else value  # float32 round trip
        assert g.metadata[key] == expected, key
    assert len(g.metadata["tokenizer.ggml.tokens"]) == shape.n_vocab
    assert [(t.name, t.shape, t.ggml_type) for t in g.tensors] == [(t.name, t.shape, t.ggml_type)
                                                                   for t in shape.tensors]
    assert g.tensor_bytes == shape.weight_bytes
    for t in g.tensors:
        assert t.offset % 32 == 0
    last = g.tensors[-1]
    assert g.file_sizes[0] >= g.data_offsets[0] + last.offset + last.nbytes
    # sparse: the data section is a hole (allow a few MB for the header itself)
    assert os.stat(path).st_blocks * 512 < 32 * MiB < shape.weight_bytes
    # rewriting replaces the file atomically
    write_shape_gguf(shape, path)
    assert read_gguf(str(path)).file_sizes == g.file_sizes


def test_stand_in_vocab_loads_as_spm(tmp_path):
    shape = get_shape("llama-3.1-8b")
    g = read_gguf(str(write_shape_gguf(shape, tmp_path / "v.gguf")))
    assert g.metadata["tokenizer.ggml.model"] == "llama"
    assert g.metadata["tokenizer.ggml.bos_token_id"] == 128000
