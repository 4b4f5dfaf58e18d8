"""MODEL arguments → ModelSpec. Resolvers are tried in order; the first that recognises the name answers.

A GGUF path (or the first part of a split GGUF); then an Ollama model name (`qwen2.5:32b`), read from the local
model store. Shipped profiles plug in here next.
"""

from __future__ import annotations

import os
from typing import Callable

from .errors import AutoctxError
from .model import ModelSpec, load_spec

Resolver = Callable[[str], "ModelSpec | None"]


def gguf_path(name: str) -> ModelSpec | None:
    if os.path.exists(name) or name.endswith(".gguf"):
        return load_spec(name)  # a missing .gguf path raises the reader's one-line error
    return None


def ollama_store(name: str) -> ModelSpec | None:
    from dataclasses import replace

    from .runtimes.ollama.store import find_model

    found = find_model(name)  # raises a clear error when not pulled or unreadable
    spec = load_spec(str(found.gguf))
    return replace(spec, name=found.name.short, source=f"ollama store {found.root}")


RESOLVERS: list[Resolver] = [gguf_path, ollama_store]


def resolve(name: str) -> ModelSpec:
    for r in RESOLVERS:
        spec = r(name)
        if spec is not None:
            return spec
    raise AutoctxError(f"{name}: not a GGUF file nor an Ollama model name")
