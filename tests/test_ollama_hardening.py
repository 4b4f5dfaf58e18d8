"""Bad input and bad servers give one line and a non-zero exit: model names that would leave the store, manifests of
the wrong shape, answers of the wrong shape, `{"error": ...}` events inside streams, stalled servers (timeouts), and
models whose license only quotes autoctx (never overwritten)."""

from __future__ import annotations

import json
import os

import pytest

from autoctx.runtimes.ollama.store import OllamaModelError, check_manifest, find_model

from .test_ollama_run import autoctx, creates, env, ollama  # noqa: F401  (fixtures)
from .test_ollama_store import GEMMA_SHA256, store  # noqa: F401

pytestmark = pytest.mark.slow  # ~110 cases of `autoctx run`/`modelfile` against bad servers: ~40 CPU s

RUN = ("run", "--device", "cpu", "--free", "cpu=2GiB")
NAME_FORMS = "(model, model:tag, ns/model:tag, host/ns/model:tag)"
MANIFEST = "manifests/registry.ollama.ai/library/gemma3/270m"


def last_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.rstrip("\n").splitlines()[-1]


# --- model names ------------------------------------------------------------------------------------------------
BAD_NAMES = ["../../etc/passwd", "a/../../b:tag", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "x:../../y", "..",
             ".hidden:tag", "a/b/c/d:e", "gemma3:270m/../../../x", "ns/..:tag", "host:99999999/ns/m:t"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_that_leave_the_store_are_refused_before_anything_is_opened(env, ollama, bad):  # noqa: F811
    for cmd in (RUN, ("modelfile", "--device", "cpu", "--free", "cpu=2GiB")):
        r = autoctx(env, *cmd, bad, "hi") if cmd is RUN else autoctx(env, *cmd, bad)
        assert r.returncode == 2, r.stderr
        assert last_line(r) == f"autoctx: error: {bad!r} is not an Ollama model name {NAME_FORMS}"
    assert ollama.requests == []  # nothing was asked of the server either


def test_a_bad_derived_name_is_refused(env, ollama):  # noqa: F811
    r = autoctx(env, *RUN[:1], "--name", "../../x", *RUN[1:], "gemma3:270m", "hi")
    assert r.returncode == 2
    assert last_line(r) == f"autoctx: error: '../../x' is not an Ollama model name {NAME_FORMS}"
    assert creates(ollama) == []


# --- manifests --------------------------------------------------------------------------------------------------
MODEL = "application/vnd.ollama.image.model"
GOOD_DIGEST = f"sha256:{GEMMA_SHA256}"


@pytest.mark.parametrize("manifest,why", [
    ([], "not a JSON object"),
    ("layers", "not a JSON object"),
    ({"schemaVersion": 2}, "layers is not an array"),
    ({"layers": {"0": {}}}, "layers is not an array"),
    ({"layers": ["x"]}, "layers[0] is not an object"),
    ({"layers": [{"mediaType": 5, "digest": GOOD_DIGEST}]}, "layers[0].mediaType is not a string"),
    ({"layers": [{"mediaType": MODEL, "digest": "sha256:../../x"}]},
     "layers[0].digest is not a sha256 digest: 'sha256:../../x'"),
    ({"layers": [{"mediaType": MODEL, "digest": "sha256:" + "A" * 64}]},
     "layers[0].digest is not a sha256 digest: 'sha256:" + "A" * 64 + "'"),
    ({"layers": [{"mediaType": MODEL, "digest": GOOD_DIGEST + "\n"}]},
     f"layers[0].digest is not a sha256 digest: '{GOOD_DIGEST}\\n'"),
    ({"layers": [{"mediaType": MODEL, "digest": 7}]}, "layers[0].digest is not a sha256 digest: int"),
    ({"layers": [{"mediaType": MODEL, "digest": GOOD_DIGEST, "size": -1}]}, "layers[0].size is not a byte count"),
    ({"layers": [{"mediaType": MODEL, "digest": GOOD_DIGEST},
                 {"mediaType": "application/vnd.ollama.image.license", "digest": "sha256-/etc/passwd"}]},
     "layers[1].digest is not a sha256 digest: 'sha256-/etc/passwd'"),
])
def test_manifests_of_the_wrong_shape(store, manifest, why):  # noqa: F811
    path = store / MANIFEST
    path.write_text(json.dumps(manifest))
    with pytest.raises(OllamaModelError) as e:
        find_model("gemma3:270m", env={"OLLAMA_MODELS": str(store)})
    assert str(e.value) == f"{path}: not a valid manifest ({why})"


def test_a_traversing_digest_opens_nothing_outside_the_store(store, tmp_path, env):  # noqa: F811
    """A digest pointing at a real GGUF outside the store (through ..) is refused, not read."""
    outside = tmp_path / "outside.gguf"
    outside.write_bytes((store / "blobs" / f"sha256-{GEMMA_SHA256}").read_bytes()[:64])
    (store / MANIFEST).write_text(json.dumps({"layers": [{"mediaType": MODEL, "digest": "sha256:../../outside.gguf"}]}))
    r = autoctx(env, "plan", "gemma3:270m", "--device", "cpu", "--free", "cpu=2GiB")
    assert r.returncode == 1
    assert last_line(r) == (f"autoctx: error: {store / MANIFEST}: not a valid manifest (layers[0].digest is not a "
                            "sha256 digest: 'sha256:../../outside.gguf')")


def test_check_manifest_keeps_a_good_one():
    m = {"schemaVersion": 2, "layers": [{"mediaType": MODEL, "digest": GOOD_DIGEST, "size": 3}]}
    assert check_manifest(m, "x") is m


# --- answers of the wrong shape ---------------------------------------------------------------------------------
def _ps_entry(**kw):
    return {"name": "gemma3:270m-autoctx", "model": "gemma3:270m-autoctx", **kw}


@pytest.mark.parametrize("path,answer,line", [
    ("/api/version", (200, [1, 2], False),
     "unexpected answer from Ollama GET /api/version: a JSON array where an object belongs"),
    ("/api/version", (200, {"version": 3}, False), "unexpected answer from Ollama GET /api/version: no version string"),
    ("/api/version", (200, "<html>", False), "unexpected answer from Ollama GET /api/version: not JSON"),
    ("/api/show", (200, [], False),
     "unexpected answer from Ollama POST /api/show: not a JSON object of the documented shape"),
    ("/api/show", (200, {"license": ["x"], "model_info": {}}, False),
     "unexpected answer from Ollama POST /api/show: license: Input should be a valid string"),
    ("/api/create", (200, {"status": "failed"}, False),
     "unexpected answer from Ollama POST /api/create: status 'failed', not 'success'"),
    ("/api/create", (200, "success", False),
     "unexpected answer from Ollama POST /api/create: not JSON (Expecting value)"),
    ("/api/ps", (200, {"models": 5}, False), "unexpected answer from Ollama GET /api/ps: models: Input should be "
                                             "an instance of Sequence"),
    ("/api/ps", (200, {"models": [_ps_entry(size_vram=1)]}, False),
     "unexpected answer from Ollama GET /api/ps: models.0 (gemma3:270m-autoctx) has no size"),
    ("/api/ps", (200, {"models": [_ps_entry(size=1, size_vram="lots")]}, False),
     "unexpected answer from Ollama GET /api/ps: models.0.size_vram: could not parse value and unit from byte string"),
    ("/api/ps", (200, {"models": [{"size": 1, "size_vram": 1}]}, False),
     "unexpected answer from Ollama GET /api/ps: models.0 has no name"),
])
def test_answers_of_the_wrong_shape_name_the_endpoint(env, ollama, path, answer, line):  # noqa: F811
    ollama.answers[path] = answer
    r = autoctx(env, *RUN, "gemma3:270m", "hi")
    assert r.returncode == 1
    assert last_line(r) == f"autoctx: error: {line}"


def _stream_only(events):
    """Answer streamed requests with these events; let the (unstreamed) load through."""
    return lambda body: (200, events, True) if body.get("stream", True) and body.get("prompt") else None


@pytest.mark.parametrize("events,line", [
    ([{"model": "m", "response": "par", "done": False}, {"error": "model runner has unexpectedly stopped"}],
     "ollama: model runner has unexpectedly stopped"),
    ([{"error": "first line\nsecond\tline"}], "ollama: first line second line"),
    (["garbage\n"], "unexpected answer from Ollama POST /api/generate: not JSON (Expecting value)"),
    ([["x"]], "unexpected answer from Ollama POST /api/generate: not a JSON object of the documented shape"),
    ([{"response": 5}], "unexpected answer from Ollama POST /api/generate: response: Input should be a valid string"),
])
def test_generate_stream_errors_are_one_line(env, ollama, events, line):  # noqa: F811
    ollama.answers["/api/generate"] = _stream_only(events)
    r = autoctx(env, *RUN, "gemma3:270m", "hello")
    assert r.returncode == 1
    assert last_line(r) == f"autoctx: error: {line}"


def test_an_error_event_inside_a_pull(env, ollama):  # noqa: F811
    ollama.answers["/api/pull"] = (200, [{"status": "pulling manifest"}, {"error": "pull model manifest: file does "
                                                                                  "not exist"}], True)
    r = autoctx(env, "run", "--pull", *RUN[1:], "gemma3:latest", "hi")
    assert r.returncode == 1
    assert last_line(r) == "autoctx: error: ollama: pull model manifest: file does not exist"
    # the progress line (its \r reads as a newline here) is ended before the error line
    assert r.stderr.splitlines()[-2].strip() == "pulling gemma3:latest: pulling manifest"


def test_a_pull_that_ends_before_success(env, ollama):  # noqa: F811
    ollama.answers["/api/pull"] = (200, [{"status": "pulling manifest"}], True)
    r = autoctx(env, "run", "--pull", *RUN[1:], "gemma3:latest", "hi")
    assert r.returncode == 1
    assert last_line(r) == ("autoctx: error: ollama: the pull of gemma3:latest ended before success (last status "
                            "'pulling manifest')")


def test_an_http_error_with_a_body_of_the_wrong_shape(env, ollama):  # noqa: F811
    ollama.answers["/api/create"] = (500, [1], False)
    r = autoctx(env, *RUN, "gemma3:270m", "hi")
    assert r.returncode == 1
    assert last_line(r) == ("autoctx: error: unexpected answer from Ollama POST /api/create: not a JSON object of "
                            "the documented shape")


# --- timeouts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["option", "env"])
def test_a_stalled_load_times_out(env, ollama, how):  # noqa: F811
    ollama.stall.add("/api/generate")
    args = ["--timeout", "1"] if how == "option" else []
    if how == "env":
        env["AUTOCTX_OLLAMA_TIMEOUT"] = "1.5"
    r = autoctx(env, "run", *args, *RUN[1:], "gemma3:270m", "hi")
    assert r.returncode == 1
    want = "1" if how == "option" else "1.5"
    assert last_line(r) == (f"autoctx: error: Ollama at {ollama.url} did not answer POST /api/generate within {want} "
                            "s (more time: --timeout SECONDS or AUTOCTX_OLLAMA_TIMEOUT)")


def test_a_stalled_server_times_out_on_version_and_show(env, ollama):  # noqa: F811
    ollama.stall.add("/api/version")
    r = autoctx(env, "run", "--timeout", "1", *RUN[1:], "gemma3:270m", "hi")
    assert r.returncode == 1
    assert last_line(r) == f"autoctx: error: Ollama at {ollama.url} did not answer GET /api/version within 1 s"
    ollama.stall = {"/api/show"}
    r = autoctx(env, "run", "--timeout", "1", *RUN[1:], "gemma3:270m", "hi")
    assert last_line(r) == (f"autoctx: error: Ollama at {ollama.url} did not answer POST /api/show within 1 s "
                            "(more time: --timeout SECONDS or AUTOCTX_OLLAMA_TIMEOUT)")


@pytest.mark.parametrize("args,envval,line", [
    (["--timeout", "-1"], None, "--timeout must be a number of seconds above 0, not '-1.0'"),
    ([], "soon", "AUTOCTX_OLLAMA_TIMEOUT must be a number of seconds above 0, not 'soon'"),
    ([], "inf", "AUTOCTX_OLLAMA_TIMEOUT must be a number of seconds above 0, not 'inf'"),
])
def test_bad_timeouts(env, ollama, args, envval, line):  # noqa: F811
    if envval:
        env["AUTOCTX_OLLAMA_TIMEOUT"] = envval
    r = autoctx(env, "run", *args, *RUN[1:], "gemma3:270m", "hi")
    assert r.returncode == 1
    assert last_line(r) == f"autoctx: error: {line}"


def test_the_client_gets_a_timeout_on_every_call(monkeypatch):
    """The ollama client's own default is no timeout at all: every client autoctx makes has one."""
    import httpx

    from autoctx.runtimes.ollama.client import CONNECT_TIMEOUT, OllamaAPI, SHORT_TIMEOUT

    monkeypatch.delenv("AUTOCTX_OLLAMA_TIMEOUT", raising=False)
    api = OllamaAPI("http://127.0.0.1:9")
    long, short = api._client(True)._client.timeout, api._client(False)._client.timeout
    assert long == httpx.Timeout(600.0, connect=CONNECT_TIMEOUT)
    assert short == httpx.Timeout(SHORT_TIMEOUT, connect=CONNECT_TIMEOUT)


# --- ownership --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("license", [
    "Generated by autoctx from gemma3:270m: this text quotes the old marker",
    "autoctx-derived-model: another:model",
    "see autoctx-derived-model: gemma3:270m-autoctx",  # the marker inside a line, not the line
    "autoctx-derived-model: gemma3:270m-autoctx ",
    "autoctx-derived-model:  gemma3:270m-autoctx",
])
def test_a_license_that_quotes_the_marker_is_not_ownership(env, ollama, license):  # noqa: F811
    ollama.create({"model": "gemma3:270m-autoctx", "from": "gemma3:270m", "parameters": {"num_ctx": 2048},
                   "license": ["MIT License", license]})
    ollama.requests.clear()
    r = autoctx(env, *RUN, "gemma3:270m", "hi")
    assert r.returncode == 1
    assert last_line(r) == ("autoctx: error: a model named gemma3:270m-autoctx already exists and was not created by "
                            "autoctx; pick another name with --name")
    assert creates(ollama) == []
    assert ollama.params(ollama.manifest("gemma3:270m-autoctx")) == {"num_ctx": 2048}


def test_autoctx_replaces_its_own_model_and_only_by_the_exact_line(env, ollama):  # noqa: F811
    ollama.create({"model": "gemma3:270m-autoctx", "from": "gemma3:270m", "parameters": {"num_ctx": 2048},
                   "license": ["Gemma Terms of Use", "autoctx-derived-model: gemma3:270m-autoctx", "old text"]})
    ollama.requests.clear()
    r = autoctx(env, *RUN, "gemma3:270m", "hi")
    assert r.returncode == 0, r.stderr
    assert "autoctx: updated gemma3:270m-autoctx (num_ctx=32768, KV f16)" in r.stderr
    (req,) = creates(ollama)
    assert req["parameters"] == {"num_ctx": 32768}
    assert ollama.params(ollama.manifest("gemma3:270m-autoctx")) == {"num_ctx": 32768}


def test_one_line_helper():
    from autoctx.runtimes.ollama.server import one_line

    assert one_line("a\n b\r\n\tc") == "a b c"
    assert one_line("x" * 400) == "x" * 299 + "…"


def test_a_missing_env_store_does_not_matter_to_name_checks(tmp_path):
    with pytest.raises(OllamaModelError, match="is not an Ollama model name"):
        find_model("../x", env={"OLLAMA_MODELS": str(tmp_path)})
    assert not os.path.exists(tmp_path / "manifests")
