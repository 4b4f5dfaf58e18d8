"""A local HTTP server that follows Ollama's documented API (docs/api.md) over a real on-disk model store.

Endpoints: GET /api/version, POST /api/show, POST /api/create, GET /api/ps, POST /api/generate, POST /api/chat,
POST /api/pull. Responses are shaped like Ollama's (streams are newline-delimited JSON). Models live in the
store's manifests; /api/create writes a manifest that reuses the base model's layers, appends the license layers
and merges the parameters, as Ollama's server/create.go does (setLicense appends, setParameters merges).

Memory: with `llama_server` (a path), loading a model starts the real llama-server with the argv Ollama ≥ 0.30
builds (llm/llama_server.go startLlamaServer, commit 00f6d62): `--model <blob> --port P --host 127.0.0.1 --no-webui
--offline -c num_ctx×num_parallel -np num_parallel --log-verbosity 4 --no-log-prefix --no-log-timestamps`, then
`--mmproj <projector blob>` for a projector layer, `--cache-type-k X --cache-type-v X` when OLLAMA_KV_CACHE_TYPE is
set, `--flash-attn on|off|auto` from OLLAMA_FLASH_ATTENTION, `-b N -ub N` for num_batch, `-ngl N` only when num_gpu
is set (otherwise nothing: llama-server's own --fit, on by default, places the layers), `-t N` for num_thread.
/api/ps then answers size and size_vram from the buffers that server printed (autoctx's log parser, and Ollama's
accounting rule in autoctx.runtimes.ollama.memory) and context_length = num_ctx. Every llama-server is stopped on
unload (keep_alive 0), when a load with other options replaces it, and at exit. Without `llama_server` the sizes are
invented (model blob + num_ctx × bytes_per_token): only for tests of plumbing, never of memory.

Knobs (attributes) let a test make the server refuse a create, spill a model to the CPU, stall on an endpoint, or
answer an endpoint with anything at all (`answers`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autoctx.runtimes.llamacpp.launch import LlamaServer
from autoctx.runtimes.llamacpp.server import ServerError

MEDIA = "application/vnd.ollama.image."
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class FakeOllama:
    def __init__(self, store: Path, version: str = "0.32.15", port: int = 0, llama_server: str | None = None,
                 env: dict[str, str] | None = None):
        self.store = Path(store)
        self.version = version
        self.llama_server = llama_server
        self.env = dict(env or {})  # the OLLAMA_* environment this `ollama serve` runs with
        # not Ollama's: --no-warmup allocates nothing less and saves the test a forward pass
        self.extra_args = ["--no-warmup"]
        # a host without GPUs: Ollama's scheduler falls back to num_gpu 0 ("GPU not available, falling back to CPU",
        # server/sched.go; UNVERIFIED for ≥ 0.30). Without it a CPU-only llama-server says "offloaded 19/19 layers to
        # GPU", which Ollama's accounting reads as 100 % GPU and /api/ps would answer size 0.
        self.cpu_only = True
        self.refuse_create = False
        self.spill_bytes = 0  # invented sizes only: size - size_vram reported by /api/ps (CPU spill)
        self.bytes_per_token = 4096  # invented sizes only: /api/ps size = model blob + num_ctx × this
        self.pull_source = ""  # /api/pull copies this model's manifest under the requested name
        # path → (HTTP status, payload, streamed), or a function of the request body giving that (None: answer as usual)
        self.answers: dict[str, object] = {}
        self.stall: set[str] = set()  # paths whose handler waits (until exit) instead of answering
        self.loaded: dict[str, dict] = {}
        self.runners: dict[str, LlamaServer] = {}
        self.logs: dict[str, str] = {}  # model → the log of its last llama-server (kept after it stops)
        self.requests: list[tuple[str, str, dict]] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._tmp: Path | None = None  # the runners' logs, made at the first real load and removed on exit
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeOllama":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.stop_all()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def stop_all(self) -> None:
        with self._lock:
            for name in list(self.runners):
                self._stop(name)

    def _stop(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner is not None:
            runner.stop()
            self.logs[name] = runner.log_text()

    # --- store --------------------------------------------------------------------------------------------------
    @staticmethod
    def valid(name: str) -> bool:
        """Ollama's name rules, roughly: [host/][ns/]model[:tag], each part one plain path component."""
        model, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
        parts = model.split("/")
        host_ok = len(parts) < 3 or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*(:\d+)?", parts[0]) is not None
        return 1 <= len(parts) <= 3 and host_ok and all(_PART.fullmatch(p) for p in [*parts[-2:], tag])

    def _manifest_path(self, name: str) -> Path:
        if not self.valid(name):
            raise ValueError(f"invalid model name {name!r}")
        model, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
        parts = model.split("/")
        host, ns = "registry.ollama.ai", "library"
        if len(parts) == 2:
            ns, model = parts
        elif len(parts) == 3:
            host, ns, model = parts
        return self.store / "manifests" / host / ns / model / (tag or "latest")

    def manifest(self, name: str) -> dict | None:
        try:
            p = self._manifest_path(name)
        except ValueError:
            return None
        return json.loads(p.read_text()) if p.is_file() else None

    def _blob(self, digest: str) -> Path:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest
        return self.store / "blobs" / digest.replace(":", "-")

    def _layers(self, m: dict, kind: str) -> list[dict]:
        return [x for x in m["layers"] if x["mediaType"] == MEDIA + kind]

    def _layer_text(self, m: dict, kind: str) -> list[str]:
        return [self._blob(x["digest"]).read_text() for x in self._layers(m, kind)]

    def _add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._blob(digest).write_bytes(data)
        return digest

    def params(self, m: dict) -> dict:
        out: dict = {}
        for text in self._layer_text(m, "params"):
            out.update(json.loads(text))
        return out

    # --- API ----------------------------------------------------------------------------------------------------
    def show(self, name: str, verbose: bool = False) -> tuple[int, dict]:
        m = self.manifest(name)
        if m is None:
            return 404, {"error": f"model '{name}' not found"}
        lines = [f"{k} {v}" for k, v in self.params(m).items()]
        out = {}
        if verbose:  # model_info with every key and the tensor list, read from the model blob
            from autoctx.gguf import GGUFArray, read_gguf

            f = read_gguf(str(self._blob(self._layers(m, "model")[0]["digest"])))
            out["model_info"] = {k: v for k, v in f.metadata.items() if not isinstance(v, GGUFArray)}
            out["tensors"] = [{"name": t.name, "type": t.type_name.upper(), "shape": list(t.shape)}
                              for t in f.tensors]
        return 200, {**out, "license": "\n".join(self._layer_text(m, "license")), "parameters": "\n".join(lines),
                     "modelfile": f"FROM {name}\n" + "".join(f"PARAMETER {x}\n" for x in lines),
                     "details": {"format": "gguf", "family": "gemma3"},
                     "model_info": out.get("model_info", {"general.architecture": "gemma3"})}

    def create(self, body: dict) -> tuple[int, dict | list]:
        if self.refuse_create:
            return 403, {"error": "permission denied: models directory is read-only"}
        if not self.valid(body.get("model", "")):
            return 400, {"error": "invalid model name"}
        base = self.manifest(body.get("from", ""))
        if base is None:
            return 404, {"error": f"model '{body.get('from')}' not found"}
        layers = [x for x in base["layers"] if x["mediaType"] != MEDIA + "params"]
        params = {**self.params(base), **(body.get("parameters") or {})}
        if params:
            d = self._add_blob(json.dumps(params).encode())
            layers.append({"mediaType": MEDIA + "params", "digest": d, "size": 1})
        lic = body.get("license")
        for text in ([lic] if isinstance(lic, str) else lic or []):
            d = self._add_blob(text.encode())
            layers.append({"mediaType": MEDIA + "license", "digest": d, "size": len(text)})
        p = self._manifest_path(body["model"])
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({**base, "layers": layers}))
        return 200, [{"status": "using existing layer"}, {"status": "writing manifest"}, {"status": "success"}]

    def num_parallel(self) -> int:
        return max(1, int(self.env.get("OLLAMA_NUM_PARALLEL") or 1))

    def runner_argv(self, m: dict, opts: dict, port: int) -> list[str]:
        """llama-server's argv as Ollama's startLlamaServer builds it (see the module docstring)."""
        np_ = self.num_parallel()
        argv = [self.llama_server or "llama-server", "--model", str(self._blob(self._layers(m, "model")[0]["digest"])),
                "--port", str(port), "--host", "127.0.0.1", "--no-webui", "--offline",
                "-c", str(int(opts["num_ctx"]) * np_), "-np", str(np_),
                "--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps"]
        for proj in self._layers(m, "projector")[:1]:
            argv += ["--mmproj", str(self._blob(proj["digest"]))]
        kv = self.env.get("OLLAMA_KV_CACHE_TYPE", "")
        if kv:
            argv += ["--cache-type-k", kv, "--cache-type-v", kv]
        fa = self.env.get("OLLAMA_FLASH_ATTENTION", "").lower()
        argv += ["--flash-attn", "on" if fa in ("1", "true", "t") else "off" if fa in ("0", "false", "f") else "auto"]
        if int(opts.get("num_batch", 0)) > 0:
            argv += ["-b", str(opts["num_batch"]), "-ub", str(opts["num_batch"])]
        if "num_gpu" in opts and int(opts["num_gpu"]) >= 0:
            argv += ["-ngl", str(int(opts["num_gpu"]))]
        elif self.cpu_only:
            argv += ["-ngl", "0"]
        if int(opts.get("num_thread", 0)) > 0:
            argv += ["-t", str(opts["num_thread"])]
        return argv + self.extra_args

    def _context_cap(self, blob: Path) -> int | None:
        from autoctx.gguf import read_gguf

        md = read_gguf(str(blob)).metadata
        v = md.get(f"{md.get('general.architecture')}.context_length")
        return int(v) if isinstance(v, int) else None

    def load(self, name: str, options: dict) -> dict | None:
        """Load (or keep) the model; returns its /api/ps entry, or {"error": ...} when its runner failed."""
        m = self.manifest(name)
        if m is None:
            return None
        opts = {**self.params(m), **(options or {})}
        model_layer = self._layers(m, "model")[0]
        blob = self._blob(model_layer["digest"])
        ctx = int(opts.get("num_ctx") or self.env.get("OLLAMA_CONTEXT_LENGTH") or 4096)
        cap = self._context_cap(blob)
        opts["num_ctx"] = min(ctx, cap) if cap else ctx  # llm/server.go: num_ctx is capped at the GGUF's
        ctx = opts["num_ctx"]
        base = {"name": name, "model": name, "digest": model_layer["digest"][7:], "details": {"format": "gguf"},
                "expires_at": "2026-11-23T23:59:59Z", "context_length": ctx}
        if not self.llama_server:
            size = model_layer["size"] + ctx * self.bytes_per_token
            self.loaded[name] = {**base, "size": size, "size_vram": 0 if self.cpu_only else size - self.spill_bytes}
            return self.loaded[name]
        with self._lock:
            runner = self.runners.get(name)
            if runner is not None and self.loaded.get(name, {}).get("_opts") == opts and runner.proc.poll() is None:
                return self.loaded[name]
            self._stop(name)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="fake-ollama-"))
            argv = self.runner_argv(m, opts, port)  # carries --port, --host and a log verbosity: used as they are
            runner = LlamaServer(argv[0], argv[1:], log_path=self._tmp / f"runner-{len(self.logs)}-{port}.log")
            runner.start()
            self.runners[name] = runner
            try:
                ok = runner.wait_ready(120)
            except ServerError:  # no /health in time: stopped, like a load Ollama gives up on
                ok = False
            text = runner.log_text()
            self.logs[name] = text
            if not ok:
                self._stop(name)
                self.loaded.pop(name, None)
                tail = " ".join(text.strip().splitlines()[-3:])
                return {"error": f"llama-server terminated: {tail}"}
            from autoctx.runtimes.llamacpp.logparse import parse_server_log
            from autoctx.runtimes.ollama.memory import logged_ps_sizes

            sizes = logged_ps_sizes(parse_server_log(text), blob.stat().st_size)
            self.loaded[name] = {**base, "size": sizes.size, "size_vram": sizes.size_vram, "_opts": opts}
            return self.loaded[name]

    def unload(self, name: str) -> None:
        with self._lock:
            self._stop(name)
            self.loaded.pop(name, None)

    def ps(self) -> list[dict]:
        return [{k: v for k, v in e.items() if not k.startswith("_")} for e in self.loaded.values()]

    def _handler(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, payload, stream: bool = False):
                self.send_response(code)
                self.send_header("Content-Type", "application/x-ndjson" if stream else "application/json")
                self.end_headers()
                if stream and isinstance(payload, list):
                    for item in payload:
                        self.wfile.write((item if isinstance(item, str) else json.dumps(item) + "\n").encode())
                elif isinstance(payload, (bytes, str)):
                    self.wfile.write(payload.encode() if isinstance(payload, str) else payload)
                else:
                    self.wfile.write(json.dumps(payload).encode())

            def _override(self, body: dict) -> bool:
                if self.path in srv.stall:
                    srv._release.wait(120)
                    return True
                answer = srv.answers.get(self.path)
                if callable(answer):
                    answer = answer(body)
                if answer is not None:
                    self._send(*answer)
                    return True
                return False

            def do_GET(self):
                srv.requests.append(("GET", self.path, {}))
                if self._override({}):
                    return
                if self.path == "/api/version":
                    return self._send(200, {"version": srv.version})
                if self.path == "/api/ps":
                    return self._send(200, {"models": srv.ps()})
                if self.path in ("/", "/api/tags"):
                    return self._send(200, {"models": []})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                srv.requests.append(("POST", self.path, body))
                if self._override(body):
                    return
                stream = body.get("stream", True)
                name = body.get("model") or body.get("name", "")
                if self.path == "/api/show":
                    return self._send(*srv.show(name, bool(body.get("verbose"))))
                if self.path == "/api/create":
                    code, payload = srv.create(body)
                    return self._send(code, payload if stream or code != 200 else payload[-1],
                                      stream=stream and code == 200)
                if self.path == "/api/generate" and body.get("keep_alive") == 0 and not body.get("prompt"):
                    if srv.manifest(name) is None:
                        return self._send(404, {"error": f"model '{name}' not found"})
                    srv.unload(name)
                    return self._send(200, {"model": name, "response": "", "done": True, "done_reason": "unload"})
                if self.path in ("/api/generate", "/api/chat"):
                    entry = srv.load(name, body.get("options"))
                    if entry is None:
                        return self._send(404, {"error": f"model '{name}' not found"})
                    if "error" in entry:
                        return self._send(500, entry)
                    if body.get("keep_alive") == 0:
                        srv.unload(name)
                    text = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content", "")
                    words = [f"echo: {text}"] if text else []
                    if self.path == "/api/chat":
                        chunks = [{"model": name, "message": {"role": "assistant", "content": w}, "done": False}
                                  for w in words] + [{"model": name, "message": {"role": "assistant",
                                                                                  "content": ""}, "done": True}]
                    else:
                        chunks = [{"model": name, "response": w, "done": False} for w in words] + \
                                 [{"model": name, "response": "", "done": True, "done_reason": "stop"}]
                    return self._send(200, chunks if stream else chunks[-1] | {"response": "".join(words)},
                                      stream=stream)
                if self.path == "/api/pull":
                    source = srv.manifest(srv.pull_source) if srv.pull_source else None
                    if source is None:
                        return self._send(404, {"error": "pull model manifest: file does not exist"})
                    if not srv.valid(name):
                        return self._send(400, {"error": "invalid model name"})
                    p = srv._manifest_path(name)
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(json.dumps(source))
                    total = source["layers"][0]["size"]
                    events = [{"status": "pulling manifest"}] + [
                        {"status": f"pulling {source['layers'][0]['digest'][7:19]}", "digest":
                         source["layers"][0]["digest"], "total": total, "completed": total * i // 4}
                        for i in range(1, 5)] + [{"status": "verifying sha256 digest"}, {"status": "success"}]
                    return self._send(200, events, stream=True)
                self._send(404, {"error": "not found"})

        return H
