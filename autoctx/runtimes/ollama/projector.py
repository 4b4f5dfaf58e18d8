"""The multimodal projector Ollama passes beside a model (its --mmproj): the manifest's projector layer, the vision
tower inside the model blob, or (planned before a pull) the tower inside a shipped profile's blob."""

from __future__ import annotations

from ...extras import Extras, ProjectorSpec, inline_projector, load_projector
from ...gguf import read_gguf
from ...model import ModelSpec

PROJECTOR_MEDIA = "application/vnd.ollama.image.projector"


def shipped_projector(name: str) -> tuple[str, ProjectorSpec] | None:
    """The vision tower inside a shipped profile's blob (its catalog entry's v.*/mm.* tensors), or None."""
    from ...catalog import get_shape, projector_of
    from ...resolve import shipped_profiles
    from .store import parse_name

    short = parse_name(name).short
    prof = shipped_profiles().get(short)
    if prof is None:
        return None
    path = f"shipped:{short}"
    proj = projector_of(get_shape(prof["shape"]), path)
    return (path, proj) if proj else None


def ollama_projector(name: str, model: ModelSpec) -> tuple[str, ProjectorSpec] | None:
    """What Ollama ≥ 0.30 passes as --mmproj for a pulled model (llm/llama_server.go: the first projector layer; a
    model blob with its vision tower inside is passed itself): (the path, the projector), or None."""
    from .store import OllamaModelError, find_model

    try:
        found = find_model(name)
    except OllamaModelError:
        # not in the local store: a shipped profile's blob may carry a vision tower (planned before the pull),
        # a remote server's model has nothing to read
        return shipped_projector(name) if model.source.startswith("shipped profile") else None
    layers = found.layers(PROJECTOR_MEDIA)
    if layers:
        path = str(found.blob(layers[0]))
        return path, load_projector(path)
    inline = inline_projector(read_gguf(str(found.gguf))) if any(t.name.startswith("v.") for t in model.tensors) \
        else None
    return (str(found.gguf), inline) if inline else None


def with_ollama_projector(opts, name: str, model: ModelSpec):
    """PlanOptions `opts` with the projector Ollama would pass for `name` counted beside the model (the pulled
    tag's projector layer or vision tower, else a shipped profile's), unchanged when the tag has none."""
    from dataclasses import replace

    proj = ollama_projector(name, model)
    if proj is None:
        return opts
    extras = replace(opts.extras, projector=proj[1]) if opts.extras else Extras(projector=proj[1])
    return replace(opts, beside={**opts.beside, "mmproj": proj[0]}, extras=extras)
