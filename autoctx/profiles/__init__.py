"""Per-model profiles: the last plan, what was measured, and the correction learned (actual − predicted).

A profile is keyed by (model digest, devices, driver, runtime build) and stored as TOML under the user's data
directory (platformdirs), one file per key named `<16 hex digits of the key's sha256>.toml`.

Concurrency and safety:
- every write holds an exclusive flock on the profile's lock file (`.<id>.lock`, opened with O_NOFOLLOW), and
  `ProfileStore.update` re-reads the profile under that lock before changing it, so two runs that learn at once
  both count (no lost update);
- a write goes to a temporary file created with O_EXCL (`.<id>.toml.tmp-XXXX`, a name the listing never matches)
  and is renamed over the profile: a reader sees the old or the new file, and a symbolic link planted at the
  profile's path is replaced, never followed; temporary files whose writer is gone are removed by the next write;
- loading checks every field's type; a profile that cannot be read is reported as one line naming the file and
  the field, and ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import tomllib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import AutoctxError

KINDS = ("model", "kv", "compute", "output", "total")  # total: what Ollama's /api/ps reports per device


class ProfileError(AutoctxError):
    pass


class ProfileFormatError(ValueError):
    """A profile file whose content is not a profile (the message names the field)."""


PROFILE_FILE = re.compile(r"[0-9a-f]{16}\.toml")  # the only names the listing reads
ID_PREFIX = re.compile(r"[0-9a-f]{4,16}")  # an id prefix a command accepts: at least 4 hex digits
TEMP_FILE = re.compile(r"\.([0-9a-f]{16})\.toml\.tmp-.+")
LEGACY_TEMP = re.compile(r"\.tmp-.+\.toml")  # temporary names of earlier versions, removed once a minute old
STALE_AFTER_S = 60.0


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


def runtime_build(label: str, binary: str) -> str:
    """The profile key's runtime part: what the binary says it is (runtimes.llamacpp.build) and its digest (two
    builds of one release, e.g. CPU and CUDA, allocate differently)."""
    h = hashlib.sha256()
    with open(binary, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{label} sha256:{h.hexdigest()[:12]}"


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
        """The profile in a TOML document; ProfileFormatError (naming the field) when a field is missing or of the
        wrong type."""
        raw_key = d.get("key")
        if not isinstance(raw_key, dict):
            raise _wrong("key", "a table", raw_key)
        for name in KEY_FIELDS:
            if not isinstance(raw_key.get(name), str):
                raise _wrong(f"key.{name}", "a string", raw_key.get(name))
        key = ProfileKey(**{name: raw_key[name] for name in KEY_FIELDS})
        if "id" in d and d["id"] != key.id:
            raise ProfileFormatError(f"field id {_show(d['id'])} is not its key's id {key.id}")
        if not isinstance(d.get("model_path"), str):
            raise _wrong("model_path", "a string", d.get("model_path"))
        for name in ("model_name", "architecture", "updated"):
            if name in d and not isinstance(d[name], str):
                raise _wrong(name, "a string", d[name])
        if "runs" in d and not (_is_int(d["runs"]) and d["runs"] >= 0):
            raise _wrong("runs", "a whole number >= 0", d["runs"])
        if "plan" in d and not isinstance(d["plan"], dict):
            raise _wrong("plan", "a table", d["plan"])
        for name in ("predicted", "measured", "correction"):
            if name in d:
                _check_bytes_table(name, d[name])
        fields = {k: d[k] for k in ("model_path", "model_name", "architecture", "updated", "runs", "plan",
                                    "predicted", "measured", "correction") if k in d}
        return cls(key=key, **fields)


KEY_FIELDS = ("model_digest", "devices", "driver", "runtime")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: object) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table", list: "array"}.get(
        type(v), type(v).__name__)
    text = repr(v)
    return f"{kind} {text[:40]}{'...' if len(text) > 40 else ''}"


def _wrong(name: str, want: str, got: object) -> ProfileFormatError:
    if got is None:
        return ProfileFormatError(f"field {name} is missing (it should be {want})")
    return ProfileFormatError(f"field {name} should be {want}, not {_show(got)}")


def _check_bytes_table(name: str, v: object) -> None:
    """device -> kind -> bytes (dict[str, dict[str, int]])."""
    if not isinstance(v, dict):
        raise _wrong(name, "a table of devices", v)
    for dev, kinds in v.items():
        if not isinstance(kinds, dict):
            raise _wrong(f"{name}.{dev}", "a table of byte counts", kinds)
        for kind, n in kinds.items():
            if not _is_int(n):
                raise _wrong(f"{name}.{dev}.{kind}", "an integer (bytes)", n)


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
    """The profiles under one folder (default: the user's data dir). Reading needs no lock; every write holds
    the profile's lock."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else data_dir() / "profiles"
        self.bad: dict[Path, str] = {}  # profile files that could not be read -> why (one line)

    @property
    def warnings(self) -> list[str]:
        return [f"ignoring profile {path}: {why}" for path, why in self.bad.items()]

    def path_for(self, key: ProfileKey) -> Path:
        return self.root / f"{key.id}.toml"

    def load_file(self, path: Path) -> Profile | None:
        try:
            with open(path, "rb") as fh:
                prof = Profile.from_toml_dict(tomllib.load(fh))
            if path.name != f"{prof.key.id}.toml":
                raise ProfileFormatError(f"its key's id {prof.key.id} is not its file name")
        except FileNotFoundError:
            return None
        except tomllib.TOMLDecodeError as e:
            self.bad[path] = f"not TOML ({e})".splitlines()[0]
            return None
        except ProfileFormatError as e:
            self.bad[path] = str(e).splitlines()[0]
            return None
        except (OSError, ValueError, RecursionError) as e:  # ValueError: e.g. not UTF-8
            self.bad[path] = f"{type(e).__name__}: {e}".splitlines()[0]
            return None
        self.bad.pop(path, None)
        return prof

    def get(self, key: ProfileKey) -> Profile | None:
        return self.load_file(self.path_for(key))

    def update(self, key: ProfileKey, change: Callable[[Profile | None], Profile]) -> tuple[Profile, Path]:
        """Read-modify-write under the profile's lock: `change` gets the profile as stored now (None when there is
        none or it cannot be read) and returns the one to save. Returns it and its path."""
        with self._locked(key.id):
            prof = change(self.get(key))
            if prof.key != key:
                raise ValueError(f"update of profile {key.id} returned profile {prof.key.id}")
            return prof, self._write(prof)

    def record(self, fresh: Profile, plan: dict[str, Any], predicted: dict[str, dict[str, int]],
               measured: dict[str, dict[str, int]]) -> tuple[Profile, Path]:
        """Learn one run into the stored profile of `fresh.key` (or into `fresh` when there is none), atomically."""

        def change(current: Profile | None) -> Profile:
            prof = current or fresh
            prof.plan = plan
            learn(prof, predicted, measured)
            return prof

        return self.update(fresh.key, change)

    def save(self, profile: Profile) -> Path:
        """Write the profile as it is (replacing the stored one), under its lock."""
        with self._locked(profile.key.id):
            return self._write(profile)

    def remove(self, profile: Profile) -> None:
        with self._locked(profile.key.id) as lock:
            self.path_for(profile.key).unlink(missing_ok=True)
            lock.unlink(missing_ok=True)  # waiters notice (another inode) and open a new one

    def all(self) -> list[Profile]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if PROFILE_FILE.fullmatch(p.name):
                prof = self.load_file(p)
                if prof is not None:
                    out.append(prof)
        return out

    def find(self, ref: str) -> list[Profile]:
        """Profiles whose id starts with ref (at least 4 hex digits), or whose model path or name equals it."""
        ref = ref.strip()
        if not ref:
            return []
        is_prefix = ID_PREFIX.fullmatch(ref) is not None
        return [p for p in self.all() if (is_prefix and p.key.id.startswith(ref)) or ref in (p.model_path,
                                                                                               p.model_name)]

    def select(self, ref: str, every: bool = False) -> list[Profile]:
        """What a command's REF names: one profile, or (every=True) all those of one model. ProfileError, one line,
        when it names none, an unreadable one, or is ambiguous: an id prefix must name one profile; a model path or
        name that several profiles share needs every=True."""
        ref = ref.strip()
        if not ref:
            raise ProfileError("no profile named: give a profile id (at least 4 hex digits), a model path or a name")
        found = self.find(ref)
        if not found:
            bad = [path for path in self.bad if ID_PREFIX.fullmatch(ref) and path.name.startswith(ref)]
            if len(bad) == 1:
                why = self.bad.pop(bad[0])
                raise ProfileError(f"profile {bad[0]} cannot be read: {why}")
            short = "an id prefix needs at least 4 hex digits; " if re.fullmatch(r"[0-9a-f]{1,3}", ref) else ""
            raise ProfileError(f"no profile matches {ref!r} ({short}autoctx profile list shows them)")
        by_id = [p for p in found if ID_PREFIX.fullmatch(ref) and p.key.id.startswith(ref)]
        if len(found) > 1 and len(by_id) > 1:
            raise ProfileError(f"{len(by_id)} profile ids start with {ref!r}: give more of the id")
        if len(found) > 1 and not every:
            raise ProfileError(f"{len(found)} profiles match {ref!r}: give one's id (autoctx profile list shows them)")
        return found

    # -- writing

    @contextmanager
    def _locked(self, key_id: str) -> Iterator[Path]:
        """Hold an exclusive flock on `.<id>.lock` (never through a symbolic link)."""
        fcntl = _fcntl()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{key_id}.lock"
        if fcntl is None:  # no flock (Windows): writes stay atomic, concurrent updates are not serialised
            yield path
            return
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise ProfileError(f"cannot open the profile lock {path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held, now = os.fstat(fd), _lstat(path)
            except BaseException:
                os.close(fd)
                raise
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)  # removed (profile rm) or replaced while we waited: lock the file that is there now
        try:
            yield path
        finally:
            os.close(fd)

    def _write(self, profile: Profile) -> Path:
        """Temporary file (O_EXCL) + fsync + rename over the profile; the caller holds the profile's lock."""
        import tomli_w

        key_id = profile.key.id
        self._remove_stale_temps(key_id)
        target = self.path_for(profile.key)
        fd, tmp = tempfile.mkstemp(prefix=f".{key_id}.toml.tmp-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                tomli_w.dump(profile.to_toml_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)  # replaces a symbolic link at target, never writes through it
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def _remove_stale_temps(self, held_id: str) -> None:
        """Temporary files left by killed writers: those of the profile whose lock we hold and those of profiles whose
        lock is free (their writer is gone), and earlier versions' `.tmp-*.toml` once a minute old."""
        fcntl = _fcntl()
        for p in self.root.iterdir():
            m = TEMP_FILE.fullmatch(p.name)
            if m and fcntl is not None:
                if m.group(1) == held_id or not _lock_held(self.root / f".{m.group(1)}.lock", fcntl):
                    p.unlink(missing_ok=True)
            elif m or LEGACY_TEMP.fullmatch(p.name):
                st = _lstat(p)
                if st is not None and time.time() - st.st_mtime > STALE_AFTER_S:
                    p.unlink(missing_ok=True)


def _fcntl():
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _lock_held(path: Path, fcntl) -> bool:
    """Whether a writer holds this lock now (a writer creates its lock file before its temporary file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave its temporary files alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
