"""MODEL arguments → ModelSpec. Resolvers are tried in order; the first that recognises the name answers.

1. a GGUF path (or the first part of a split GGUF);
2. an Ollama model name (`qwen2.5:32b`) pulled into the local model store (its GGUF blob is read directly);
   else what the Ollama server's `/api/show` says of it (remote server, unreadable store);
3. a shipped profile (package data, autoctx/data/profiles/ollama/*.toml): the architecture and tensor shapes of a
   popular Ollama tag from the autoctx.catalog, so that a model can be planned before it is pulled.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .errors import AutoctxError
from .model import ModelSpec, load_spec, spec_from_gguf

Resolver = Callable[[str], "ModelSpec | None"]
SHIPPED = Path(__file__).resolve().parent / "data" / "profiles" / "ollama"  # package data (pyproject.toml)


class NotPulled(AutoctxError):
    pass


def gguf_path(name: str) -> ModelSpec | None:
    if os.path.exists(name) or name.endswith(".gguf"):
        return load_spec(name)  # a missing .gguf path raises the reader's one-line error
    return None


def ollama_store(name: str) -> ModelSpec | None:
    from .runtimes.ollama.store import OllamaModelError, find_model

    try:
        found = find_model(name)
    except OllamaModelError as e:
        if "is not pulled" in str(e):
            raise NotPulled(str(e)) from None
        raise
    spec = load_spec(str(found.gguf))
    return replace(spec, name=found.name.short, source=f"ollama store {found.root}")


def ollama_show(name: str) -> ModelSpec | None:
    """A model the Ollama server has but the local store cannot give (a remote server, an unreadable store): its
    `/api/show` (verbose) metadata and tensor list. Tensor offsets are approximated (sequential), which only
    affects how a memory-mapped range is counted. None when no server answers or it has no such model; an answer
    of the wrong shape is one line naming the endpoint."""
    from .gguf import GGUFFile, TensorInfo, tensor_bytes, type_from_name
    from .runtimes.ollama.server import BadAnswer, NoServer, Refused, http_json, ollama_host
    from .runtimes.ollama.store import parse_name

    short = parse_name(name).short
    url = ollama_host()
    try:
        d = http_json(f"{url}/api/show", {"model": short, "verbose": True}, timeout=30)
    except NoServer:
        return None
    except Refused as e:
        if e.status in (400, 404):  # no such model (400: a name that server does not accept)
            return None
        raise
    info, raw = d.get("model_info"), d.get("tensors")
    if info is None or raw is None or info == {} or raw == []:
        raise AutoctxError(f"{short}: the Ollama server at {url} does not list its tensors (an older Ollama?); "
                           "pull it into the local store or give the GGUF path")
    if not isinstance(info, dict) or not isinstance(raw, list):
        raise BadAnswer("unexpected answer from Ollama POST /api/show: model_info must be an object and tensors an "
                        "array")
    tensors, offset = [], 0
    try:
        for t in raw:
            gtype = type_from_name(str(t["type"]))
            shape = tuple(int(x) for x in t["shape"])
            if not isinstance(t["name"], str) or any(x < 0 for x in shape):
                raise ValueError("bad tensor entry")
            n = tensor_bytes(gtype, shape)
            tensors.append(TensorInfo(t["name"], shape, gtype, offset, n))
            offset += (n + 31) // 32 * 32
    except (KeyError, ValueError, TypeError, IndexError):
        raise BadAnswer(f"unexpected answer from Ollama POST /api/show: tensor {len(tensors)} is not "
                        "{name, type, shape}") from None
    view = GGUFFile([f"ollama:{short}"], 3, "<", dict(info), tensors, 32, [0], [offset])
    spec = spec_from_gguf(view)
    return replace(spec, name=short, source=f"ollama /api/show at {url} (tensor offsets approximated)")


def shipped_profiles() -> dict[str, dict]:
    out = {}
    for p in sorted(SHIPPED.glob("*.toml")) if SHIPPED.is_dir() else []:
        try:
            d = tomllib.loads(p.read_text())
            out[d["ollama"]] = {**d, "file": str(p)}
        except (OSError, tomllib.TOMLDecodeError, KeyError):
            continue
    return out


def shipped_profile(name: str) -> ModelSpec | None:
    from .runtimes.ollama.store import parse_name
    from .catalog import get_shape, header_view

    short = parse_name(name).short
    prof = shipped_profiles().get(short)
    if prof is None:
        return None
    # the text model; a vision tower inside the tag's blob is its projector (runtimes.ollama.projector)
    spec = spec_from_gguf(header_view(get_shape(prof["shape"]), f"shipped:{short}", text_only=True))
    return replace(spec, name=short, source=f"shipped profile {prof['file']} (weights {prof['weights']})")


RESOLVERS: list[Resolver] = [gguf_path, ollama_store, ollama_show, shipped_profile]


def _first(resolvers: list[Resolver], name: str, none_found: str) -> ModelSpec:
    """The first resolver's answer; a NotPulled error (with the pull command) outranks `none_found`."""
    not_pulled: NotPulled | None = None
    for r in resolvers:
        try:
            spec = r(name)
        except NotPulled as e:
            not_pulled = e
            continue
        if spec is not None:
            return spec
    if not_pulled is not None:
        raise not_pulled
    raise AutoctxError(none_found)


def resolve_ollama(name: str, shipped: bool = False) -> ModelSpec:
    """An Ollama model name only (never a path): the local store, else the server's /api/show, else (when
    `shipped`) a shipped profile. A name that is not an Ollama model name (`../x`, `/etc/passwd`) is refused before
    anything is opened."""
    from .runtimes.ollama.store import parse_name

    parse_name(name)
    return _first([ollama_store, ollama_show] + ([shipped_profile] if shipped else []), name,
                  f"{name}: not an Ollama model this machine or its Ollama server has")


def resolve(name: str, pulled_only: bool = False) -> ModelSpec:
    """The ModelSpec for MODEL; `pulled_only` skips shipped profiles (running needs the model itself)."""
    return _first([r for r in RESOLVERS if not (pulled_only and r is shipped_profile)], name,
                  f"{name}: not a GGUF file nor an Ollama model name")
