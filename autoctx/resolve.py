"""MODEL arguments → ModelSpec. Resolvers are tried in order; the first that recognises the name answers.

1. a GGUF path (or the first part of a split GGUF);
2. an Ollama model name (`qwen2.5:32b`) pulled into the local model store (its GGUF blob is read directly);
3. a shipped profile (the repository's profiles/ollama/*.toml): the architecture and tensor shapes of a popular
   Ollama tag from autoctx.shapes, so that a model can be planned before it is pulled.
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
SHIPPED = Path(__file__).resolve().parents[1] / "profiles" / "ollama"


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
    from .shapes import get_shape, header_view

    short = parse_name(name).short
    prof = shipped_profiles().get(short)
    if prof is None:
        return None
    spec = spec_from_gguf(header_view(get_shape(prof["shape"]), f"shipped:{short}"))
    return replace(spec, name=short, source=f"shipped profile {prof['file']} (weights {prof['weights']})")


RESOLVERS: list[Resolver] = [gguf_path, ollama_store, shipped_profile]


def resolve(name: str, pulled_only: bool = False) -> ModelSpec:
    """The ModelSpec for MODEL; `pulled_only` skips shipped profiles (running needs the model itself)."""
    not_pulled: NotPulled | None = None
    for r in RESOLVERS:
        if pulled_only and r is shipped_profile:
            continue
        try:
            spec = r(name)
        except NotPulled as e:
            not_pulled = e
            continue
        if spec is not None:
            return spec
    if not_pulled is not None:
        raise not_pulled
    raise AutoctxError(f"{name}: not a GGUF file nor an Ollama model name")
