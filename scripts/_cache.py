"""Shared helpers for the build/download scripts: the pin file, the cache folder, a lock, PyPI downloads.

Standard library only: these scripts run before the project's virtual environment exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11 (a GPU machine's python3): tomli, which scripts/gpu-carry-prepare carries
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
PINS = tomllib.loads((HERE.parent / "autoctx" / "data" / "pins.toml").read_text())  # autoctx reads it too
INDEX = os.environ.get("AUTOCTX_PYPI_SIMPLE", "https://pypi.org/simple/")


def say(msg: str) -> None:
    print(f"[autoctx-cache] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """`$AUTOCTX_CACHE_DIR`, else `$XDG_CACHE_HOME/autoctx`, else `~/.cache/autoctx` (outside the repo)."""
    env = os.environ.get("AUTOCTX_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(xdg) / "autoctx").resolve()


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock so that parallel test workers build/download once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def simple_index_url(package: str, filename_re: str) -> str:
    """Find a file's download address on the PyPI simple index (PEP 503 HTML)."""
    page = f"{INDEX.rstrip('/')}/{package}/"
    with urllib.request.urlopen(page, timeout=60) as resp:
        html = resp.read().decode()
    for href in re.findall(r'href="([^"]+)"', html):
        name = urllib.parse.unquote(href.split("#")[0].rsplit("/", 1)[-1])
        if re.fullmatch(filename_re, name):
            return urllib.parse.urljoin(page, href.split("#")[0])
    raise SystemExit(f"error: no file matching {filename_re!r} on {page}")


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download to dest (atomically), checking the sha256 when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    digest = hashlib.sha256()
    say(f"downloading {url}")
    with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if sha256 and digest.hexdigest() != sha256:
        tmp.unlink()
        raise SystemExit(f"error: sha256 mismatch for {url}: {digest.hexdigest()} != {sha256}")
    os.replace(tmp, dest)
    return dest
