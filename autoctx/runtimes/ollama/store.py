"""Ollama's on-disk model store: model names → manifests → the GGUF blob, read without the server.

Layout (ollama server/modelpath.go, manifest.go): `$OLLAMA_MODELS` (else ~/.ollama/models, else the Linux
service's /usr/share/ollama/.ollama/models) holds `manifests/<host>/<namespace>/<model>/<tag>` (JSON, schemaVersion
2) and `blobs/sha256-<hex>`. Defaults: host registry.ollama.ai, namespace library, tag latest. The layer with
mediaType application/vnd.ollama.image.model is the GGUF.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import AutoctxError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA = "application/vnd.ollama.image.model"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class OllamaModelError(AutoctxError):
    pass


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
    """'qwen2.5:32b', 'library/x:tag', 'host/ns/x:tag', 'x' (tag latest) → ModelName; bad names raise."""
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
        raise OllamaModelError(f"{name!r} is not an Ollama model name (model, model:tag, ns/model:tag, "
                               "host/ns/model:tag)")
    for p in (ns, model, tag):
        if not _PART.match(p):
            raise OllamaModelError(f"{name!r} is not an Ollama model name")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", host):
        raise OllamaModelError(f"{name!r} is not an Ollama model name")
    return ModelName(host, ns, model.lower(), tag or DEFAULT_TAG)


def store_roots(env: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    if env.get("OLLAMA_MODELS"):
        return [Path(env["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    root: Path
    manifest: dict
    gguf: Path  # the model blob
    digest: str  # sha256:<hex> of the model blob

    def layers(self, media: str) -> list[dict]:
        return [lay for lay in self.manifest.get("layers", []) if lay.get("mediaType") == media]


def find_model(name: str, env: dict[str, str] | None = None) -> StoredModel:
    """The model's manifest and GGUF blob in the local store; a clear error (with the pull command) if absent."""
    mn = parse_name(name)
    roots = store_roots(env)
    unreadable = []
    for root in roots:
        mpath = root / "manifests" / mn.host / mn.namespace / mn.model / mn.tag
        try:
            raw = mpath.read_text()
        except FileNotFoundError:
            continue
        except OSError as e:
            unreadable.append(f"{mpath}: {e.strerror or e}")
            continue
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as e:
            raise OllamaModelError(f"{mpath}: not a valid manifest ({e.msg})") from None
        model_layers = [lay for lay in manifest.get("layers", []) if lay.get("mediaType") == MODEL_MEDIA]
        if not model_layers:
            raise OllamaModelError(f"{mn.short}: its manifest has no model layer ({MODEL_MEDIA})")
        digest = str(model_layers[0].get("digest", ""))
        if not re.match(r"^sha256[:-][0-9a-f]{64}$", digest):
            raise OllamaModelError(f"{mpath}: bad model layer digest {digest!r}")
        blob = root / "blobs" / digest.replace(":", "-")
        if not blob.is_file():
            raise OllamaModelError(f"{mn.short}: blob {blob} is missing (re-pull: ollama pull {mn.short})")
        return StoredModel(mn, root, manifest, blob, digest.replace("-", ":", 1))
    if unreadable:
        raise OllamaModelError(f"{mn.short}: the model store is not readable ({'; '.join(unreadable)})")
    where = ", ".join(str(r) for r in roots)
    raise OllamaModelError(f"{mn.short} is not pulled (looked in {where}): run `ollama pull {mn.short}`")
