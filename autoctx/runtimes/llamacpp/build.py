"""Which llama.cpp autoctx is driving: the binary's own `--version` and `--list-devices`.

Users bring their own llama-server (CUDA, ROCm, Vulkan, Metal builds of any release); autoctx's allocation rules
(`autoctx.memory`) mirror one pinned release (autoctx/data/pins.toml). This module reads what the binary says of
itself (common/build-info.cpp.in `llama_print_build_info`: "version: V (build N, commit C)" then "built with ...")
and which devices it sees, in its own order and names (common/arg.cpp `list_devices`: "  NAME: DESCRIPTION (TOTAL MiB,
FREE MiB free)"), so that plans use llama.cpp's device names and the verifier knows when the build differs.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .server import ServerError

PINS_FILE = Path(__file__).resolve().parents[2] / "data" / "pins.toml"
_VERSION = re.compile(r"^version: (?P<version>\S+) \(build (?P<build>-?\d+), commit (?P<commit>[^)]*)\)")
_OLD_VERSION = re.compile(r"^version: (?P<build>\d+) \((?P<commit>[^)]*)\)")  # builds before the 0.x versions
_DEVICE = re.compile(r"^  (?P<name>[^\s:]+): (?P<desc>.*) \((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)$")
MiB = 1024 * 1024


@lru_cache(maxsize=1)
def pinned_build() -> int:
    """The llama.cpp release whose allocation rules autoctx mirrors."""
    return int(tomllib.loads(PINS_FILE.read_text())["llama_cpp"]["build"])


@dataclass(frozen=True)
class ListedDevice:
    """A device as the llama-server binary lists it (its name, order and memory view)."""

    name: str  # CUDA0, ROCm0, Vulkan0, Metal, RPC0...
    description: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class BuildInfo:
    binary: str
    version: str  # llama.cpp's semantic version ("0.6.0-dev"), "" when unreadable
    number: int  # release build number (b11434 -> 11434); 0 when the build could not count it
    commit: str
    built_with: str = ""  # compiler and target
    devices: tuple[ListedDevice, ...] = field(default=())

    @property
    def pinned(self) -> bool:
        return self.number == pinned_build()

    @property
    def label(self) -> str:
        if not self.version:
            return "llama.cpp (version unknown)"
        return f"llama.cpp {self.version} build {self.number} (commit {self.commit})"

    def difference(self) -> str | None:
        """One line saying that this build is not the one autoctx mirrors, or None when it is."""
        if self.pinned:
            return None
        which = f"build {self.number}" if self.number else "a build without a build number"
        return (f"{self.binary} is {which}, not b{pinned_build()} whose allocation rules autoctx mirrors: "
                "predictions may be off, so the verifier widens its tolerance and the profile learns the difference")

    def as_dict(self) -> dict:
        return {"binary": self.binary, "version": self.version, "build": self.number, "commit": self.commit,
                "pinned_build": pinned_build(), "devices": [d.__dict__ for d in self.devices]}


def parse_version(text: str) -> tuple[str, int, str, str]:
    """(version, build number, commit, built with) from `llama-server --version` output."""
    version, number, commit, built = "", 0, "", ""
    for line in text.splitlines():
        m = _VERSION.match(line.strip())
        if m:
            version, number, commit = m["version"], max(0, int(m["build"])), m["commit"]
        elif m := _OLD_VERSION.match(line.strip()):
            version, number, commit = f"b{m['build']}", int(m["build"]), m["commit"]
        elif line.startswith("built with "):
            built = line.removeprefix("built with ").strip()
    return version, number, commit, built


def parse_devices(text: str) -> tuple[ListedDevice, ...]:
    """The devices of `llama-server --list-devices` (an empty tuple for "(none)": a CPU-only build)."""
    out = []
    for line in text.splitlines():
        m = _DEVICE.match(line.rstrip())
        if m:
            out.append(ListedDevice(m["name"], m["desc"], int(m["total"]) * MiB, int(m["free"]) * MiB))
    return tuple(out)


def _run(binary: str, flag: str | list[str], timeout: float) -> str:
    args = [flag] if isinstance(flag, str) else flag
    try:
        r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        raise ServerError(f"{binary} {' '.join(args)} did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise ServerError(f"cannot run {binary}: {e.strerror or e}") from None
    return r.stdout + r.stderr


# ggml/src/ggml-rpc/ggml-rpc.cpp: what the client aborts with when a worker cannot be used
_RPC_FAILURES = (
    (re.compile(r"Failed to connect to"), "does not answer (nothing listens there, or a firewall is in the way)"),
    (re.compile(r"RPC server version mismatch: (\S+)"),
     "speaks RPC protocol {0}, another than this llama-server's: run the same llama.cpp build on both sides"),
    (re.compile(r"RPC handshake failed"), "did not complete the RPC handshake (not an rpc-server, or another "
     "protocol version)"),
    (re.compile(r"Failed to parse endpoint"), "is not HOST:PORT"),
)


def rpc_workers(binary: str, endpoints: list[str], timeout: float = 30.0) -> tuple[ListedDevice, ...]:
    """The devices of llama.cpp RPC workers as this llama-server sees them (`--rpc EP --list-devices`; their free
    memory is the worker's own report), numbered RPC0, RPC1... across the list as llama-server numbers them. One
    worker at a time, so that one that does not answer is named in a one-line ServerError."""
    out: list[ListedDevice] = []
    for ep in endpoints:
        text = _run(binary, ["--rpc", ep, "--list-devices"], timeout)
        listed = parse_devices(text)
        if not listed:
            why = next((msg.format(*m.groups()) for rx, msg in _RPC_FAILURES if (m := rx.search(text))),
                       "listed no device: " + (text.strip().splitlines() or ["no output"])[-1][:160])
            raise ServerError(f"RPC worker {ep} {why}")
        out += [ListedDevice(f"RPC{len(out) + i}", ep, d.total_bytes, d.free_bytes) for i, d in enumerate(listed)]
    return tuple(out)


_RPC_ENDPOINT_FAILURE = re.compile(r"(Failed to connect to|RPC handshake failed for|Failed to parse endpoint:) (\S+)")
_RPC_CRASHED = "Remote RPC server crashed or returned malformed response"


def rpc_failure(log_text: str, binary: str, endpoints: list[str]) -> str | None:
    """One line naming the RPC worker that made llama-server give up (ggml-rpc.cpp aborts: a worker it cannot reach
    or that stopped answering mid-load), or None when its log shows no RPC failure. A worker that died mid-load is
    not named in llama.cpp's abort: each endpoint is asked again, and the ones that no longer answer are named."""
    if m := _RPC_ENDPOINT_FAILURE.search(log_text):
        why = next((msg.format(*g.groups()) for rx, msg in _RPC_FAILURES if (g := rx.search(log_text))), m[1])
        return f"RPC worker {m[2]} {why}; llama-server could not load the model"
    if m := re.search(r"RPC server version mismatch: (\S+)", log_text):
        return (f"an RPC worker speaks RPC protocol {m[1]}, another than this llama-server's: run the same llama.cpp "
                "build on every worker")
    if _RPC_CRASHED not in log_text:
        return None
    dead = []
    for ep in endpoints:
        try:
            rpc_workers(binary, [ep], timeout=10)
        except ServerError:
            dead.append(ep)
    who = (f"RPC worker {', '.join(dead)} stopped answering" if dead else
           f"an RPC worker ({', '.join(endpoints)}) failed")
    return f"{who} while llama-server loaded the model (llama.cpp: {_RPC_CRASHED})"


def read_build(binary: str, devices: bool = True, timeout: float = 60.0) -> BuildInfo:
    """What the binary says of itself; `devices` also asks for its device list (initialises the GPU backends)."""
    version, number, commit, built = parse_version(_run(binary, "--version", timeout))
    listed = parse_devices(_run(binary, "--list-devices", timeout)) if devices else ()
    return BuildInfo(os.path.abspath(binary), version, number, commit, built, listed)
