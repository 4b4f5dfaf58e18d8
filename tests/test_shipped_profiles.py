"""Shipped profiles (plan an Ollama tag before it is pulled, issue 13 item 3): each names a catalog shape whose
weights match the size Ollama's library publishes for the tag, and `autoctx plan TAG` works with nothing pulled."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoctx import catalog
from autoctx.catalog import get_shape
from autoctx.runtimes.ollama.projector import shipped_projector
from autoctx.resolve import shipped_profile, shipped_profiles

ROOT = Path(__file__).resolve().parent.parent
PROFILES = shipped_profiles()
SIZED = sorted(tag for tag, p in PROFILES.items() if "published_size" in p)


def published_bytes(size: str) -> tuple[float, float]:
    """'4.7GB' -> (4.7e9, half a unit of its last digit): Ollama's library lists decimal GB/MB, rounded."""
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(GB|MB)", size)
    assert m, size
    unit = 1e9 if m[3] == "GB" else 1e6
    decimals = len(m[2] or "")
    return float(f"{m[1]}.{m[2] or 0}") * unit, 0.5 * unit / 10**decimals


def test_at_least_25_tags_ship():
    """Issue 13 item 3: at least 25 of the tags people pull, among them the default llama3.2 (3B)."""
    assert len(PROFILES) >= 25
    assert "llama3.2:3b" in SIZED


def test_sized_profiles_cite_their_sources():
    assert len(SIZED) >= 12
    for tag in SIZED:
        p = PROFILES[tag]
        assert p["size_source"].startswith("https://") and p["library_page"].startswith("https://ollama.com/library/")
        assert p["architecture_source"].startswith("https://huggingface.co/")
        assert p["projector"]  # "none" or the tag's projector


@pytest.mark.parametrize("tag", SIZED)
def test_weights_match_the_published_size(tag):
    """Within 1 % of the listed figure, or rounding to it (the library rounds to two or three digits)."""
    size, half_unit = published_bytes(PROFILES[tag]["published_size"])
    weights = get_shape(PROFILES[tag]["shape"]).weight_bytes
    assert abs(weights - size) <= max(0.01 * size, half_unit), (tag, weights, size)
    spec = shipped_profile(tag)
    proj = shipped_projector(tag)
    assert spec.weight_bytes + (sum(t.nbytes for t in proj[1].tensors) if proj else 0) == weights
    assert spec.name == tag
    assert not any(t.name.startswith(("v.", "mm.")) for t in spec.tensors)  # the tower is the projector
    assert (proj is not None) == ("inside the blob" in PROFILES[tag]["projector"])


CITED = sorted(n for n in catalog.names() if get_shape(n).published)


def test_qwen25_32b_cites_its_published_file():
    assert "qwen2.5-32b" in CITED


@pytest.mark.parametrize("name", CITED)
def test_weights_match_the_cited_file_to_half_a_percent(name):
    """A catalog entry that cites a published file's exact size: the computed weights are within 0.5 % of it and
    below it by less than a header (tokenizer, chat template) and the tensors' alignment can take."""
    shape = get_shape(name)
    pub = shape.published
    assert pub["url"].startswith("https://huggingface.co/") and pub["url"].endswith(pub["file"])
    assert shape.quantization in pub["file"].upper().replace("-", "_")
    gap = pub["bytes"] - shape.weight_bytes
    assert 0 < gap <= 0.005 * pub["bytes"] and gap < 32 * 1024**2, (name, gap)


def test_plan_qwen25_32b_before_a_pull_predicts_the_published_weights():
    spec = shipped_profile("qwen2.5:32b")
    published = get_shape("qwen2.5-32b").published["bytes"]
    assert abs(spec.weight_bytes - published) <= 0.005 * published
    assert spec.weight_bytes == 19845357568  # 0.030 % under the 19,851,351,776-byte file


def test_published_sizes_are_read_as_listed():
    assert published_bytes("4.7GB") == (4.7e9, 0.05e9)
    assert published_bytes("43GB") == (43e9, 0.5e9)
    assert published_bytes("815MB") == (815e6, 0.5e6)


def test_plan_an_unpulled_tag(tmp_path):
    env = dict(os.environ, OLLAMA_MODELS=str(tmp_path), OLLAMA_HOST="127.0.0.1:9")  # nothing pulled, no server
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", "gpt-oss:120b", "--free", "cuda0=80GiB",
                        "--runtime", "ollama"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "gpt-oss:120b: gpt-oss, 36 layers, n_ctx_train 131072"
    assert "FROM gpt-oss:120b\nPARAMETER num_ctx" in r.stdout


def test_plan_counts_the_vision_tower_inside_an_unpulled_blob(tmp_path):
    """qwen3.5:9b's blob carries its vision tower, which Ollama passes as --mmproj: the plan before the pull counts
    it beside the model (its 0.91 GB of F16 weights and the encoder's compute) on the GPU."""
    env = dict(os.environ, OLLAMA_MODELS=str(tmp_path), OLLAMA_HOST="127.0.0.1:9")
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", "qwen3.5:9b", "--free", "cuda0=12GiB",
                        "--runtime", "ollama"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "qwen3.5:9b: qwen35, 33 layers, n_ctx_train 262144"
    assert re.search(r"beside the model: projector \d+ MiB on CUDA0", r.stdout), r.stdout
    proj = shipped_projector("qwen3.5:9b")[1]
    assert proj.encoders[0].n_layer == 27 and sum(t.nbytes for t in proj.tensors) == 912837568
