"""Per-model profiles: the last plan, what was measured, and the correction learned (actual − predicted).

A profile is keyed by (model digest, devices, driver, runtime build) and stored as TOML under the user's data
directory (platformdirs), one file per key; the repository's `profiles/` folder holds shipped ones (read-only).
Writes are atomic (temporary file + rename). A profile that cannot be read is reported and ignored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import AutoctxError

KINDS = ("model", "kv", "compute", "output", "total")  # total: what Ollama's /api/ps reports per device


class ProfileError(AutoctxError):
    pass


def data_dir() -> Path:
    env = os.environ.get("AUTOCTX_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("autoctx"))


def model_digest(path: str, data_offset: int, file_size: int) -> str:
    """sha256 of the GGUF header (metadata + tensor infos) and the file size: what decides memory use."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = data_offset
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    h.update(str(file_size).encode())
    return h.hexdigest()


def runtime_build(binary: str) -> str:
    """llama-server's version line and the binary's digest (the sdist build reports no commit)."""
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        line = next((x for x in (out.stdout + out.stderr).splitlines() if x.startswith("version")), "unknown")
    except (OSError, subprocess.TimeoutExpired):
        line = "unknown"
    h = hashlib.sha256()
    with open(binary, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"llama.cpp {line.removeprefix('version: ').strip()} sha256:{h.hexdigest()[:12]}"


@dataclass(frozen=True)
class ProfileKey:
    model_digest: str
    devices: str  # e.g. "CPU AMD EPYC 23.5GiB" or "CUDA0 NVIDIA GeForce RTX 4090 24.0GiB"
    driver: str
    runtime: str

    @property
    def id(self) -> str:
        text = "\n".join((self.model_digest, self.devices, self.driver, self.runtime))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Profile:
    key: ProfileKey
    model_path: str
    model_name: str = ""
    architecture: str = ""
    updated: str = ""
    runs: int = 0
    plan: dict[str, Any] = field(default_factory=dict)  # num_ctx, cache types, ngl, ... and llama_server_args
    predicted: dict[str, dict[str, int]] = field(default_factory=dict)  # device -> kind -> bytes
    measured: dict[str, dict[str, int]] = field(default_factory=dict)
    correction: dict[str, dict[str, int]] = field(default_factory=dict)  # actual − predicted, bytes

    def correction_bytes(self, device: str) -> int:
        """What to add to a new prediction on this device (only under-predictions make a plan safer)."""
        return sum(max(0, v) for v in self.correction.get(device, {}).values())

    def to_toml_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id"] = self.key.id
        return d

    @classmethod
    def from_toml_dict(cls, d: dict[str, Any]) -> "Profile":
        key = ProfileKey(**d["key"])
        fields = {k: d[k] for k in ("model_path", "model_name", "architecture", "updated", "runs", "plan",
                                    "predicted", "measured", "correction") if k in d}
        return cls(key=key, **fields)


def learn(profile: Profile, predicted: dict[str, dict[str, int]], measured: dict[str, dict[str, int]]) -> None:
    """Record a run: the correction is the latest actual − predicted per device and kind."""
    profile.predicted, profile.measured = predicted, measured
    corr: dict[str, dict[str, int]] = {}
    for dev in set(predicted) | set(measured):
        for kind in KINDS:
            diff = measured.get(dev, {}).get(kind, 0) - predicted.get(dev, {}).get(kind, 0)
            if diff:
                corr.setdefault(dev, {})[kind] = diff
    profile.correction = corr
    profile.runs += 1
    profile.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")


def apply_corrections(budgets: list, profile: Profile | None) -> tuple[list, list[str]]:
    """Budgets with each device's learned under-prediction added to its margin, and the lines that say so."""
    from dataclasses import replace

    if profile is None or not profile.correction:
        return budgets, []
    out, notes = [], []
    for b in budgets:
        extra = profile.correction_bytes(b.device)
        out.append(replace(b, margin_bytes=b.margin_bytes + extra))
        if extra:
            notes.append(f"profile {profile.key.id}: {b.device} measured {extra / 2**20:.2f} MiB more than "
                         f"predicted over {profile.runs} run(s); planning with that much less")
    return out, notes


class ProfileStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else data_dir() / "profiles"
        self.warnings: list[str] = []

    def path_for(self, key: ProfileKey) -> Path:
        return self.root / f"{key.id}.toml"

    def load_file(self, path: Path) -> Profile | None:
        try:
            with open(path, "rb") as fh:
                return Profile.from_toml_dict(tomllib.load(fh))
        except FileNotFoundError:
            return None
        except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
            self.warnings.append(f"ignoring unreadable profile {path}: {type(e).__name__}: {e}".splitlines()[0])
            return None

    def get(self, key: ProfileKey) -> Profile | None:
        return self.load_file(self.path_for(key))

    def save(self, profile: Profile) -> Path:
        import tomli_w

        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path_for(profile.key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".toml", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                tomli_w.dump(profile.to_toml_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def all(self) -> list[Profile]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.glob("*.toml")):
            prof = self.load_file(p)
            if prof is not None:
                out.append(prof)
        return out

    def find(self, ref: str) -> list[Profile]:
        """Profiles whose id starts with ref, or whose model path/name equals it."""
        return [p for p in self.all() if p.key.id.startswith(ref) or ref in (p.model_path, p.model_name)]

    def remove(self, profile: Profile) -> None:
        self.path_for(profile.key).unlink(missing_ok=True)
