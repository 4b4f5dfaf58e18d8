"""One llama-server process: start it with an argv list, wait for /health, forward signals, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from ...errors import AutoctxError
from .logparse import ServerLog, parse_server_log


class ServerError(AutoctxError):
    """llama-server could not be found, did not start, or exited."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_lines(text: str, n: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


class LlamaServer:
    """One llama-server process and its log (stdout+stderr, -lv 4), parsed after loading.

    The object owns both: `close()` (also on leaving a `with` block) stops the process group and removes the log.
    Starting and stopping run with SIGINT/SIGTERM/SIGHUP held back, so a signal cannot land between the fork and
    the bookkeeping (a server nobody knows about) or in the middle of the cleanup (a server left running).
    """

    def __init__(self, binary: str, args: list[str], host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None):
        from .args import server_port

        self.host = host
        given = server_port(args)
        if given is not None:
            self.port = given
            extra: list[str] = []
        else:
            self.port = port or free_port()
            extra = ["--port", str(self.port)]
        if "--host" not in args:
            extra += ["--host", host]
        if not any(a in args for a in ("-lv", "--log-verbosity", "-v", "--verbose")):
            extra += ["-lv", "4"]
        self.argv = [binary, *args, *extra]
        self._owns_log = log_path is None  # a temporary log is removed by close(); a given one is the caller's
        self.log_path: Path | None = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with signals_held():
            if self.log_path is None:
                fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
                self.log_path = Path(name)
            else:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                # a new session: a Ctrl-C at the terminal reaches autoctx, which stops or forwards it
                # the child must not inherit the held signals (a mask survives exec): it unblocks them first
                self.proc = subprocess.Popen(self.argv, stdout=fd, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=_release_signals)
            except OSError as e:
                self.remove_log()
                raise ServerError(f"cannot start {self.argv[0]}: {e.strerror or e}") from None
            finally:
                os.close(fd)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def remove_log(self) -> None:
        if self.log_path is not None and self._owns_log:
            self.log_path.unlink(missing_ok=True)

    def keep_log(self) -> Path | None:
        """Leave the log in place when the server is closed (for the user to read); its path."""
        self._owns_log = False
        return self.log_path

    def log(self) -> ServerLog:
        return parse_server_log(self.log_text())

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait_ready(self, timeout: float = 300.0) -> bool:
        """Poll /health until it answers 200 (True), the process exits (False), or the timeout (ServerError)."""
        from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

        @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), retry=retry_if_result(lambda r: r is None))
        def poll() -> bool | None:
            if self.returncode() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    return True if resp.status == 200 else None
            except (urllib.error.URLError, OSError, ValueError):
                return None  # not listening yet, or 503 while loading

        try:
            return bool(poll())
        except RetryError:
            self.stop()
            raise ServerError(f"llama-server did not answer /health within {timeout:.0f} s; last lines:\n"
                              + last_lines(self.log_text())) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the server's process group (SIGKILL after `timeout`); its exit status."""
        if self.proc is None:
            return None
        with signals_held():
            if self.proc.poll() is not None:
                return self.returncode()
            try:
                os.killpg(self.proc.pid, sig)
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
            except ProcessLookupError:
                return self.proc.wait()

    def close(self) -> None:
        """Stop the server and remove its log: what every path out of a launch that keeps no server does."""
        self.stop()
        self.remove_log()

    def serve_foreground(self) -> int:
        """Wait for the server, forwarding SIGINT/SIGTERM/SIGHUP to it; return its exit status (128+sig if killed)."""
        assert self.proc is not None
        forwarded: list[int] = []

        def forward(signum, _frame):
            forwarded.append(signum)
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while True:
                try:
                    rc = self.proc.wait()
                    break
                except InterruptedError:
                    continue
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if rc < 0:
            return 128 - rc
        return rc

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _release_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)


@contextmanager
def signals_held():
    """Hold SIGINT/SIGTERM/SIGHUP back for a short critical section; they are delivered when it ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


