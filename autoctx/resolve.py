"""MODEL arguments → ModelSpec. Resolvers are tried in order; the first that recognises the name answers.

Now: a GGUF path (or the first part of a split GGUF). Ollama names (`qwen2.5:32b`) and shipped profiles plug in
here as further resolvers.
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


RESOLVERS: list[Resolver] = [gguf_path]


def resolve(name: str) -> ModelSpec:
    for r in RESOLVERS:
        spec = r(name)
        if spec is not None:
            return spec
    raise AutoctxError(f"{name}: not a GGUF file path (Ollama model names are not supported yet)")
