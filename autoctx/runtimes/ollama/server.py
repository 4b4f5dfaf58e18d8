"""The Ollama server autoctx plans for: where it is, its version, and the settings it will really use.

Since v0.30 Ollama runs llama-server with `-c num_ctx × OLLAMA_NUM_PARALLEL`, `-np OLLAMA_NUM_PARALLEL`, one KV cache
type for K and V from OLLAMA_KV_CACHE_TYPE (server-wide; no Modelfile parameter) and OLLAMA_FLASH_ATTENTION
(../shared/notes/ollama-facts.md). Those are environment variables of the `ollama serve` process, read here with
psutil; when they cannot be read, Ollama's defaults are assumed and said.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ...errors import AutoctxError

DEFAULT_PORT = 11434
ENV_KEYS = ("OLLAMA_KV_CACHE_TYPE", "OLLAMA_FLASH_ATTENTION", "OLLAMA_NUM_PARALLEL", "OLLAMA_CONTEXT_LENGTH",
            "OLLAMA_HOST", "OLLAMA_MODELS", "OLLAMA_GPU_OVERHEAD")


class OllamaServerError(AutoctxError):
    pass


class NoServer(OllamaServerError):
    """Nothing answers at the server's address."""


class Refused(OllamaServerError):
    """The server answered with an HTTP error."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class BadAnswer(OllamaServerError):
    """The server answered with something that is not the documented shape."""


def ollama_host(env: dict[str, str] | None = None) -> str:
    """OLLAMA_HOST as the client reads it: '0.0.0.0' → 127.0.0.1, default port 11434, http scheme."""
    env = os.environ if env is None else env
    raw = (env.get("OLLAMA_HOST") or "").strip()
    scheme = "http"
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
    raw = raw.rstrip("/")
    host, _, port = raw.rpartition(":") if raw.count(":") == 1 else (raw, "", "")
    host = host or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port or DEFAULT_PORT}"


@dataclass
class ServerSettings:
    """What the running server will use when it loads a model."""

    url: str
    version: str | None
    kv_cache_type: str = "f16"
    flash_attention: str = "auto"
    num_parallel: int = 1
    context_length: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_source: str = ""  # "ollama serve pid 123" or why it could not be read
    notes: list[str] = field(default_factory=list)

    @property
    def runs_llama_server(self) -> bool:
        """v0.30 and later run upstream llama-server: the llama.cpp rules apply as they are."""
        v = _version_tuple(self.version)
        return v is None or v >= (0, 30)


def _version_tuple(v: str | None) -> tuple[int, ...] | None:
    if not v:
        return None
    try:
        return tuple(int(x) for x in v.split("-")[0].split(".")[:2])
    except ValueError:
        return None


def one_line(text: object, limit: int = 300) -> str:
    """A server-supplied message as one line: whitespace runs (newlines included) become one space; long ones cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _endpoint(url: str, body: dict | None) -> str:
    return f"{'GET' if body is None else 'POST'} /api{url.rsplit('/api', 1)[-1]}"


def http_json(url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    """One JSON object from the Ollama API (urllib: no heavy import). Every failure is one line naming the
    endpoint: nothing listening (NoServer), an HTTP error (Refused), a stall past `timeout`, or an answer that is not
    a JSON object (BadAnswer)."""
    import socket

    base, endpoint = url.rsplit("/api", 1)[0], _endpoint(url, body)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read())["error"]
        except Exception:  # no body, not JSON, not an object, no "error"
            msg = e.reason
        raise Refused(f"Ollama at {base} refused {endpoint}: {one_line(msg)} (HTTP {e.code})", e.code) from None
    except (TimeoutError, socket.timeout):
        raise OllamaServerError(f"Ollama at {base} did not answer {endpoint} within {timeout:g} s") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise OllamaServerError(f"Ollama at {base} did not answer {endpoint} within {timeout:g} s") from None
        raise NoServer(f"no Ollama server at {base} ({one_line(reason)}): start it with `ollama serve`, or set "
                       "OLLAMA_HOST") from None
    try:
        value = json.loads(raw or b"{}")
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        raise BadAnswer(f"unexpected answer from Ollama {endpoint}: not JSON") from None
    if not isinstance(value, dict):
        raise BadAnswer(f"unexpected answer from Ollama {endpoint}: a JSON {_json_type(value)} where an object "
                        "belongs")
    return value


def _json_type(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def server_version(url: str, timeout: float = 10.0) -> str:
    """GET /api/version → the version string."""
    v = http_json(f"{url}/api/version", timeout=timeout).get("version")
    if not isinstance(v, str) or not v.strip():
        raise BadAnswer("unexpected answer from Ollama GET /api/version: no version string")
    return one_line(v, 40)


def serve_process_env(process_iter=None) -> tuple[dict[str, str], str]:
    """OLLAMA_* variables of the running `ollama serve` (psutil), and where they came from."""
    if process_iter is None:
        import psutil

        process_iter = psutil.process_iter
    denied = None
    for proc in process_iter(["pid", "name", "cmdline"]):
        info = getattr(proc, "info", {}) or {}
        cmd = info.get("cmdline") or []
        names = [info.get("name") or ""] + [os.path.basename(c) for c in cmd[:2]]
        if not (any(n.startswith("ollama") for n in names) and "serve" in cmd[1:3]):
            continue
        try:
            env = proc.environ()
        except Exception as e:  # psutil.AccessDenied: another user's process (the systemd service)
            denied = f"ollama serve pid {info.get('pid')} (environment not readable: {type(e).__name__})"
            continue
        return {k: v for k, v in env.items() if k in ENV_KEYS}, f"ollama serve pid {info.get('pid')}"
    return {}, denied or "no local `ollama serve` process found"


def server_settings(url: str | None = None, env_reader=serve_process_env, timeout: float = 10.0) -> ServerSettings:
    url = url or ollama_host()
    version = server_version(url, timeout=timeout)
    env, source = env_reader()
    s = ServerSettings(url=url, version=version, env=env, env_source=source)
    if not source.startswith("ollama serve pid") or "not readable" in source:
        s.notes.append(f"server environment unknown ({source}): assuming Ollama's defaults (KV f16, flash "
                       "attention auto, 1 parallel request)")
    kv = env.get("OLLAMA_KV_CACHE_TYPE", "f16").lower() or "f16"
    s.kv_cache_type = kv if kv in ("f16", "q8_0", "q4_0") else "f16"
    fa = env.get("OLLAMA_FLASH_ATTENTION", "").lower()
    s.flash_attention = "on" if fa in ("1", "true", "on") else "off" if fa in ("0", "false", "off") else "auto"
    try:
        s.num_parallel = max(1, int(env.get("OLLAMA_NUM_PARALLEL", "1") or 1))
    except ValueError:
        s.num_parallel = 1
    if env.get("OLLAMA_CONTEXT_LENGTH", "").isdigit():
        s.context_length = int(env["OLLAMA_CONTEXT_LENGTH"])
    if not s.runs_llama_server:
        s.notes.append(f"Ollama {version} predates 0.30 (its own runner): predictions follow llama.cpp's rules "
                       "and may differ by a few percent")
    return s


def enable_kv_instructions(kv: str) -> str:
    """How to make the server use a quantized KV cache: it is a server-wide setting."""
    return (f"OLLAMA_KV_CACHE_TYPE={kv} OLLAMA_FLASH_ATTENTION=1 ollama serve\n"
            "  or, for the systemd service: sudo systemctl edit ollama, add\n"
            "    [Service]\n"
            f"    Environment=\"OLLAMA_KV_CACHE_TYPE={kv}\"\n"
            "    Environment=\"OLLAMA_FLASH_ATTENTION=1\"\n"
            "  then: sudo systemctl restart ollama")


def start_server(kv_cache_type: str, log_path: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> int:
    """Start `ollama serve` with the KV type (and flash attention) the plan wants; wait for /api/version.
    Returns its pid. The server keeps running after autoctx exits, like a service would."""
    import shutil
    import subprocess

    from tenacity import RetryError, retry, retry_if_exception_type, stop_after_delay, wait_fixed

    exe = shutil.which("ollama")
    if not exe:
        raise OllamaServerError("--start-server: no `ollama` executable on PATH")
    child_env = dict(os.environ if env is None else env)
    child_env.update(OLLAMA_KV_CACHE_TYPE=kv_cache_type, OLLAMA_FLASH_ATTENTION="1")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([exe, "serve"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env, start_new_session=True)
    url = ollama_host(child_env)

    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), retry=retry_if_exception_type(NoServer))
    def up() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"`ollama serve` exited with status {proc.returncode} (log: {log_path})")
        server_version(url, timeout=2)

    try:
        up()
    except RetryError:
        proc.terminate()
        raise OllamaServerError(f"`ollama serve` did not answer within {timeout:.0f} s (log: {log_path})") from None
    except RuntimeError as e:
        raise OllamaServerError(str(e)) from None
    return proc.pid
