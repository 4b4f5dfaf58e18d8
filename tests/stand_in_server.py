#!/usr/bin/env python3
"""A stand-in llama-server for the fast tests: started like the real binary, it prints what the pinned llama-server
printed for the same arguments (tests/data/stand_in/*.json, recorded by scripts/record-stand-in-logs), so that
serve, check, verify and the step-down run in seconds without a llama.cpp build.

* `--version`, `--list-devices`: the recorded answers.
* Any other command line is a launch. Its arguments without -m/--port/--host/-lv (the ones autoctx adds or varies)
  must equal a recording's, else it prints "stand-in llama-server: no recording for these arguments: ..." and exits
  1, as a real server exits on what it cannot load. A launch listens on --port, prints the recorded load log (the
  model path and port filled in), answers /health with 503 while "loading" (STAND_IN_LOAD_S, default 0.1 s) then
  200, and on SIGTERM/SIGINT prints the recorded shutdown lines and exits with the recorded status. A recording
  that did not load (out of memory) is printed and its status returned at once.

Told through the environment, which autoctx passes on to the server:
* STAND_IN_LOG=FILE: every launch appends a JSON line {"argv": [...], "recording": NAME} (what autoctx started);
* STAND_IN_OOM=N (needs STAND_IN_LOG): the first N launches print the out-of-memory recording made with the same
  arguments (the real server under a data limit: its KV cache could not be allocated);
* STAND_IN_REPLACE='[["old", "new"], ...]': text replaced in the printed log (a mis-prediction: a buffer size or
  "offloaded N/M layers" that differs from what autoctx predicted);
* STAND_IN_HANG=1: never ready (/health answers 503 until stopped).
Only the standard library: it runs under any python3.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "stand_in"
# the arguments autoctx adds or varies per run: read (model, port, host) or dropped, not matched
_SKIP = {"-m": "model", "--model": "model", "--port": "port", "--host": "host", "-lv": "", "--log-verbosity": ""}


def split_argv(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(model/port/host, the other arguments in order)."""
    known: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SKIP:
            if _SKIP[argv[i]]:
                known[_SKIP[argv[i]]] = argv[i + 1] if i + 1 < len(argv) else ""
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    return known, rest


def recordings() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(DATA.glob("*.json")) if p.stem not in ("version", "list-devices")]


def recording_for(args: list[str], oom: bool) -> dict | None:
    for rec in recordings():
        if rec["args"] == args and rec["ready"] is not oom:
            return rec
    return None


def launches_before() -> int:
    """How many launches $STAND_IN_LOG holds (0 without one)."""
    path = os.environ.get("STAND_IN_LOG")
    return len(Path(path).read_text().splitlines()) if path and os.path.exists(path) else 0


def log_launch(argv: list[str], name: str | None) -> None:
    if os.environ.get("STAND_IN_LOG"):
        with open(os.environ["STAND_IN_LOG"], "a") as f:
            f.write(json.dumps({"argv": argv, "recording": name}) + "\n")


class Health(BaseHTTPRequestHandler):
    ready = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path != "/health":
            self.send_error(404)
            return
        ok = self.ready.is_set()
        body = b'{"status":"ok"}' if ok else b'{"error":{"code":503,"message":"Loading model"}}'
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # the real server logs requests at -lv 4 only as its own lines; keep the recording
        pass


def say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["--list-devices"]):
        rec = json.loads((DATA / f"{argv[0].strip('-')}.json").read_text())
        sys.stdout.write(rec["stdout"])
        sys.stderr.write(rec["stderr"])
        return rec["status"]
    known, args = split_argv(argv)
    model = known.get("model", "")
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    oom_launches = int(os.environ.get("STAND_IN_OOM", "0") or 0)
    if oom_launches and not os.environ.get("STAND_IN_LOG"):
        say("stand-in llama-server: STAND_IN_OOM needs STAND_IN_LOG (where launches are counted)\n")
        return 2
    fits = recording_for(args, oom=False)
    oom = recording_for(args, oom=True)
    out_of_memory = launches_before() < oom_launches
    rec = oom if out_of_memory else fits
    log_launch(argv, rec["name"] if rec else None)
    if rec is None:
        what = "out-of-memory recording" if out_of_memory and fits is not None else "recording"
        say(f"stand-in llama-server: no {what} for these arguments: {' '.join(args)}\n"
            "(scripts/record-stand-in-logs records them from the real pinned server)\n")
        return 1
    if not os.path.isfile(model):
        say(f"gguf_init_from_file: failed to open GGUF file '{model}'\n")
        return 1
    replace = json.loads(os.environ.get("STAND_IN_REPLACE", "[]"))

    def fill(text: str) -> str:
        text = text.replace("{MODEL}", model).replace("{PORT}", known.get("port", "8080"))
        for old, new in replace:
            text = text.replace(old, new)
        return text

    httpd = ThreadingHTTPServer((known.get("host", "127.0.0.1"), int(known.get("port", "8080"))), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    say(fill(rec["load"]))
    if not rec["ready"]:
        httpd.server_close()
        return rec["status"]
    if stop.wait(float(os.environ.get("STAND_IN_LOAD_S", "0.1"))):
        return rec["status"]
    if not os.environ.get("STAND_IN_HANG"):
        Health.ready.set()
    while not stop.wait(0.05):
        pass
    say(fill(rec["shutdown"]))
    httpd.server_close()
    return rec["status"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
