"""A local HTTP server that follows Ollama's documented API (docs/api.md) over a real on-disk model store.

Endpoints: GET /api/version, POST /api/show, POST /api/create, GET /api/ps, POST /api/generate, POST /api/chat,
POST /api/pull. Responses are shaped like Ollama's (streams are newline-delimited JSON). Models live in the
store's manifests; /api/create writes a manifest that reuses the base model's blobs plus a params/license layer,
as Ollama does. Knobs (attributes) let a test make the server refuse a create or spill a model to the CPU.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MEDIA = "application/vnd.ollama.image."


class FakeOllama:
    def __init__(self, store: Path, version: str = "0.32.15", port: int = 0):
        self.store = Path(store)
        self.version = version
        self.refuse_create = False
        self.spill_bytes = 0  # size - size_vram reported by /api/ps (CPU spill)
        self.bytes_per_token = 4096  # /api/ps size = model blob + num_ctx × this
        self.pull_source = ""  # /api/pull copies this model's manifest under the requested name
        self.loaded: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeOllama":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- store --------------------------------------------------------------------------------------------------
    def _manifest_path(self, name: str) -> Path:
        model, _, tag = name.partition(":")
        parts = model.split("/")
        host, ns = "registry.ollama.ai", "library"
        if len(parts) == 2:
            ns, model = parts
        elif len(parts) == 3:
            host, ns, model = parts
        return self.store / "manifests" / host / ns / model / (tag or "latest")

    def manifest(self, name: str) -> dict | None:
        p = self._manifest_path(name)
        return json.loads(p.read_text()) if p.is_file() else None

    def _blob(self, digest: str) -> Path:
        return self.store / "blobs" / digest.replace(":", "-")

    def _layer_text(self, m: dict, kind: str) -> list[str]:
        return [self._blob(x["digest"]).read_text() for x in m["layers"] if x["mediaType"] == MEDIA + kind]

    def _add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._blob(digest).write_bytes(data)
        return digest

    # --- API ----------------------------------------------------------------------------------------------------
    def show(self, name: str, verbose: bool = False) -> tuple[int, dict]:
        m = self.manifest(name)
        if m is None:
            return 404, {"error": f"model '{name}' not found"}
        params = {}
        for text in self._layer_text(m, "params"):
            params.update(json.loads(text))
        lines = [f"{k} {v}" for k, v in params.items()]
        out = {}
        if verbose:  # model_info with every key and the tensor list, read from the model blob
            from autoctx.gguf import GGUFArray, read_gguf

            blob = self._blob(next(x["digest"] for x in m["layers"] if x["mediaType"] == MEDIA + "model"))
            f = read_gguf(str(blob))
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
        base = self.manifest(body.get("from", ""))
        if base is None:
            return 404, {"error": f"model '{body.get('from')}' not found"}
        layers = [x for x in base["layers"] if x["mediaType"] not in (MEDIA + "params", MEDIA + "license")]
        if body.get("parameters"):
            d = self._add_blob(json.dumps(body["parameters"]).encode())
            layers.append({"mediaType": MEDIA + "params", "digest": d, "size": 1})
        lic = body.get("license")
        for text in ([lic] if isinstance(lic, str) else lic or []):
            d = self._add_blob(text.encode())
            layers.append({"mediaType": MEDIA + "license", "digest": d, "size": len(text)})
        p = self._manifest_path(body["model"])
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({**base, "layers": layers}))
        return 200, [{"status": "using existing layer"}, {"status": "writing manifest"}, {"status": "success"}]

    def load(self, name: str, options: dict) -> dict | None:
        m = self.manifest(name)
        if m is None:
            return None
        params = {}
        for text in self._layer_text(m, "params"):
            params.update(json.loads(text))
        params.update(options or {})
        ctx = int(params.get("num_ctx", 4096))
        model_layer = next(x for x in m["layers"] if x["mediaType"] == MEDIA + "model")
        size = model_layer["size"] + ctx * self.bytes_per_token
        self.loaded[name] = {"name": name, "model": name, "size": size, "digest": model_layer["digest"][7:],
                             "details": {"format": "gguf"}, "expires_at": "2026-11-23T23:59:59Z",
                             "size_vram": size - self.spill_bytes, "context_length": ctx}
        return self.loaded[name]

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
                        self.wfile.write((json.dumps(item) + "\n").encode())
                else:
                    self.wfile.write(json.dumps(payload).encode())

            def do_GET(self):
                srv.requests.append(("GET", self.path, {}))
                if self.path == "/api/version":
                    return self._send(200, {"version": srv.version})
                if self.path == "/api/ps":
                    return self._send(200, {"models": list(srv.loaded.values())})
                if self.path in ("/", "/api/tags"):
                    return self._send(200, {"models": []})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                srv.requests.append(("POST", self.path, body))
                stream = body.get("stream", True)
                name = body.get("model") or body.get("name", "")
                if self.path == "/api/show":
                    return self._send(*srv.show(name, bool(body.get("verbose"))))
                if self.path == "/api/create":
                    code, payload = srv.create(body)
                    return self._send(code, payload if stream or code != 200 else payload[-1],
                                      stream=stream and code == 200)
                if self.path in ("/api/generate", "/api/chat"):
                    if srv.load(name, body.get("options")) is None:
                        return self._send(404, {"error": f"model '{name}' not found"})
                    if body.get("keep_alive") == 0:
                        srv.loaded.pop(name, None)
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


