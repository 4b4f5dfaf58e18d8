"""Ollama's on-disk model store: model names → manifests → the GGUF blob, read without the server.

Layout (ollama server/modelpath.go, manifest.go): `$OLLAMA_MODELS` (else ~/.ollama/models, else the Linux
service's /usr/share/ollama/.ollama/models) holds `manifests/<host>/<namespace>/<model>/<tag>` (JSON, schemaVersion
2) and `blobs/sha256-<hex>`. Defaults: host registry.ollama.ai, namespace library, tag latest. The layer with
mediaType application/vnd.ollama.image.model is the GGUF.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ...errors import AutoctxError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA = "application/vnd.ollama.image.model"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # no "/", no "..", "%" or NUL: one plain path component
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}(:[0-9]{1,5})?$")
DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")
NAME_FORMS = "model, model:tag, ns/model:tag, host/ns/model:tag"


class OllamaModelError(AutoctxError):
    pass


class BadModelName(OllamaModelError):
    exit_code = 2


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def short(self) -> str:
        """As `ollama list` shows it: library models without host and namespace."""
        if (self.host, self.namespace) == (DEFAULT_HOST, DEFAULT_NAMESPACE):
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_name(name: str) -> ModelName:
    """'qwen2.5:32b', 'library/x:tag', 'host/ns/x:tag', 'x' (tag latest) → ModelName. Anything else — a path, a
    part that is `.`/`..` or starts with a dot, `%`-escapes, control characters — is refused: every part becomes one
    folder name under the store, so none may leave it."""
    text = name.strip()
    base, _, tag = text.rpartition(":") if ":" in text.split("/")[-1] else (text, "", DEFAULT_TAG)
    parts = base.split("/")
    if len(parts) == 1:
        host, ns, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, ns, model = DEFAULT_HOST, parts[0], parts[1]
    elif len(parts) == 3:
        host, ns, model = parts
    else:
        host = ns = model = ""
    if not (_HOST.fullmatch(host) and all(_PART.fullmatch(p) for p in (ns, model, tag))):
        raise BadModelName(f"{name!r} is not an Ollama model name ({NAME_FORMS})")
    return ModelName(host, ns, model.lower(), tag or DEFAULT_TAG)


def store_roots(env: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    if env.get("OLLAMA_MODELS"):
        return [Path(env["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def check_manifest(manifest: object, where: str) -> dict:
    """The manifest if its shape is Ollama's (an object whose `layers` is an array of objects, each with a string
    mediaType and a sha256 digest), else one line saying what is wrong. Digests name blob files: checking them is
    what keeps `sha256:../../x` from opening anything outside the store."""
    def bad(why: str) -> OllamaModelError:
        return OllamaModelError(f"{where}: not a valid manifest ({why})")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise bad("layers is not an array")
    for i, lay in enumerate(layers):
        if not isinstance(lay, dict):
            raise bad(f"layers[{i}] is not an object")
        if not isinstance(lay.get("mediaType"), str):
            raise bad(f"layers[{i}].mediaType is not a string")
        digest = lay.get("digest")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            shown = repr(digest)[:90] if isinstance(digest, str) else type(digest).__name__
            raise bad(f"layers[{i}].digest is not a sha256 digest: {shown}")
        size = lay.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"layers[{i}].size is not a byte count")
    return manifest


def _read_regular(path: Path) -> str:
    """A manifest's text. Opened without blocking and checked to be a regular file, so that a FIFO planted in the
    store is refused (OSError) instead of waiting forever for a writer."""
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fh.read().decode("utf-8", errors="replace")


def blob_path(root: Path, digest: str) -> Path:
    """blobs/sha256-<hex> for a checked digest."""
    if not DIGEST.fullmatch(digest):
        raise OllamaModelError(f"bad blob digest {digest[:90]!r}")
    return root / "blobs" / f"sha256-{digest[7:]}"


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    root: Path
    manifest: dict
    gguf: Path  # the model blob
    digest: str  # sha256:<hex> of the model blob

    def layers(self, media: str) -> list[dict]:
        return [lay for lay in self.manifest["layers"] if lay["mediaType"] == media]

    def blob(self, layer: dict) -> Path:
        return blob_path(self.root, layer["digest"])


def find_model(name: str, env: dict[str, str] | None = None) -> StoredModel:
    """The model's manifest and GGUF blob in the local store; a clear error (with the pull command) if absent."""
    mn = parse_name(name)
    roots = store_roots(env)
    unreadable = []
    for root in roots:
        mpath = root / "manifests" / mn.host / mn.namespace / mn.model / mn.tag
        try:
            raw = _read_regular(mpath)
        except FileNotFoundError:
            continue
        except OSError as e:
            unreadable.append(f"{mpath}: {e.strerror or e}")
            continue
        try:
            manifest = check_manifest(json.loads(raw), str(mpath))
        except ValueError as e:  # JSONDecodeError
            raise OllamaModelError(f"{mpath}: not a valid manifest ({getattr(e, 'msg', 'not JSON')})") from None
        model_layers = [lay for lay in manifest["layers"] if lay["mediaType"] == MODEL_MEDIA]
        if not model_layers:
            raise OllamaModelError(f"{mn.short}: its manifest has no model layer ({MODEL_MEDIA})")
        digest = model_layers[0]["digest"]
        blob = blob_path(root, digest)
        if not blob.is_file():
            raise OllamaModelError(f"{mn.short}: blob {blob} is missing (re-pull: ollama pull {mn.short})")
        return StoredModel(mn, root, manifest, blob, digest.replace("-", ":", 1))
    if unreadable:
        raise OllamaModelError(f"{mn.short}: the model store is not readable ({'; '.join(unreadable)})")
    where = ", ".join(str(r) for r in roots)
    raise OllamaModelError(f"{mn.short} is not pulled (looked in {where}): run `ollama pull {mn.short}`")
