"""Ollama model names resolved through a real on-disk store layout built from the Gemma GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autoctx.runtimes.ollama.store import OllamaModelError, find_model, parse_name

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.mark.parametrize("name,expected", [
    ("qwen2.5:32b", ("registry.ollama.ai", "library", "qwen2.5", "32b")),
    ("llama3.1", ("registry.ollama.ai", "library", "llama3.1", "latest")),
    ("library/gemma3:270m", ("registry.ollama.ai", "library", "gemma3", "270m")),
    ("someone/mymodel:q4", ("registry.ollama.ai", "someone", "mymodel", "q4")),
    ("localhost:5000/team/m:v1", ("localhost:5000", "team", "m", "v1")),
])
def test_parse_name(name, expected):
    n = parse_name(name)
    assert (n.host, n.namespace, n.model, n.tag) == expected


@pytest.mark.parametrize("bad", ["a/b/c/d:e", "bad name:x", ":tag", "x:"])
def test_parse_bad_names(bad):
    with pytest.raises(OllamaModelError, match="is not an Ollama model name"):
        parse_name(bad)


@pytest.fixture
def store(tmp_path, gemma_path):
    """manifests/registry.ollama.ai/library/gemma3/270m + blobs/sha256-<digest> (a link to the real GGUF)."""
    root = tmp_path / "models"
    (root / "blobs").mkdir(parents=True)
    os.symlink(gemma_path, root / "blobs" / f"sha256-{GEMMA_SHA256}")
    tpl = root / "blobs" / ("sha256-" + "1" * 64)
    tpl.write_text("{{ .Prompt }}")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": "sha256:" + "2" * 64, "size": 10},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{GEMMA_SHA256}",
                            "size": os.path.getsize(gemma_path)},
                           {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64,
                            "size": 13}]}
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / "gemma3"
    mdir.mkdir(parents=True)
    (mdir / "270m").write_text(json.dumps(manifest))
    return root


def test_find_model_in_the_store(store, gemma_path):
    m = find_model("gemma3:270m", env={"OLLAMA_MODELS": str(store)})
    assert m.gguf == store / "blobs" / f"sha256-{GEMMA_SHA256}" and m.digest == f"sha256:{GEMMA_SHA256}"
    assert m.name.short == "gemma3:270m"
    assert [lay["size"] for lay in m.layers("application/vnd.ollama.image.template")] == [13]


def test_not_pulled_says_the_pull_command(store):
    with pytest.raises(OllamaModelError, match=r"qwen2.5:32b is not pulled .*run `ollama pull qwen2.5:32b`"):
        find_model("qwen2.5:32b", env={"OLLAMA_MODELS": str(store)})


def test_missing_blob_and_bad_manifest(store):
    os.unlink(store / "blobs" / f"sha256-{GEMMA_SHA256}")
    with pytest.raises(OllamaModelError, match="blob .* is missing"):
        find_model("gemma3:270m", env={"OLLAMA_MODELS": str(store)})
    (store / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / "270m").write_text("{nope")
    with pytest.raises(OllamaModelError, match="not a valid manifest"):
        find_model("gemma3:270m", env={"OLLAMA_MODELS": str(store)})


def test_plan_an_ollama_name_from_the_store(store, gemma_path):
    env = dict(os.environ, OLLAMA_MODELS=str(store))
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", "gemma3:270m", "--device", "cpu", "--free",
                        "cpu=2GiB", "--runtime", "ollama", "--emit", "modelfile"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "FROM gemma3:270m\nPARAMETER num_ctx 32768\n"
    missing = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", "phi4-mini:3.8b", "--device", "cpu"],
                             capture_output=True, text=True, env=env)  # not pulled, no shipped profile
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("run `ollama pull phi4-mini:3.8b`")


def test_every_shipped_profile_plans_before_pull():
    from autoctx.planner import Budget, plan
    from autoctx.resolve import shipped_profiles, shipped_profile

    profiles = shipped_profiles()
    assert len(profiles) >= 12
    for tag, prof in profiles.items():
        assert prof["architecture_source"].startswith("https://huggingface.co/")
        spec = shipped_profile(tag)
        assert spec.name == tag and spec.source.startswith("shipped profile")
        p = plan(spec, [Budget("CUDA0", 96 * 1024**3, 1024**3)])
        assert p.num_ctx >= 4096 and p.estimate.kind_bytes("model") > 1024**3


def test_plan_an_unpulled_tag_from_its_shipped_profile(tmp_path):
    env = dict(os.environ, OLLAMA_MODELS=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", "qwen2.5:32b", "--free", "cuda0=24GiB",
                        "--runtime", "ollama"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "qwen2.5:32b: qwen2, 64 layers, n_ctx_train 32768"
    assert lines[1].startswith("  not pulled: architecture and weights from the shipped profile ")
    assert "KV q8_0   " in r.stdout and "(K) /" not in r.stdout  # Ollama: one KV type; q8_0 reaches --min-ctx
    assert "FROM qwen2.5:32b\nPARAMETER num_ctx" in r.stdout
