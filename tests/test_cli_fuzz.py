"""Malformed command lines, every command: one `autoctx: error:` line on stderr, exit 1 or 2, no traceback, no hang,
nothing written.

Each case runs `python -m autoctx.cli` as a subprocess in a sandbox of its own (HOME, XDG dirs, AUTOCTX_DATA_DIR,
TMPDIR and the working directory are empty folders of a temp dir that must still be empty afterwards), with
OLLAMA_HOST at a closed port, OLLAMA_MODELS at a fake store of broken manifests, and AUTOCTX_LLAMA_SERVER (and
`llama-server`/`ollama` on PATH) stand-ins that answer --version and --list-devices and otherwise exit 1, so that no
real server is ever started. The cases run in a small thread pool (~0.2 s each); the whole file takes well under a
minute. The GGUF *file* fuzz is tests/test_gguf_reader.py's; here MODEL is only what a user types.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~300 subprocesses: a minute or more on 2 cores

TIME_LIMIT = 20.0  # seconds per case: more is a hang
HEX = "ab" * 32  # a well-formed sha256 hex digest

STAND_IN = """#!/bin/sh
# a llama-server / ollama that says who it is and fails everything else (no real server is started)
case "$1" in
  --version) echo "version: 0.6.0-dev (build 11434, commit x)"; echo "built with stand-in"; exit 0 ;;
  --list-devices) printf 'Available devices:\\n  (none)\\n'; exit 0 ;;
esac
echo "stand-in: refusing to serve" >&2
exit 1
"""

# --- the cases ------------------------------------------------------------------------------------------------
# Placeholders: {G} the real Gemma GGUF, {S} the shared sandbox (fixtures below), {C} the case's own folder.

BAD_FREE = [
    "cuda0=abc", "=-1GiB", "cuda0=1e400", "cuda0=", "=4GiB", "cuda0=nan", "cuda0=inf", "cuda0=1e30GiB",
    "cuda0=99999999999999999999TiB", "cuda99999999999999999999=1GiB", "gpu0=1GiB", "cuda0=1GiB=2", "cpu=0",
    "cpu=1", "cpu=-1GiB", "cuda0=-4GiB", "cpu=" + "9" * 400, "cpu=1.5.5GiB", "cpu=0x10", "cpu=1_000GiB",
    "cpu=\uff11GiB", "cuda\u00b2=1GiB", "cuda0", "cpu=4GiB,cuda0=1GiB", "cuda-1=1GiB", "cuda=1GiB", "cpu0=1GiB",
    "cuda0=1PiB", "cpu=2000TiB", "cpu=1 GiB GiB", "", "cpu=100MiB",
]
BAD_FREE_PAIRS = [["cpu=4GiB", "cpu=8GiB"], ["cuda0=8GiB", "CUDA0=8GiB"], ["cuda0=8GiB", "cuda00=8GiB"]]
BAD_MARGIN = ["abc", "-1GiB", "1e400", "nan", "inf", "99999999999999999999TiB", "=1GiB", "1GiB=2", "-0", "8GiB"]
BAD_DEVICE = ["gpu", "cuda0", "cpu,cuda0", "rocm", "cpu0", "\n"]
BAD_CTX = [
    ("--max-ctx", "-5"), ("--max-ctx", "abc"), ("--max-ctx", str(10**30)), ("--max-ctx", "1e5"),
    ("--min-ctx", "0"), ("--min-ctx", "-1"), ("--min-ctx", str(10**12)), ("--min-ctx", ""),
]
PLAN_INTS = [
    ("--parallel", "0"), ("--parallel", "-3"), ("--parallel", str(10**12)), ("--parallel", "x"),
    ("--ubatch", "0"), ("--ubatch", "-1"), ("--ubatch", str(10**12)), ("--ubatch", "1.5"),
]
BAD_KV_TYPES = ["q3", "", ",", "f16,,q9", "f16/", "/q8_0", "q8_0/q8_0/q8_0", "F16 ,q8_0/", "q4_0/bf17", "f16,/"]
BAD_KV_TYPE = ["f16/", "/q8_0", "q8_0/q8_0/q8_0", "q3", "/", "f16,q8_0"]
BAD_TIMEOUT = ["-1", "nan", "inf", "-inf", "abc", "0", ""]
BAD_MODELS = [  # (id, MODEL)
    ("dir", "{S}"), ("dir-gguf", "{S}/dir.gguf"), ("fifo", "{S}/fifo"), ("fifo-gguf", "{S}/fifo.gguf"),
    ("dev-zero", "/dev/zero"), ("dev-null", "/dev/null"), ("empty", "{S}/empty.gguf"), ("text", "{S}/notes.txt"),
    ("text-gguf", "{S}/text.gguf"), ("missing-gguf", "{S}/missing.gguf"), ("loop-gguf", "{S}/loop.gguf"),
    ("long", "m" * 5000), ("long-gguf", "m" * 5000 + ".gguf"), ("newline", "a\nb.gguf"),
    ("ctrl", "a\x01b\x7f.gguf"), ("cr", "x\r.gguf"), ("linesep", "x\u2028y.gguf"), ("traverse", "../../etc/passwd"),
    ("traverse-tag", "a/../../b:tag"), ("pct", "%2e%2e/x:y"), ("abs", "/abs/model"), ("colon", "x:"),
    ("tag-only", ":tag"), ("upper", "UPPER/Case:Tag"), ("empty-name", ""), ("space", " "), ("dash", "-"),
    ("dots", ".."), ("deep", "a/b/c/d:e"), ("unpulled", "nosuchmodel:7b"), ("etc-passwd", "/etc/passwd"),
    ("newline-name", "qwen\n:7b"),
]
STORE_MODELS = [  # names in the fake store (OLLAMA_MODELS) whose manifest or blob is broken
    "trav", "dirblob", "fifoblob", "notjson", "linkout", "nolayers", "devzero", "emptyblob", "mdir", "fifomanifest",
    "nomodel", "badsize",
]
PASSTHROUGH = [  # llama-server arguments after MODEL (after `--` for profile generate)
    ["-c", "abc"], ["-c", "-1"], ["-ctk", "q9"], ["-ctv", "q8_0", "-fa", "off"], ["-fa", "maybe"],
    ["--port", "abc"], ["--port", "0"], ["--port", "70000"], ["-np", "0"], ["-ub", "-5"], ["-ts", "a,b"],
    ["-ngl", "x"], ["-c"], ["-ctk"], ["--port"], ["-b", "0"], ["-lm", "fast"], ["-fit", "perhaps"],
    ["--ctx-size=abc"], ["stray"], ["-ts", "1e400,nan"], ["-ts", "-1,2"], ["-c", str(10**30)],
    ["-np", str(10**12)], ["-np", "257"], ["-ub", str(10**12)], ["-b", str(10**12)], ["-ngl", str(10**30)],
    ["-m"], ["-c", "4096", "-np"], ["-ts", "inf"], ["--port=1e3"],
]
PROFILE_REFS = ["", "zz", "0", "abc", "  ", "../..", "*", "0000000000000000000", "/etc/passwd", "a\nb", "fedc"]


def _cases() -> list[tuple[str, list[str], dict]]:
    """(id, argv, extra environment), deterministic. Each bad value is tried with the command that checks it first
    and, in rotation, one or two others that take the same option."""
    out: list[tuple[str, list[str], dict]] = []

    def add(cid: str, argv: list[str], env: dict | None = None) -> None:
        out.append((cid, argv, env or {}))

    cpu = ["--free", "cpu=8GiB"]
    ollama_cmd = {  # the same option, given to another command
        "serve": lambda *a: ["serve", "{G}", *a],
        "run": lambda *a: ["run", *a, "gemma3:270m"],
        "modelfile": lambda *a: ["modelfile", "gemma3:270m", *a],
    }
    others = list(ollama_cmd)
    for i, f in enumerate(BAD_FREE):
        add(f"plan-free-{i}", ["plan", "{G}", "--free", f])
        other = others[i % 3]
        add(f"{other}-free-{i}", ollama_cmd[other]("--free", f))
    for i, pair in enumerate(BAD_FREE_PAIRS):
        add(f"plan-free-pair-{i}", ["plan", "{G}", *(x for f in pair for x in ("--free", f))])
        add(f"serve-free-pair-{i}", ["serve", "{G}", *(x for f in pair for x in ("--free", f))])
    for i, m in enumerate(BAD_MARGIN):
        add(f"plan-margin-{i}", ["plan", "{G}", *cpu, "--margin", m])
        other = others[i % 3]
        add(f"{other}-margin-{i}", ollama_cmd[other](*cpu, "--margin", m))
    for i, d in enumerate(BAD_DEVICE):
        add(f"plan-device-{i}", ["plan", "{G}", "--device", d])
        if i % 2:
            add(f"profile-generate-device-{i}", ["profile", "generate", "{G}", "--device", d])
        else:
            add(f"{others[i % 3]}-device-{i}", ollama_cmd[others[i % 3]]("--device", d))
    for i, (flag, v) in enumerate(BAD_CTX):
        add(f"plan{flag}={v[:12]}", ["plan", "{G}", *cpu, flag, v])
        other = others[i % 3]
        add(f"{other}{flag}={v[:12]}", ollama_cmd[other](*cpu, flag, v))
    add("plan-min-above-max", ["plan", "{G}", *cpu, "--min-ctx", "8192", "--max-ctx", "4096"])
    add("run-min-above-max", ["run", *cpu, "--min-ctx", "8192", "--max-ctx", "4096", "gemma3:270m"])
    for flag, v in PLAN_INTS:
        add(f"plan{flag}={v[:12]}", ["plan", "{G}", *cpu, flag, v])
    for v in ("0", "-1", str(10**12), "x"):
        add(f"serve--max-tries={v[:12]}", ["serve", "{G}", *cpu, "--max-tries", v])
    for v in BAD_TIMEOUT:
        add(f"serve--timeout={v}", ["serve", "{G}", *cpu, "--timeout", v])
        add(f"check--timeout={v}", ["check", "{G}", "--timeout", v])
        if v != "0":  # run: 0 is the default ($AUTOCTX_OLLAMA_TIMEOUT, else 600 s)
            add(f"run--timeout={v}", ["run", "--timeout", v, "gemma3:270m"])
    add("run-timeout-env", ["run", "gemma3:270m"], {"AUTOCTX_OLLAMA_TIMEOUT": "nan"})
    for i, k in enumerate(BAD_KV_TYPES):
        add(f"plan-kv-types-{i}", ["plan", "{G}", *cpu, "--kv-types", k])
        if i % 2:
            add(f"serve-kv-types-{i}", ["serve", "{G}", *cpu, "--kv-types", k])
    add("plan-kv-types-ollama-none", ["plan", "{G}", *cpu, "--runtime", "ollama", "--kv-types", "q8_0/q4_0"])
    add("plan-kv-type-ollama-pair", ["plan", "{G}", *cpu, "--runtime", "ollama", "--kv-type", "q8_0/q4_0"])
    for i, k in enumerate(BAD_KV_TYPE):
        add(f"plan-kv-type-{i}", ["plan", "{G}", *cpu, "--kv-type", k])
    for r in ("x", "", "LLAMACPP ", "vllm"):
        add(f"plan-runtime-{r!r}", ["plan", "{G}", *cpu, "--runtime", r])
    for e in ("y", "ARGS", "json"):
        add(f"plan-emit-{e}", ["plan", "{G}", *cpu, "--emit", e])
    for i, c in enumerate(["{S}/chartdir.svg", "{S}/missing/dir/chart.svg", "{C}/cwd/chart.txt", "{C}/cwd/chart",
                           "{S}", "{S}/fifo.svg", "/dev/null", "/proc/self/x.svg", "{C}/cwd/c.png"]):
        add(f"plan-chart-{i}", ["plan", "{G}", *cpu, "--chart", c])
    for i, d in enumerate(["gpu0", "cpu", "cuda0,,x", "CUDA99999999999999999999", "cuda0\n,rocm"]):
        add(f"estimate-devices-{i}", ["estimate", "{G}", "--devices", d])
    path_cmds = ["estimate", "check", "plan", "serve", "profile generate"]
    for i, (mid, m) in enumerate(BAD_MODELS):
        for cmd in (path_cmds[i % 5], path_cmds[(i + 2) % 5]):
            add(f"{cmd.replace(' ', '-')}-model-{mid}",
                [*cmd.split(), m] + (cpu if cmd in ("plan", "serve") else []))
        add(f"run-model-{mid}" if i % 2 else f"modelfile-model-{mid}", ["run" if i % 2 else "modelfile", m])
        if i % 3 == 0:
            add(f"run-name-{mid}", ["run", "--name", m, "gemma3:270m"])
    for i, name in enumerate(STORE_MODELS):
        add(f"plan-store-{name}", ["plan", f"{name}:latest", *cpu])
        other = ("serve", "estimate", "run")[i % 3]
        add(f"{other}-store-{name}", {"serve": ["serve", name, *cpu], "estimate": ["estimate", f"{name}:latest"],
                                      "run": ["run", "--pull", "--dry-run", *cpu, name]}[other])
    for i, args in enumerate(PASSTHROUGH):
        add(f"estimate-args-{i}", ["estimate", "{G}", *args])
        other = ("check", "serve", "profile generate")[i % 3]
        add(f"{other.replace(' ', '-')}-args-{i}", [*other.split(), "{G}", *(cpu if other == "serve" else []),
                                                     *(["--"] if other == "profile generate" else []), *args])
    for i, b in enumerate(["{S}/missing-server", "{S}", "{S}/notes.txt", "{S}/fifo", "/dev/null", ""]):
        add(f"check-llama-server-{i}", ["check", "{G}", "--llama-server", b])
        add(f"serve-llama-server-{i}", ["serve", "{G}", *cpu, "--llama-server", b])
    add("serve-no-llama-server", ["serve", "{G}", *cpu], {"AUTOCTX_LLAMA_SERVER": "{S}/missing-server"})
    for ref in PROFILE_REFS:
        add(f"profile-show-{ref!r}", ["profile", "show", ref])
        add(f"profile-rm-{ref!r}", ["profile", "rm", ref])
    for data in ("", "{S}/victim", "{S}/notes.txt", "{S}/fifo"):  # "": the default folder, in the sandbox's HOME
        env = {"AUTOCTX_DATA_DIR": data}
        where = data.rpartition("/")[2] or "default"
        for ref in ("", "fedc", "0123456789abcdef"):
            add(f"profile-show-{ref!r}-in-{where}", ["profile", "show", ref], env)
        add(f"profile-rm-all-fedc-in-{where}", ["profile", "rm", "--all", "fedc"], env)
        add(f"profile-rm-0123-in-{where}", ["profile", "rm", "0123"], env)
    for args in (["profile", "show"], ["profile", "rm"], ["profile", "list", "extra"], ["profile", "rm", "--all"],
                 ["profile", "generate"], ["frobnicate"], ["probe", "extra"], ["probe", "--jsn"], ["plan"],
                 ["estimate"], ["check"], ["serve"], ["run"], ["modelfile"], ["profile", "frob"], ["a\nb"],
                 ["plan", "{G}", "--fre", "cpu=1GiB"], ["plan", "{G}", "--free"], ["--free", "cpu=1GiB"],
                 ["run", "gemma3:270m", "--dry-run"], ["run", "--dry-run", "gemma3:270m"],
                 ["run", "--start-server", "--free", "cpu=1GiB", "gemma3:270m"], ["modelfile", "gemma3:270m"],
                 ["run", "--evict", "--pull", "qwen2.5:0.5b"], ["plan", "{G}", "--json", "--json", "--free", "x"]):
        add("misc-" + "_".join(a.replace("{G}", "G").replace("\n", "NL") for a in args), args)
    return out


CASES = _cases()


# --- the sandbox ----------------------------------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (symlinks not followed): its type, size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode)
                                             else 0, st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0)
    return out


def _manifest(digest: str, media: str = "application/vnd.ollama.image.model", size=1) -> str:
    return json.dumps({"schemaVersion": 2, "layers": [{"mediaType": media, "digest": digest, "size": size}]})


def _make_shared(root: Path) -> None:
    (root / "dir.gguf").mkdir()
    (root / "chartdir.svg").mkdir()
    os.mkfifo(root / "fifo")
    os.mkfifo(root / "fifo.gguf")
    os.mkfifo(root / "fifo.svg")
    (root / "empty.gguf").write_bytes(b"")
    (root / "text.gguf").write_text("hello, not a model\n")
    (root / "notes.txt").write_text("just notes\n")
    os.symlink("loop.gguf", root / "loop.gguf")
    for name in ("llama-server", "bin/llama-server", "bin/ollama"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(STAND_IN)
        (root / name).chmod(0o755)
    # a profile store that the profile commands must leave alone
    victim = root / "victim" / "profiles"
    victim.mkdir(parents=True)
    (victim / "0123456789abcdef.toml").write_text("not = [valid\n")
    (victim / "fedcba9876543210.toml").write_text('[key]\nid = "fedcba9876543210"\n')
    # an Ollama store whose every model is broken in its own way
    store = root / "store"
    blobs = store / "blobs"
    blobs.mkdir(parents=True)
    mdir = store / "manifests" / "registry.ollama.ai" / "library"

    def manifest(model: str, text: str | None) -> Path:
        (mdir / model).mkdir(parents=True)
        p = mdir / model / "latest"
        if text is not None:
            p.write_text(text)
        return p

    manifest("trav", _manifest("sha256:../../x"))
    manifest("dirblob", _manifest(f"sha256:{'1' * 64}"))
    (blobs / f"sha256-{'1' * 64}").mkdir()
    manifest("fifoblob", _manifest(f"sha256:{'2' * 64}"))
    os.mkfifo(blobs / f"sha256-{'2' * 64}")
    manifest("notjson", "{nope")
    manifest("linkout", _manifest(f"sha256:{'3' * 64}"))
    os.symlink("/etc/passwd", blobs / f"sha256-{'3' * 64}")
    manifest("nolayers", json.dumps({"layers": "x"}))
    manifest("devzero", _manifest(f"sha256:{'4' * 64}"))
    os.symlink("/dev/zero", blobs / f"sha256-{'4' * 64}")
    manifest("emptyblob", _manifest(f"sha256:{'5' * 64}"))
    (blobs / f"sha256-{'5' * 64}").write_bytes(b"")
    manifest("mdir", None).mkdir()
    os.mkfifo(manifest("fifomanifest", None))
    manifest("nomodel", _manifest(f"sha256:{HEX}", media="application/vnd.ollama.image.license"))
    manifest("badsize", _manifest(f"sha256:{HEX}", size=-1))


def _run_case(case, shared: Path, root: Path, gemma: str) -> dict:
    cid, argv, extra = case
    cdir = root / f"c{CASES.index(case):04d}"
    for sub in ("home", "data", "tmp", "cwd", "xdg"):
        (cdir / sub).mkdir(parents=True)

    def fill(s: str) -> str:
        return s.replace("{G}", gemma).replace("{S}", str(shared)).replace("{C}", str(cdir))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOCTX_", "OLLAMA_", "XDG_"))}
    env.update(HOME=str(cdir / "home"), TMPDIR=str(cdir / "tmp"), AUTOCTX_DATA_DIR=str(cdir / "data"),
               XDG_DATA_HOME=str(cdir / "xdg"), XDG_CACHE_HOME=str(cdir / "xdg"), XDG_CONFIG_HOME=str(cdir / "xdg"),
               XDG_STATE_HOME=str(cdir / "xdg"), OLLAMA_HOST="127.0.0.1:9", OLLAMA_MODELS=str(shared / "store"),
               AUTOCTX_LLAMA_SERVER=str(shared / "llama-server"), PATH=f"{shared / 'bin'}:{env.get('PATH', '')}",
               )
    env.update({k: fill(v) for k, v in extra.items()})
    before = _snapshot(cdir)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "autoctx.cli", *(fill(a) for a in argv)], cwd=cdir / "cwd", env=env,
                           capture_output=True, text=True, errors="replace", timeout=TIME_LIMIT,
                           stdin=subprocess.DEVNULL)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, str(e.stdout or ""), str(e.stderr or "")
    return {"rc": rc, "stdout": out, "stderr": err, "seconds": time.monotonic() - t0,
            "written": sorted(set(_snapshot(cdir).items()) ^ set(before.items()))}


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory, gemma_path):
    """Runs every case once (a thread pool of subprocesses) and checks that the shared files and the real Gemma
    are untouched; returns ({case id: result}, the shared folder)."""
    root = tmp_path_factory.mktemp("fuzz")
    shared = root / "shared"
    shared.mkdir()
    _make_shared(shared)
    before, gemma_before = _snapshot(shared), os.stat(gemma_path)
    with ThreadPoolExecutor(max_workers=max(2, min(8, (os.cpu_count() or 2) * 2))) as pool:
        results = dict(zip((c[0] for c in CASES),
                           pool.map(lambda c: _run_case(c, shared, root / "cases", gemma_path), CASES)))
    assert _snapshot(shared) == before, "a case changed the shared sandbox (the fake store, the victim profiles)"
    after = os.stat(gemma_path)
    assert (after.st_size, after.st_mtime_ns) == (gemma_before.st_size, gemma_before.st_mtime_ns)
    return results, shared


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 300


@pytest.mark.parametrize("cid", [c[0] for c in CASES])
def test_malformed_command_line(fuzz, cid):
    r = fuzz[0][cid]
    where = f"stdout:\n{r['stdout'][-2000:]}\nstderr:\n{r['stderr'][-3000:]}"
    assert r["rc"] is not None, f"hung: no exit within {TIME_LIMIT:.0f} s\n{where}"
    assert "Traceback" not in r["stderr"] + r["stdout"], where
    assert r["rc"] in (1, 2), f"exit status {r['rc']}\n{where}"
    lines = r["stderr"].splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("autoctx: error: ")]
    assert len(errors) == 1, f"not exactly one error line\n{where}"
    first = errors[0]
    # one line, the last; a server's log tail after "last lines:" is the only multi-line form
    assert first == len(lines) - 1 or lines[first].endswith("last lines:"), where
    assert all(line.startswith("autoctx: warning: ") for line in lines[:first]), where
    assert r["stdout"] == "", where
    assert not r["written"], f"wrote {r['written']}"


E = "autoctx: error: "
EXACT = {  # case id -> (exit status, the whole of stderr); {S} is the shared sandbox
    "plan-free-9": (2, E + "--free: unknown device 'cuda99999999999999999999': device numbers go up to 255"),
    "plan-free-16": (2, E + f"--free: bad size '{'9' * 400}': more than 1 PiB"),
    "plan-free-21": (2, E + "--free: unknown device 'cuda\u00b2' (examples: cpu, cuda0, rocm1)"),
    "plan-free-23": (2, E + "--free takes one DEVICE=SIZE, got 'cpu=4GiB,cuda0=1GiB': repeat --free for each device"),
    "plan-free-pair-2": (2, E + "--free names CUDA0 twice (one --free DEVICE=SIZE per device)"),
    "plan-margin-5": (2, E + "--margin: bad size '99999999999999999999TiB': more than 1 PiB"),
    "run-margin-1": (2, E + "--margin: bad size '-1GiB' (examples: 24GiB, 512MiB, 16G)"),  # before the server
    "plan-device-5": (2, E + "--device accepts only cpu, got '\\n' (GPUs come from the probe or --free)"),
    "plan--max-ctx=-5": (2, E + "--max-ctx must be between 0 and 4294967295 (0: the model's trained context), got -5"),
    "run--min-ctx=0": (2, E + "--min-ctx must be between 1 and 4294967295, got 0"),
    "plan-min-above-max": (2, E + "--min-ctx 8192 is above --max-ctx 4096"),
    "plan--parallel=0": (2, E + "--parallel must be between 1 and 256, got 0"),
    "plan--ubatch=100000000000": (2, E + "--ubatch must be between 1 and 2048 (the plan's batch size, -b 2048), "
                                          "got 1000000000000"),
    "serve--max-tries=0": (2, E + "--max-tries must be between 1 and 100, got 0"),
    "serve--timeout=nan": (2, E + "--timeout must be a number of seconds above 0, got nan"),
    "check--timeout=-1": (2, E + "--timeout must be a number of seconds above 0, got -1"),
    "plan-kv-types-1": (2, E + "--kv-types is empty (e.g. --kv-types f16,q8_0,q8_0/q4_0,q4_0)"),
    "plan-kv-type-0": (2, E + "--kv-type: 'f16/' is not a KV cache type nor K/V (e.g. q8_0 or q8_0/q4_0)"),
    "plan-kv-types-ollama-none": (2, E + "--kv-types 'q8_0/q4_0': Ollama uses one type for K and V; give at least "
                                          "one such type"),
    "plan-runtime-'x'": (2, E + "--runtime must be llamacpp or ollama, got 'x'"),
    "plan-chart-5": (2, E + "--chart {S}/fifo.svg is not a regular file; autoctx replaces only a regular file"),
    "estimate-devices-1": (2, E + "--devices lists GPUs and RPC devices only (the CPU is always there)"),
    "estimate-args-22": (2, E + f"-c {10**30} is out of range (llama-server reads a 32-bit integer)"),
    "estimate-args-24": (2, E + "-np 257: llama.cpp runs at most 256 slots (LLAMA_MAX_SEQ)"),
    "estimate-args-21": (2, E + "-ts expects proportions (numbers >= 0), got '-1,2'"),
    "serve-args-4": (2, E + "-fa expects on|off|auto, got 'maybe'"),  # before llama-server is asked anything
    "estimate-store-dirblob": (1, E + "dirblob:latest: no such file; estimate and check read a GGUF file (plan, serve, "
                                      "run and modelfile also take Ollama model names)"),
    "misc-aNLb": (2, E + "No such command 'a\\nb'."),  # a line break the user typed is shown escaped
    "plan-store-fifomanifest": (1, E + "fifomanifest:latest: the model store is not readable "
                                       "({S}/store/manifests/registry.ollama.ai/library/fifomanifest/latest: not a "
                                       "regular file)"),
}


@pytest.mark.parametrize("cid", sorted(EXACT))
def test_exact_message(fuzz, cid):
    results, shared = fuzz
    code, message = EXACT[cid]
    r = results[cid]
    assert (r["rc"], r["stderr"]) == (code, message.replace("{S}", str(shared)) + "\n")


def test_sizes_and_device_names():
    from autoctx.errors import ArgsError
    from autoctx.units import device_name, parse_size

    assert parse_size("1TiB") == 1024**4
    assert parse_size("1024TiB") == 1024**5  # 1 PiB: the largest size
    assert parse_size(" 1.5 g ") == 1.5 * 1024**3
    for bad in ("1025TiB", "9" * 400, "nan", "inf", "-1", "1e3", "\uff11", ""):
        with pytest.raises(ArgsError):
            parse_size(bad)
    assert [device_name(x) for x in ("cpu", "CUDA0", "cuda00", "rocm255", "vulkan1")] == \
        ["CPU", "CUDA0", "CUDA0", "ROCm255", "Vulkan1"]
    for bad in ("cuda256", "cuda\u00b2", "cuda\uff11", "cuda", "cuda-1", "gpu0", ""):
        with pytest.raises(ArgsError):
            device_name(bad)


def test_a_gpu_given_only_its_margin_plans_on_the_cpu(gemma_path, tmp_path):
    """--free cuda0=1GiB leaves nothing after the 1 GiB margin: every layer on the CPU, and a chart (it divided by a
    height of 0 before)."""
    r = subprocess.run([sys.executable, "-m", "autoctx.cli", "plan", gemma_path, "--free", "cuda0=1GiB", "--chart",
                        str(tmp_path / "c.svg")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AUTOCTX_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "GPU layers 0" in r.stdout and "'=' budget 0.00 GiB" in r.stdout
    assert (tmp_path / "c.svg").read_text().startswith("<svg")
