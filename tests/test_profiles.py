"""Profiles: atomic TOML writes, corrections learned, unreadable files reported and ignored."""

from __future__ import annotations

import os
import subprocess
import sys

from autoctx.profiles import Profile, ProfileKey, ProfileStore, learn, model_digest

KEY = ProfileKey("ab" * 32, "CPU AMD EPYC 23.5GiB", "Linux 6.1", "llama.cpp 0.6.0-dev sha256:0123456789ab")


def test_learn_records_actual_minus_predicted_and_counts_runs():
    p = Profile(KEY, "/m.gguf", "m", "llama")
    learn(p, {"CPU": {"model": 100, "kv": 50, "compute": 30}}, {"CPU": {"model": 100, "kv": 50, "compute": 41}})
    assert p.correction == {"CPU": {"compute": 11}} and p.runs == 1
    assert p.correction_bytes("CPU") == 11 and p.correction_bytes("CUDA0") == 0
    learn(p, {"CPU": {"compute": 30}}, {"CPU": {"compute": 20}})
    assert p.correction == {"CPU": {"compute": -10}} and p.runs == 2
    assert p.correction_bytes("CPU") == 0  # over-predictions do not make a plan smaller


def test_save_is_atomic_and_round_trips(tmp_path):
    store = ProfileStore(tmp_path)
    p = Profile(KEY, "/m.gguf", "m", "llama", plan={"num_ctx": 8192, "llama_server_args": ["-c", "8192"]})
    learn(p, {"CPU": {"kv": 1}}, {"CPU": {"kv": 3}})
    path = store.save(p)
    assert path == tmp_path / f"{KEY.id}.toml" and sorted(os.listdir(tmp_path)) == [f"{KEY.id}.toml"]
    back = store.get(KEY)
    assert back == p
    assert store.find(KEY.id[:6]) == [p] and store.find("/m.gguf") == [p] and store.find("zz") == []


def test_corrupt_profile_is_reported_and_ignored(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(Profile(KEY, "/m.gguf"))
    (tmp_path / "0000000000000000.toml").write_text("this is = = not toml [")
    (tmp_path / "1111111111111111.toml").write_text('model_path = "x"\n')  # valid TOML, not a profile
    profs = store.all()
    assert [p.key for p in profs] == [KEY]
    assert len(store.warnings) == 2 and all(w.startswith("ignoring unreadable profile") for w in store.warnings)


def test_model_digest_covers_header_and_size(tmp_path, gemma_path):
    from autoctx.model import load_spec

    s = load_spec(gemma_path)
    d1 = model_digest(s.path, s.data_offsets[0], s.file_sizes[0])
    assert len(d1) == 64 and d1 == model_digest(s.path, s.data_offsets[0], s.file_sizes[0])
    assert d1 != model_digest(s.path, s.data_offsets[0], s.file_sizes[0] + 1)


def test_profile_commands(tmp_path):
    env = dict(os.environ, AUTOCTX_DATA_DIR=str(tmp_path))
    ProfileStore(tmp_path / "profiles").save(Profile(KEY, "/m.gguf", "Model M", plan={"num_ctx": 4096}))

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "autoctx.cli", *a], capture_output=True, text=True, env=env)

    assert cli("profile", "list").stdout.startswith(f"{KEY.id}  Model M  num_ctx 4096")
    shown = cli("profile", "show", KEY.id[:8])
    assert f'id = "{KEY.id}"' in shown.stdout and 'model_path = "/m.gguf"' in shown.stdout
    missing = cli("profile", "show", "nope")
    assert missing.returncode == 1 and missing.stderr.strip() == ("autoctx: error: no profile matches 'nope' "
                                                                  "(autoctx profile list shows them)")
    assert cli("profile", "rm", "Model M").stdout.strip() == f"removed {KEY.id}"
    assert cli("profile", "list").stdout == ""
