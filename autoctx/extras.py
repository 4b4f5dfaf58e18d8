"""The files llama-server loads beside the model, read from their GGUF headers: a multimodal projector (`--mmproj`,
a `clip` GGUF: tools/mtmd/clip.cpp), a draft model (`-md`, a model GGUF like any other) and LoRA adapters (`--lora`,
src/llama-adapter.cpp). `load_extras` reads the ones a `memory.Params` names; `memory.extra_buffers` turns them into
what llama-server allocates. Every refusal is one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedModel
from .gguf import GGUFFile, TensorInfo, clip, read_gguf
from .model import ModelSpec, load_spec

# clip.cpp load_hparams: the projector types whose warmup image is not image_size × image_size, as
# set_warmup_n_tokens(N) sets it (N merged tokens: warmup_image_size = sqrt(N) × patch × n_merge), and their n_merge
# when the GGUF does not say it (clip.vision.spatial_merge_size or clip.vision.projector.scale_factor)
WARMUP_TOKENS = {
    "phi4": 16 * 16, "pixtral": 256, "lightonocr": 256, "kimivl": 256, "gemma4v": 256, "gemma4uv": 256,
    "qwen2vl_merger": 46 * 46, "qwen2.5vl_merger": 46 * 46, "qwen3vl_merger": 46 * 46, "ling3vl": 46 * 46,
    "dots_ocr": 46 * 46, "glm4v": 46 * 46, "glm5v": 46 * 46, "mimovl": 46 * 46, "youtuvl": 16 * 16,
    "minimax_m3": 16 * 16, "muse-glimmer": 32 * 32,
}
DEFAULT_N_MERGE = {"gemma3": 4, "qwen2vl_merger": 2, "qwen2.5vl_merger": 2, "qwen3vl_merger": 2, "pixtral": 1,
                   "lightonocr": 1, "phi4": 1}
# the projector types whose encoder autoctx's compute closed form was measured on (SigLIP ViT, gemma3)
CALIBRATED = ("gemma3",)


@dataclass(frozen=True)
class Encoder:
    """One encoder of a projector file (clip.vision.* or clip.audio.*)."""

    modality: str  # vision | audio
    projector_type: str
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int
    image_size: int = 0
    patch_size: int = 0
    n_merge: int = 1

    @property
    def warmup_tokens(self) -> int:
        """Patches of the image clip.cpp reserves its compute buffer for (get_dummy_batch: warmup_image_size²)."""
        if not self.patch_size:
            return 0
        n = WARMUP_TOKENS.get(self.projector_type)
        side = int(n ** 0.5) * self.patch_size * self.n_merge if n else self.image_size
        return (side // self.patch_size) ** 2


@dataclass(frozen=True)
class ProjectorSpec:
    path: str
    name: str
    encoders: tuple[Encoder, ...]
    tensors: tuple[TensorInfo, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def projector_types(self) -> tuple[str, ...]:
        return tuple(e.projector_type for e in self.encoders)


@dataclass(frozen=True)
class LoraSpec:
    path: str
    architecture: str
    pairs: tuple[tuple[str, TensorInfo, TensorInfo], ...]  # (base tensor name, lora_a, lora_b)


@dataclass(frozen=True)
class Extras:
    """The files of a Params, read: what memory.extra_buffers needs besides the model's own spec."""

    projector: ProjectorSpec | None = None
    draft: ModelSpec | None = None
    loras: tuple[LoraSpec, ...] = ()

    def __bool__(self) -> bool:
        return self.projector is not None or self.draft is not None or bool(self.loras)


def _int(f: GGUFFile, key: str, default: int = 0) -> int:
    value = f.metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsupportedModel(f"{f.path}: bad {key} {clip(value)}: a non-negative integer is required")
    return value


def projector_from_gguf(f: GGUFFile) -> ProjectorSpec:
    """A `clip` GGUF (what --mmproj takes). Anything else is refused with the reason."""
    md = f.metadata
    arch = md.get("general.architecture")
    if arch != "clip":
        what = f"a {clip(arch)} model" if isinstance(arch, str) and arch else "no general.architecture"
        raise UnsupportedModel(f"{f.path}: not a multimodal projector (--mmproj wants a 'clip' GGUF; this is {what})")
    encoders = []
    for modality, flag in (("vision", "clip.has_vision_encoder"), ("audio", "clip.has_audio_encoder")):
        if md.get(flag) is not True:
            continue
        ptype = md.get(f"clip.{modality}.projector_type", md.get("clip.projector_type"))
        if not isinstance(ptype, str) or not ptype:
            raise UnsupportedModel(f"{f.path}: no clip.projector_type for its {modality} encoder")
        merge_key = ("clip.vision.spatial_merge_size" if "clip.vision.spatial_merge_size" in md
                     else "clip.vision.projector.scale_factor")
        encoders.append(Encoder(
            modality, ptype, _int(f, f"clip.{modality}.embedding_length"),
            _int(f, f"clip.{modality}.feed_forward_length"),
            _int(f, f"clip.{modality}.attention.head_count"), _int(f, f"clip.{modality}.block_count"),
            _int(f, "clip.vision.image_size") if modality == "vision" else 0,
            _int(f, "clip.vision.patch_size") if modality == "vision" else 0,
            max(1, _int(f, merge_key, DEFAULT_N_MERGE.get(ptype, 1))) if modality == "vision" else 1))
    if not encoders:
        raise UnsupportedModel(f"{f.path}: a clip GGUF with neither a vision nor an audio encoder")
    name = md.get("general.name", "")
    return ProjectorSpec(f.path, name if isinstance(name, str) else "", tuple(encoders), tuple(f.tensors))


def lora_from_gguf(f: GGUFFile) -> LoraSpec:
    """A LoRA adapter GGUF (llama_adapter_lora_init_impl): general.type adapter, adapter.type lora, tensors in
    `<name>.lora_a` / `<name>.lora_b` pairs (norm vectors are skipped there too)."""
    md = f.metadata
    if md.get("general.type") != "adapter" or md.get("adapter.type") != "lora":
        raise UnsupportedModel(f"{f.path}: not a LoRA adapter (llama.cpp expects general.type 'adapter' and "
                               f"adapter.type 'lora', got {clip(md.get('general.type'))} and "
                               f"{clip(md.get('adapter.type'))})")
    a: dict[str, TensorInfo] = {}
    b: dict[str, TensorInfo] = {}
    for t in f.tensors:
        if t.name.endswith(".lora_a"):
            a[t.name[:-7]] = t
        elif t.name.endswith(".lora_b"):
            b[t.name[:-7]] = t
        elif not t.name.endswith("_norm.weight"):
            raise UnsupportedModel(f"{f.path}: LoRA tensor {clip(t.name)} has unexpected suffix")
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise UnsupportedModel(f"{f.path}: LoRA tensor pair for {clip(missing[0])} is missing one component")
    arch = md.get("general.architecture", "")
    return LoraSpec(f.path, arch if isinstance(arch, str) else "", tuple((n, a[n], b[n]) for n in sorted(a)))


def load_projector(path: str) -> ProjectorSpec:
    return projector_from_gguf(read_gguf(path))


def load_lora(path: str) -> LoraSpec:
    return lora_from_gguf(read_gguf(path))


def load_extras(params, model: ModelSpec | None = None) -> Extras:
    """Read the files `params` names (--mmproj, -md, --lora). A LoRA must fit the model (same architecture, every
    base tensor present with matching rows), as llama.cpp checks when it loads it."""
    projector = load_projector(params.mmproj) if params.mmproj else None
    draft = load_spec(params.model_draft) if params.model_draft else None
    loras = tuple(load_lora(p) for p in params.lora)
    if model is not None:
        names = {t.name: t for t in model.tensors}
        for lo in loras:
            if lo.architecture != model.architecture:
                raise UnsupportedModel(f"{lo.path}: a LoRA for {clip(lo.architecture)}, the model is "
                                       f"{model.architecture} (llama.cpp: model arch and LoRA arch mismatch)")
            for name, ta, tb in lo.pairs:
                base = names.get(name)
                if base is None:
                    raise UnsupportedModel(f"{lo.path}: LoRA tensor {clip(name)} does not exist in the model")
                if name.endswith("token_embd.weight"):
                    ok = base.shape[0] == tb.shape[1] and base.shape[1] == ta.shape[1]
                else:
                    ok = base.shape[0] == ta.shape[0] and len(base.shape) > 1 and len(tb.shape) > 1 \
                        and base.shape[1] == tb.shape[1]
                if not ok:
                    raise UnsupportedModel(f"{lo.path}: LoRA tensor {clip(name)} has the wrong shape for this model")
    return Extras(projector, draft, loras)


# Ollama's own GGUFs (its new engine) may carry the vision tower inside the model blob, under `<arch>.vision.*` keys;
# Ollama ≥ 0.30 then passes the model blob itself as --mmproj. The projector type by text architecture (UNVERIFIED:
# read from Ollama's model code, not from a loaded blob).
INLINE_PROJECTOR_TYPES = {"gemma3": "gemma3", "qwen25vl": "qwen2.5vl_merger", "qwen3vl": "qwen3vl_merger",
                          "mistral3": "pixtral", "llama4": "llama4",
                          # Ollama's qwen3.5 blobs: its compat layer loads the tower as a qwen3vl_merger clip
                          "qwen35": "qwen3vl_merger", "qwen35moe": "qwen3vl_merger"}


def inline_projector(f: GGUFFile) -> ProjectorSpec | None:
    """The vision tower inside a model GGUF (tensors v.* and mm.*, keys <arch>.vision.*), or None."""
    arch = f.metadata.get("general.architecture")
    tensors = tuple(t for t in f.tensors if t.name.startswith(("v.", "mm.")))
    if not tensors or not isinstance(arch, str) or f"{arch}.vision.block_count" not in f.metadata:
        return None

    def k(name: str, default: int = 0) -> int:
        return _int(f, f"{arch}.vision.{name}", default)

    ptype = INLINE_PROJECTOR_TYPES.get(arch, arch)
    enc = Encoder("vision", ptype, k("embedding_length"), k("feed_forward_length"), k("attention.head_count"),
                  k("block_count"), k("image_size"), k("patch_size"),
                  max(1, k("spatial_merge_size", DEFAULT_N_MERGE.get(ptype, 1))))
    return ProjectorSpec(f.path, "inline vision tower", (enc,), tensors)
