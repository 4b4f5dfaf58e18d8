"""Run llama-server for real: start it with an argv list, wait for /health, forward signals, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .logparse import ServerLog, parse_server_log
from .server import ServerError, free_port, last_lines


class LlamaServer:
    """One llama-server process. Its log (stdout+stderr, -lv 4) goes to a file that is parsed after loading."""

    def __init__(self, binary: str, args: list[str], host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None):
        self.host = host
        if "--port" in args:
            self.port = int(args[args.index("--port") + 1])
            extra: list[str] = []
        else:
            self.port = port or free_port()
            extra = ["--port", str(self.port)]
        if "--host" not in args:
            extra += ["--host", host]
        if not any(a in args for a in ("-lv", "--log-verbosity", "-v", "--verbose")):
            extra += ["-lv", "4"]
        self.argv = [binary, *args, *extra]
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")
        try:
            # a new session: a Ctrl-C at the terminal reaches autoctx, which forwards it (no double signal)
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as e:
            raise ServerError(f"cannot start {self.argv[0]}: {e.strerror or e}") from None
        finally:
            log.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def remove_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

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
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode()
        try:
            os.killpg(self.proc.pid, sig)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        except ProcessLookupError:
            return self.proc.wait()

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
        self.stop()


