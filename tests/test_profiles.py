"""Profiles: corrections learned, updates under a lock (none lost), temporary files no listing sees, typed loading
with one-line errors, `profile rm` removing only what it names, writes that never follow a symbolic link."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoctx.profiles import Profile, ProfileError, ProfileKey, ProfileStore, learn, model_digest

KEY = ProfileKey("ab" * 32, "CPU AMD EPYC 23.5GiB", "Linux 6.1", "llama.cpp 0.6.0-dev sha256:0123456789ab")
ROOT = Path(__file__).resolve().parents[1]


def key(devices: str) -> ProfileKey:
    return ProfileKey("ab" * 32, devices, "Linux 6.1", "llama.cpp 0.6.0-dev sha256:0123456789ab")


def cli(data_dir, *a):
    env = dict(os.environ, AUTOCTX_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-m", "autoctx.cli", *a], capture_output=True, text=True, env=env,
                          timeout=120)


def spawn(code: str, *args: str) -> subprocess.Popen:
    """A Python process running `code` (sys.argv[1:] = args), with autoctx importable."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


PRELUDE = """
import sys, time
from pathlib import Path
from autoctx.profiles import Profile, ProfileKey, ProfileStore, learn
KEY = ProfileKey("ab" * 32, "CPU AMD EPYC 23.5GiB", "Linux 6.1", "llama.cpp 0.6.0-dev sha256:0123456789ab")
store = ProfileStore(sys.argv[1])

def one_more(cur):
    p = cur or Profile(KEY, "/m.gguf")
    learn(p, {"CPU": {"kv": 1}}, {"CPU": {"kv": 2}})
    return p
"""


# -- learning and round trips


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
    assert path == tmp_path / f"{KEY.id}.toml"
    assert sorted(os.listdir(tmp_path)) == [f".{KEY.id}.lock", f"{KEY.id}.toml"]  # no temporary file left
    back = store.get(KEY)
    assert back == p
    assert store.find(KEY.id[:6]) == [p] and store.find("/m.gguf") == [p] and store.find("zz") == []
    assert store.find(KEY.id[:3]) == [] and store.find("") == [] and store.find("  ") == []  # < 4 hex: no prefix


def test_record_learns_into_the_stored_profile(tmp_path):
    store = ProfileStore(tmp_path)
    fresh = Profile(KEY, "/m.gguf", "m")
    prof, path = store.record(fresh, {"num_ctx": 4096}, {"CPU": {"kv": 1}}, {"CPU": {"kv": 3}})
    assert prof is fresh and prof.runs == 1 and path == tmp_path / f"{KEY.id}.toml"
    prof, _ = store.record(Profile(KEY, "/other.gguf"), {"num_ctx": 2048}, {"CPU": {"kv": 1}}, {"CPU": {"kv": 1}})
    assert (prof.runs, prof.model_path, prof.plan, prof.correction) == (2, "/m.gguf", {"num_ctx": 2048}, {})
    assert store.get(KEY) == prof


# -- concurrency: a lock per profile around read-modify-write


def test_two_processes_updating_one_profile_lose_no_update(tmp_path):
    worker = PRELUDE + """
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.001)
for _ in range(100):
    store.update(KEY, one_more)
"""
    go = tmp_path / "go"
    procs = [spawn(worker, str(tmp_path / "profiles"), str(tmp_path / f"ready{i}"), str(go)) for i in range(2)]
    for i in range(2):
        wait_for(tmp_path / f"ready{i}")
    go.touch()  # both start updating at once
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert ProfileStore(tmp_path / "profiles").get(KEY).runs == 200


def test_update_waits_for_the_lock_and_rereads_the_profile(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(Profile(KEY, "/m.gguf", runs=1))
    done = tmp_path / "done"
    worker = PRELUDE + "Path(sys.argv[2]).touch()\nstore.update(KEY, one_more)\nPath(sys.argv[3]).touch()\n"
    with store._locked(KEY.id):
        proc = spawn(worker, str(tmp_path), str(tmp_path / "started"), str(done))
        wait_for(tmp_path / "started")
        time.sleep(0.5)
        assert not done.exists()  # blocked on our lock
        store._write(Profile(KEY, "/m.gguf", runs=5))  # what it reads must be this, not what was there before
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert store.get(KEY).runs == 6


def test_a_waiter_relocks_when_rm_removed_the_lock_file(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(Profile(KEY, "/m.gguf", runs=1))
    done = tmp_path / "done"
    worker = PRELUDE + "Path(sys.argv[2]).touch()\nstore.update(KEY, one_more)\nPath(sys.argv[3]).touch()\n"
    first = store._locked(KEY.id)
    lock = first.__enter__()
    proc = spawn(worker, str(tmp_path), str(tmp_path / "started"), str(done))
    wait_for(tmp_path / "started")
    time.sleep(0.3)  # it waits on the first lock file's inode
    lock.unlink()  # as `profile rm` does while holding the lock
    second = ProfileStore(tmp_path)._locked(KEY.id)
    second.__enter__()  # a new lock file, held by us
    first.__exit__(None, None, None)
    time.sleep(0.5)
    assert not done.exists()  # it got the old, unlinked lock, saw that and now waits on the new one
    second.__exit__(None, None, None)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert store.get(KEY).runs == 2


# -- temporary files


def test_leftover_temp_file_of_a_killed_save_is_not_listed_and_the_next_save_removes_it(tmp_path):
    data = tmp_path / "data"
    store = ProfileStore(data / "profiles")
    store.save(Profile(KEY, "/m.gguf", "Model M", plan={"num_ctx": 4096}))
    hang = PRELUDE + """
import autoctx.profiles as m
def stuck(src, dst):
    print(src, flush=True)
    time.sleep(600)
m.os.replace = stuck
store.update(KEY, one_more)
"""
    proc = spawn(hang, str(data / "profiles"))
    tmp = Path(proc.stdout.readline().strip())  # written and fsynced, not yet renamed
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert tmp.parent == data / "profiles" and tmp.name.startswith(f".{KEY.id}.toml.tmp-") and tmp.exists()
    assert [p.runs for p in ProfileStore(data / "profiles").all()] == [0]
    shown = cli(data, "profile", "show", KEY.id[:8])
    assert shown.returncode == 0 and shown.stderr == "" and f'id = "{KEY.id}"' in shown.stdout
    listed = cli(data, "profile", "list")
    assert listed.stdout == f"{KEY.id}  Model M  num_ctx 4096 KV None/None  runs 0  {KEY.devices}\n"
    assert listed.stderr == ""
    store.update(KEY, lambda p: p)
    assert sorted(os.listdir(data / "profiles")) == [f".{KEY.id}.lock", f"{KEY.id}.toml"]


def test_stale_temp_files_go_and_in_flight_ones_stay(tmp_path):
    store = ProfileStore(tmp_path)
    other, busy = key("CUDA0 other"), key("CUDA1 busy")
    store.save(Profile(other, "/o.gguf"))
    store.save(Profile(busy, "/b.gguf"))
    names = {"mine": f".{KEY.id}.toml.tmp-aaaa", "other": f".{other.id}.toml.tmp-bbbb",
             "busy": f".{busy.id}.toml.tmp-cccc", "orphan": ".0123456789abcdef.toml.tmp-dddd",  # no lock file
             "legacy_old": ".tmp-x1.toml", "legacy_new": ".tmp-x2.toml"}
    for n in names.values():
        (tmp_path / n).write_text("half a profile")
    os.utime(tmp_path / names["legacy_old"], (time.time() - 120, time.time() - 120))
    assert {p.key for p in store.all()} == {other, busy} and store.warnings == []
    with ProfileStore(tmp_path)._locked(busy.id):  # its writer is still at work
        store.save(Profile(KEY, "/m.gguf"))
    left = set(os.listdir(tmp_path))
    assert names["busy"] in left and names["legacy_new"] in left
    assert not left & {names[k] for k in ("mine", "other", "orphan", "legacy_old")}


# -- typed loading


def write_profile(path: Path, **changes) -> None:
    import tomli_w

    d = Profile(KEY, "/m.gguf", "m", plan={"num_ctx": 4096}, runs=3, predicted={"CPU": {"kv": 1}},
                measured={"CPU": {"kv": 2}}, correction={"CPU": {"kv": 1}}).to_toml_dict()
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    path.write_text(tomli_w.dumps(d))


BAD_FIELDS = [
    ({"runs": "3"}, "field runs should be a whole number >= 0, not string '3'"),
    ({"runs": True}, "field runs should be a whole number >= 0, not boolean True"),
    ({"runs": -1}, "field runs should be a whole number >= 0, not integer -1"),
    ({"plan": "big"}, "field plan should be a table, not string 'big'"),
    ({"predicted": {"CPU": {"kv": "1"}}}, "field predicted.CPU.kv should be an integer (bytes), not string '1'"),
    ({"measured": {"CPU": 5}}, "field measured.CPU should be a table of byte counts, not integer 5"),
    ({"correction": [1, 2]}, "field correction should be a table of devices, not array [1, 2]"),
    ({"correction": {"CPU": {"kv": 1.5}}}, "field correction.CPU.kv should be an integer (bytes), not float 1.5"),
    ({"model_path": None}, "field model_path is missing (it should be a string)"),
    ({"model_name": 7}, "field model_name should be a string, not integer 7"),
    ({"key": {"model_digest": "ab" * 32, "devices": 3, "driver": "d", "runtime": "r"}},
     "field key.devices should be a string, not integer 3"),
    ({"key": "k"}, "field key should be a table, not string 'k'"),
    ({"id": "0000000000000000"}, f"field id string '0000000000000000' is not its key's id {KEY.id}"),
]


@pytest.mark.parametrize("changes,why", BAD_FIELDS)
def test_a_wrong_typed_field_is_one_warning_naming_file_and_field(tmp_path, changes, why):
    path = tmp_path / f"{KEY.id}.toml"
    write_profile(path, **changes)
    store = ProfileStore(tmp_path)
    assert store.all() == [] and store.get(KEY) is None
    assert store.warnings == [f"ignoring profile {path}: {why}"]


def test_a_profile_under_another_ids_name_and_broken_files_are_ignored(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(Profile(KEY, "/m.gguf"))
    write_profile(tmp_path / "00000000000000aa.toml", id=None)
    (tmp_path / "0000000000000000.toml").write_text("this is = = not toml [")
    (tmp_path / "1111111111111111.toml").write_bytes(b'model_path = "\xff"\n')
    (tmp_path / "notes.toml").write_text("not = 'a profile name'")  # never read
    assert [p.key for p in store.all()] == [KEY]
    assert store.warnings == [
        f"ignoring profile {tmp_path / '0000000000000000.toml'}: not TOML (Expected '=' after a key in a key/value "
        "pair (at line 1, column 6))",
        f"ignoring profile {tmp_path / '00000000000000aa.toml'}: its key's id {KEY.id} is not its file name",
        f"ignoring profile {tmp_path / '1111111111111111.toml'}: UnicodeDecodeError: 'utf-8' codec can't decode byte "
        "0xff in position 14: invalid start byte"]


def test_profile_commands_report_a_bad_profile_in_one_line(tmp_path):
    good = key("CUDA0 good")
    ProfileStore(tmp_path / "profiles").save(Profile(good, "/g.gguf", "G", plan={"num_ctx": 2048}))
    bad = tmp_path / "profiles" / f"{KEY.id}.toml"
    write_profile(bad, runs="3")
    why = "field runs should be a whole number >= 0, not string '3'"
    listed = cli(tmp_path, "profile", "list")
    assert listed.returncode == 0
    assert listed.stdout == f"{good.id}  G  num_ctx 2048 KV None/None  runs 0  CUDA0 good\n"
    assert listed.stderr == f"autoctx: warning: ignoring profile {bad}: {why}\n"
    shown = cli(tmp_path, "profile", "show", KEY.id[:6])
    assert shown.returncode == 1 and shown.stdout == ""
    assert shown.stderr == f"autoctx: error: profile {bad} cannot be read: {why}\n"
    other = cli(tmp_path, "profile", "show", good.id)
    assert other.returncode == 0 and f'id = "{good.id}"' in other.stdout
    assert other.stderr == f"autoctx: warning: ignoring profile {bad}: {why}\n"


def test_learning_over_a_bad_profile_replaces_it(tmp_path):
    write_profile(tmp_path / f"{KEY.id}.toml", measured={"CPU": "x"})
    store = ProfileStore(tmp_path)
    prof, _ = store.record(Profile(KEY, "/m.gguf"), {}, {"CPU": {"kv": 1}}, {"CPU": {"kv": 1}})
    assert prof.runs == 1 and ProfileStore(tmp_path).get(KEY) == prof


# -- profile show / rm: only what REF names


def two_ids_sharing_4_hex() -> tuple[ProfileKey, ProfileKey]:
    seen: dict[str, ProfileKey] = {}
    for i in range(100000):
        k = key(f"CPU {i}")
        if k.id[:4] in seen:
            return seen[k.id[:4]], k
        seen[k.id[:4]] = k
    raise AssertionError("no two ids share 4 hex digits")


def test_profile_commands(tmp_path):
    ProfileStore(tmp_path / "profiles").save(Profile(KEY, "/m.gguf", "Model M", plan={"num_ctx": 4096}))
    assert cli(tmp_path, "profile", "list").stdout.startswith(f"{KEY.id}  Model M  num_ctx 4096")
    shown = cli(tmp_path, "profile", "show", KEY.id[:8])
    assert f'id = "{KEY.id}"' in shown.stdout and 'model_path = "/m.gguf"' in shown.stdout
    missing = cli(tmp_path, "profile", "show", "nope")
    assert missing.returncode == 1 and missing.stderr == ("autoctx: error: no profile matches 'nope' "
                                                          "(autoctx profile list shows them)\n")
    removed = cli(tmp_path, "profile", "rm", "Model M")
    assert removed.returncode == 0 and removed.stdout == f"removed {KEY.id}\n"
    assert cli(tmp_path, "profile", "list").stdout == ""
    assert os.listdir(tmp_path / "profiles") == []  # the lock file goes with the profile


@pytest.mark.parametrize("ref", ["", "   ", "\t"])
def test_rm_of_an_empty_ref_removes_nothing(tmp_path, ref):
    ProfileStore(tmp_path / "profiles").save(Profile(KEY, "/m.gguf", "Model M"))
    r = cli(tmp_path, "profile", "rm", ref)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("autoctx: error: no profile named: give a profile id (at least 4 hex digits), a model path "
                        "or a name\n")
    assert [p.key for p in ProfileStore(tmp_path / "profiles").all()] == [KEY]


def test_rm_needs_4_hex_digits_of_one_id(tmp_path):
    a, b = two_ids_sharing_4_hex()
    store = ProfileStore(tmp_path / "profiles")
    for k in (a, b):
        store.save(Profile(k, "/m.gguf"))
    short = cli(tmp_path, "profile", "rm", a.id[:3])
    assert short.returncode == 1 and short.stderr == (f"autoctx: error: no profile matches '{a.id[:3]}' (an id "
                                                      "prefix needs at least 4 hex digits; autoctx profile list shows "
                                                      "them)\n")
    for extra in ([], ["--all"]):  # --all never widens an id prefix
        both = cli(tmp_path, "profile", "rm", *extra, a.id[:4])
        assert both.returncode == 1 and both.stdout == ""
        assert both.stderr == f"autoctx: error: 2 profile ids start with '{a.id[:4]}': give more of the id\n"
    assert len(store.all()) == 2
    n = next(i for i in range(4, 17) if a.id[:i] != b.id[:i])
    one = cli(tmp_path, "profile", "rm", a.id[:n])
    assert one.returncode == 0 and one.stdout == f"removed {a.id}\n"
    assert [p.key for p in store.all()] == [b]


def test_rm_of_a_model_with_several_profiles_needs_all(tmp_path):
    store = ProfileStore(tmp_path / "profiles")
    keys = [key("CPU x"), key("CUDA0 y")]
    for k in keys:
        store.save(Profile(k, "/m.gguf", "Model M"))
    store.save(Profile(key("CPU z"), "/n.gguf", "Model N"))
    refused = cli(tmp_path, "profile", "rm", "/m.gguf")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == ("autoctx: error: 2 profiles match '/m.gguf': give one's id (autoctx profile list shows "
                              "them), or --all to remove them all\n")
    shown = cli(tmp_path, "profile", "show", "Model M")
    assert shown.returncode == 1 and shown.stderr == ("autoctx: error: 2 profiles match 'Model M': give one's id "
                                                      "(autoctx profile list shows them)\n")
    assert len(store.all()) == 3
    gone = cli(tmp_path, "profile", "rm", "--all", "Model M")
    assert gone.returncode == 0
    assert sorted(gone.stdout.splitlines()) == sorted(f"removed {k.id}" for k in keys)
    assert [p.model_path for p in store.all()] == ["/n.gguf"]


def test_select_raises_profile_error():
    store = ProfileStore("/nonexistent/autoctx-profiles")
    with pytest.raises(ProfileError, match="no profile matches 'abcd'"):
        store.select("abcd")


# -- never through a symbolic link


def test_profile_writes_never_follow_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    root = tmp_path / "profiles"
    root.mkdir()
    (root / f"{KEY.id}.toml").symlink_to(victim)
    store = ProfileStore(root)
    store.save(Profile(KEY, "/m.gguf"))
    assert victim.read_text() == "precious" and not (root / f"{KEY.id}.toml").is_symlink()
    assert store.get(KEY) == Profile(KEY, "/m.gguf")
    other = key("CUDA0 z")
    (root / f".{other.id}.lock").symlink_to(victim)
    with pytest.raises(ProfileError) as e:
        store.save(Profile(other, "/m.gguf"))
    assert str(e.value) == (f"cannot open the profile lock {root / f'.{other.id}.lock'}: Too many levels of "
                            "symbolic links")
    assert victim.read_text() == "precious" and not (root / f"{other.id}.toml").exists()


def test_chart_is_written_through_a_new_temp_file_never_a_planted_link(tmp_path, gemma_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    chart = tmp_path / "x.svg"
    (tmp_path / "x.svg.tmp").symlink_to(victim)  # the old fixed temporary name
    r = cli(tmp_path, "plan", gemma_path, "--free", "cpu=8GiB", "--chart", str(chart))
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious"
    assert chart.read_text().startswith("<svg") and not chart.is_symlink()
    mask = os.umask(0)
    os.umask(mask)
    assert chart.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(os.listdir(tmp_path)) == ["victim", "x.svg", "x.svg.tmp"]  # no temporary file left


def test_chart_at_a_symlink_is_refused(tmp_path, gemma_path):
    victim = tmp_path / "victim.svg"
    victim.write_text("precious")
    chart = tmp_path / "x.svg"
    chart.symlink_to(victim)
    r = cli(tmp_path, "plan", gemma_path, "--free", "cpu=8GiB", "--chart", str(chart))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"autoctx: error: --chart {chart} is a symbolic link; autoctx does not write through links "
                        "(remove it or give the path it points to)\n")
    assert victim.read_text() == "precious" and chart.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["victim.svg", "x.svg"]


def test_model_digest_covers_header_and_size(tmp_path, gemma_path):
    from autoctx.model import load_spec

    s = load_spec(gemma_path)
    d1 = model_digest(s.path, s.data_offsets[0], s.file_sizes[0])
    assert len(d1) == 64 and d1 == model_digest(s.path, s.data_offsets[0], s.file_sizes[0])
    assert d1 != model_digest(s.path, s.data_offsets[0], s.file_sizes[0] + 1)
