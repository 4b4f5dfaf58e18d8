"""The Ollama API through the `ollama` Python client, bounded and checked.

Every call has a timeout (the client's default is none, so a stalled server would hang `autoctx run`): connecting
gets CONNECT_TIMEOUT seconds; a quick call (show, ps, create) SHORT_TIMEOUT; a call that may load a model or stream
(load, generate, chat, pull) `timeout` seconds without a byte from the server — default DEFAULT_TIMEOUT, changed with
`autoctx run --timeout` or AUTOCTX_OLLAMA_TIMEOUT. Every failure becomes one OllamaServerError line that names the
endpoint: HTTP errors, `{"error": ...}` events inside a stream (`ollama: <message>`), timeouts, broken connections,
and answers of the wrong shape (pydantic validation, JSON that is not an object, fields missing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ...errors import AutoctxError
from .server import BadAnswer, NoServer, OllamaServerError, Refused, one_line

CONNECT_TIMEOUT = 5.0
SHORT_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 600.0
TIMEOUT_ENV = "AUTOCTX_OLLAMA_TIMEOUT"


def load_timeout(given: float | None = None, env: dict[str, str] | None = None) -> float:
    """Seconds a load/generate/pull may go without an answer: `given` (--timeout), else $AUTOCTX_OLLAMA_TIMEOUT,
    else DEFAULT_TIMEOUT."""
    env = os.environ if env is None else env
    if given:
        value, where = given, "--timeout"
    elif env.get(TIMEOUT_ENV, "").strip():
        value, where = env[TIMEOUT_ENV].strip(), TIMEOUT_ENV
    else:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise AutoctxError(f"{where} must be a number of seconds above 0, not {one_line(value, 40)!r}")
    return seconds


@dataclass
class Loaded:
    """One entry of GET /api/ps."""

    name: str
    size: int
    size_vram: int
    context_length: int | None


class OllamaAPI:
    def __init__(self, url: str, timeout: float | None = None):
        self.url = url
        self.timeout = load_timeout(timeout)
        self._clients: dict[bool, Any] = {}

    def _client(self, long: bool):
        if long not in self._clients:
            import httpx
            import ollama  # heavy (pydantic + httpx): only here

            read = self.timeout if long else min(self.timeout, SHORT_TIMEOUT)
            self._clients[long] = ollama.Client(host=self.url,
                                                timeout=httpx.Timeout(read, connect=min(CONNECT_TIMEOUT, read)))
        return self._clients[long]

    # --- errors -------------------------------------------------------------------------------------------------
    def _one_line(self, e: BaseException, endpoint: str, what: str, long: bool) -> OllamaServerError | None:
        """The one-line error for an exception out of the client, or None for one that is not the server's doing."""
        import httpx
        import ollama
        import pydantic

        read = self.timeout if long else min(self.timeout, SHORT_TIMEOUT)
        if isinstance(e, ollama.ResponseError):
            if e.status_code == -1:  # an {"error": ...} event inside a stream (the HTTP status was 200)
                return OllamaServerError(f"ollama: {one_line(e.error)}")
            return Refused(f"Ollama refused to {what}: {one_line(e.error)} (HTTP {e.status_code})", e.status_code)
        if isinstance(e, (ConnectionError, httpx.ConnectError)):  # the client turns httpx.ConnectError into this
            return NoServer(f"no Ollama server at {self.url} ({endpoint}: connection refused): start it with "
                            "`ollama serve`, or set OLLAMA_HOST")
        if isinstance(e, httpx.ConnectTimeout):
            return NoServer(f"Ollama at {self.url} did not accept a connection within "
                            f"{min(CONNECT_TIMEOUT, read):g} s ({endpoint})")
        if isinstance(e, httpx.TimeoutException):
            hint = f" (more time: --timeout SECONDS or {TIMEOUT_ENV})" if read == self.timeout else ""
            return OllamaServerError(f"Ollama at {self.url} did not answer {endpoint} within {read:g} s{hint}")
        if isinstance(e, (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL)):
            return OllamaServerError(f"Ollama at {self.url}: {endpoint} failed ({type(e).__name__}: "
                                     f"{one_line(e) or 'no detail'})")
        if isinstance(e, pydantic.ValidationError):
            err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid"}
            loc = ".".join(str(x) for x in err.get("loc", ())) or "answer"
            return BadAnswer(f"unexpected answer from Ollama {endpoint}: {loc}: {one_line(err.get('msg', ''))}")
        if isinstance(e, json.JSONDecodeError):
            return BadAnswer(f"unexpected answer from Ollama {endpoint}: not JSON ({e.msg})")
        if isinstance(e, (TypeError, AttributeError, KeyError, ValueError)):
            # the client did `cls(**answer)` / `answer.get(...)` on a JSON array, string or number
            return BadAnswer(f"unexpected answer from Ollama {endpoint}: not a JSON object of the documented shape")
        return None

    def _call(self, endpoint: str, what: str, fn: Callable[[Any], Any], long: bool = False) -> Any:
        try:
            return fn(self._client(long))
        except Exception as e:
            err = self._one_line(e, endpoint, what, long)
            if err is None:
                raise
            raise err from None

    def _stream(self, endpoint: str, what: str, fn: Callable[[Any], Iterator[Any]]) -> Iterator[Any]:
        """The events of a streamed call; the request itself happens at the first event (inside the guard)."""
        it = self._call(endpoint, what, fn, long=True)
        while True:
            try:
                event = next(it)
            except StopIteration:
                return
            except Exception as e:
                err = self._one_line(e, endpoint, what, True)
                if err is None:
                    raise
                raise err from None
            yield event

    # --- endpoints ----------------------------------------------------------------------------------------------
    def show(self, name: str):
        """POST /api/show → the client's ShowResponse, or None when the server has no such model (HTTP 404)."""
        try:
            return self._call("POST /api/show", f"show {name}", lambda c: c.show(name))
        except Refused as e:
            if e.status == 404:
                return None
            raise

    def create(self, name: str, base: str, parameters: dict, license: list[str]) -> None:
        """POST /api/create (not streamed: Ollama answers an HTTP error on failure, {"status": "success"} on
        success)."""
        resp = self._call("POST /api/create", f"create {name}",
                          lambda c: c.create(model=name, from_=base, parameters=parameters, license=license),
                          long=True)
        if getattr(resp, "status", None) != "success":
            raise BadAnswer(f"unexpected answer from Ollama POST /api/create: status "
                            f"{one_line(getattr(resp, 'status', None), 60)!r}, not 'success'")

    def load(self, name: str, keep_alive: str | int = "10m") -> None:
        """An empty generate: Ollama loads the model (keep_alive 0 unloads it)."""
        what = f"unload {name}" if keep_alive == 0 else f"load {name}"
        self._call("POST /api/generate", what, lambda c: c.generate(model=name, prompt="", keep_alive=keep_alive),
                   long=True)

    def ps(self) -> list[Loaded]:
        resp = self._call("GET /api/ps", "list running models", lambda c: c.ps())
        out = []
        for i, m in enumerate(resp.models):
            name = m.model or m.name
            if not isinstance(name, str) or not name:
                raise BadAnswer(f"unexpected answer from Ollama GET /api/ps: models.{i} has no name")
            for field in ("size", "size_vram"):
                v = getattr(m, field)
                if v is None or int(v) < 0:
                    raise BadAnswer(f"unexpected answer from Ollama GET /api/ps: models.{i} ({one_line(name, 80)}) "
                                    f"has no {field}")
            ctx = m.context_length
            if ctx is not None and ctx <= 0:
                raise BadAnswer(f"unexpected answer from Ollama GET /api/ps: models.{i} has context_length {ctx}")
            out.append(Loaded(name, int(m.size), int(m.size_vram), ctx))
        return out

    def pull(self, name: str) -> Iterator[Any]:
        """POST /api/pull, streamed: its progress events; one line if it ends before `success`."""
        status = None
        for ev in self._stream("POST /api/pull", f"pull {name}", lambda c: c.pull(name, stream=True)):
            status = ev.status
            yield ev
        if status != "success":
            raise OllamaServerError(f"ollama: the pull of {name} ended before success (last status "
                                    f"{one_line(status, 60)!r})")

    def generate(self, name: str, prompt: str) -> Iterator[str]:
        for ev in self._stream("POST /api/generate", f"run {name}",
                               lambda c: c.generate(model=name, prompt=prompt, stream=True)):
            yield ev.response or ""

    def chat(self, name: str, messages: list[dict]) -> Iterator[str]:
        for ev in self._stream("POST /api/chat", f"chat with {name}",
                               lambda c: c.chat(model=name, messages=messages, stream=True)):
            yield ev.message.content or ""
