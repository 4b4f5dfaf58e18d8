"""llama-server's command line: parse the memory-relevant flags into `memory.Params`, and write them back.

Spellings and defaults follow the pinned build's common/arg.cpp. Flags autoctx does not model are kept (so they
can be passed through to the server) and reported; `_server_flags.FLAGS` (generated from arg.cpp) tells which of
them take a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ...errors import ArgsError
from ...memory import KV_TYPES, SPLIT_MODES, Device, Params, ot_items
from ._server_flags import FLAGS

# canonical name -> spellings (common/arg.cpp)
SPELLINGS: dict[str, tuple[str, ...]] = {
    "ctx": ("-c", "--ctx-size"),
    "ctk": ("-ctk", "--cache-type-k"),
    "ctv": ("-ctv", "--cache-type-v"),
    "fa": ("-fa", "--flash-attn"),
    "np": ("-np", "--parallel"),
    "ub": ("-ub", "--ubatch-size"),
    "b": ("-b", "--batch-size"),
    "ngl": ("-ngl", "--gpu-layers", "--n-gpu-layers"),
    "kvu": ("-kvu", "--kv-unified"),
    "no_kvu": ("-no-kvu", "--no-kv-unified"),
    "swa_full": ("--swa-full",),
    "repack": ("--repack",),
    "no_repack": ("-nr", "--no-repack"),
    "no_host": ("--no-host",),
    "fit": ("-fit", "--fit"),
    "load_mode": ("-lm", "--load-mode"),
    "nkvo": ("-nkvo", "--no-kv-offload"),
    "kvo": ("-kvo", "--kv-offload"),
    "ts": ("-ts", "--tensor-split"),
    "sm": ("-sm", "--split-mode"),
    "mg": ("-mg", "--main-gpu"),
    "op_offload": ("--op-offload",),
    "no_op_offload": ("--no-op-offload",),
    "embedding": ("--embedding", "--embeddings"),
    "rerank": ("--rerank", "--reranking"),  # sets embedding too (and pooling = rank, which the server applies)
    "rpc": ("--rpc",),  # RPC servers: their devices come first (src/llama.cpp); passed through as given
    # tensor buffer-type overrides, kept in command-line order (the first matching pattern wins)
    "ot": ("-ot", "--override-tensor"),
    "cpu_moe": ("-cmoe", "--cpu-moe"),
    "n_cpu_moe": ("-ncmoe", "--n-cpu-moe"),
    "n_cpu_ffn": ("-ncffn", "--n-cpu-ffn"),
    # files beside the model and the host memory that grows after /health (memory.add_extra_buffers)
    "mmproj": ("-mm", "--mmproj"),
    "mmproj_offload": ("--mmproj-offload",),
    "no_mmproj_offload": ("--no-mmproj-offload",),
    "model_draft": ("-md", "--model-draft", "--spec-draft-model"),
    "ngld": ("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", "--spec-draft-ngl"),
    "ctkd": ("-ctkd", "--cache-type-k-draft", "--spec-draft-type-k"),
    "ctvd": ("-ctvd", "--cache-type-v-draft", "--spec-draft-type-v"),
    "spec_type": ("--spec-type",),
    "draft_n_max": ("--spec-draft-n-max",),
    "lora": ("--lora",),
    "lora_scaled": ("--lora-scaled",),
    "cache_ram": ("-cram", "--cache-ram"),
    "ctx_checkpoints": ("-ctxcp", "--ctx-checkpoints", "--swa-checkpoints"),
    "no_warmup": ("--no-warmup",),
    "warmup": ("--warmup",),
    "model": ("-m", "--model"),
}
_BY_SPELLING = {s: name for name, spellings in SPELLINGS.items() for s in spellings}
_TRUE = {"on", "enabled", "true", "1", "yes"}
_FALSE = {"off", "disabled", "false", "0", "no"}
_AUTO = {"auto", "-1"}  # common/arg.cpp is_autoy
MAX_SEQ = 256  # src/llama-cparams.h LLAMA_MAX_SEQ: llama_context refuses more sequences (slots)
INT_MAX = 2**31 - 1  # common/arg.cpp reads numbers with std::stoi: a C int


@dataclass
class ParsedArgs:
    params: Params
    model: str | None = None
    passthrough: list[str] = field(default_factory=list)  # flags autoctx does not model, kept in order
    ignored: list[str] = field(default_factory=list)  # their names, for the warning
    explicit: set[str] = field(default_factory=set)  # canonical names the user set


def _int(flag: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ArgsError(f"{flag} expects an integer, got {value!r}") from None
    if not -INT_MAX - 1 <= n <= INT_MAX:
        raise ArgsError(f"{flag} {value} is out of range (llama-server reads a 32-bit integer)")
    return n


def _onoff(flag: str, value: str, allow_auto: bool = False) -> str:
    v = value.lower()
    if v in _TRUE:
        return "on"
    if v in _FALSE:
        return "off"
    if allow_auto and v in _AUTO:
        return "auto"
    raise ArgsError(f"{flag} expects {'on|off|auto' if allow_auto else 'on|off'}, got {value!r}")


def parse_server_args(argv: list[str], base: Params | None = None) -> ParsedArgs:
    """Parse llama-server arguments. Raises ArgsError for a bad value of a modelled flag.

    Without `base`, the defaults are llama-server's own on this host (its CPU repack rules included)."""
    if base is None:
        from ...probe.cpu import host_repack_rules

        base = Params(cpu_repack=host_repack_rules())
    server_port(argv)  # checked here so that a bad --port is the first thing said
    p = base
    out = ParsedArgs(p)
    i = 0
    while i < len(argv):
        tok = argv[i]
        flag, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if flag.startswith("--"):
            flag = flag.replace("_", "-")  # arg.cpp accepts --ctx_size for --ctx-size
        name = _BY_SPELLING.get(flag)
        takes = FLAGS.get(flag)
        if name is None or name in ("rerank", "rpc"):
            if not tok.startswith("-") or tok == "-":
                raise ArgsError(f"unexpected argument {tok!r} (the model goes first; llama-server flags after it)")
            if name == "rerank":
                p = replace(p, embeddings=True)
                out.explicit.add("embedding")
            if name == "rpc":
                value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
                p = replace(p, devices=rpc_devices(flag, value) + tuple(d for d in p.devices
                                                                         if not d.backend.remote))
                out.explicit.add("rpc")
            n = 1
            if takes and not eq:
                if i + 1 >= len(argv):
                    raise ArgsError(f"{flag} expects a value")
                n = 2
            elif takes is None and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                n = 2  # unknown flag: assume the next bare word is its value
            # llama-server has no --flag=value form (arg.cpp looks the whole token up): pass it as two words
            out.passthrough += [flag, inline] if eq and takes is not False else argv[i:i + n]
            if name is None:
                out.ignored.append(flag)
            i += n
            continue
        value = None
        if FLAGS.get(flag, False) or name in ("fa", "fit"):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise ArgsError(f"{flag} expects a value")
        i += 1
        out.explicit.add(name)
        if name == "ctx":
            n = _int(flag, value)
            if n < 0:
                raise ArgsError(f"{flag} must be >= 0")
            p = replace(p, n_ctx=n)
        elif name in ("ctk", "ctv"):
            t = value.lower()
            if t not in KV_TYPES:
                raise ArgsError(f"{flag}: unsupported cache type {value!r} (allowed: {', '.join(KV_TYPES)})")
            p = replace(p, **{"cache_type_k" if name == "ctk" else "cache_type_v": t})
        elif name == "fa":
            p = replace(p, flash_attn=_onoff(flag, value, allow_auto=True))
        elif name == "np":
            n = _int(flag, value)
            if n == 0:
                raise ArgsError(f"{flag} must be a positive number of slots, or -1 for auto")
            if n > MAX_SEQ:
                raise ArgsError(f"{flag} {n}: llama.cpp runs at most {MAX_SEQ} slots (LLAMA_MAX_SEQ)")
            p = replace(p, n_parallel=max(n, -1))  # server.cpp: any negative value means auto
        elif name == "ub":
            n = _int(flag, value)
            if n < 0:
                raise ArgsError(f"{flag} must be >= 0 (0 = the batch size)")
            p = replace(p, n_ubatch=n)  # 0: llama_context uses n_batch (Params.resolved)
        elif name == "b":
            n = _int(flag, value)
            if n < 1:
                raise ArgsError(f"{flag} must be >= 1")
            p = replace(p, n_batch=n)
        elif name == "ngl":
            v = value.lower()
            p = replace(p, n_gpu_layers=-1 if v == "auto" else -2 if v == "all" else _int(flag, value))
        elif name == "kvu":
            p = replace(p, kv_unified=True)
        elif name == "no_kvu":
            p = replace(p, kv_unified=False)
        elif name == "swa_full":
            p = replace(p, swa_full=True)
        elif name == "repack":
            p = replace(p, repack=True)
        elif name == "no_repack":
            p = replace(p, repack=False)
        elif name == "no_host":
            p = replace(p, no_host=True)
        elif name == "fit":
            p = replace(p, fit=_onoff(flag, value) == "on")
        elif name == "load_mode":
            v = value.lower()
            if v not in ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio"):
                raise ArgsError(f"{flag}: unknown load mode {value!r}")
            p = replace(p, mmap=v in ("auto", "mmap", "mmap+mlock"))
        elif name == "nkvo":
            p = replace(p, offload_kqv=False)
        elif name == "kvo":
            p = replace(p, offload_kqv=True)
        elif name == "ts":
            try:
                split = tuple(float(x) for x in value.replace("/", ",").split(",") if x)
            except ValueError:
                raise ArgsError(f"{flag} expects comma-separated numbers, got {value!r}") from None
            if not all(0 <= x < float("inf") for x in split):  # nan fails too
                raise ArgsError(f"{flag} expects proportions (numbers >= 0), got {value!r}")
            p = replace(p, tensor_split=split)
        elif name == "sm":
            v = value.lower()
            if v not in SPLIT_MODES:
                raise ArgsError(f"{flag} expects one of {', '.join(SPLIT_MODES)}, got {value!r}")
            p = replace(p, split_mode=v)
        elif name == "mg":
            p = replace(p, main_gpu=_int(flag, value))
        elif name == "op_offload":
            p = replace(p, op_offload=True)
        elif name == "no_op_offload":
            p = replace(p, op_offload=False)
        elif name == "embedding":
            p = replace(p, embeddings=True)
        elif name in ("ot", "cpu_moe", "n_cpu_moe", "n_cpu_ffn"):
            # Params.tensor_overrides spells them -ot, --cpu-moe, --n-cpu-moe, --n-cpu-ffn; the buffer types are
            # checked once the devices are known (memory.buft_overrides)
            if name == "ot":
                ot_items(value)
            elif name != "cpu_moe":
                n = _int(flag, value)
                if n < 0:
                    raise ArgsError(f"{flag} must be >= 0 (a number of blocks)")
                value = str(n)
            spelled = "-ot" if name == "ot" else SPELLINGS[name][1]
            p = replace(p, tensor_overrides=(*p.tensor_overrides, (spelled, value or "")))
        elif name in _BESIDE:
            p = _beside(p, name, flag, value)
        elif name == "model":
            out.model = value
    out.params = p
    return out


def server_port(argv: list[str]) -> int | None:
    """The --port the user gave (llama-server spells it `--port N` only), checked: None when there is none."""
    for i, tok in enumerate(argv):
        flag, eq, inline = tok.partition("=")
        if flag == "--port":
            if not eq and i + 1 >= len(argv):
                raise ArgsError("--port expects a value")
            value = inline if eq else argv[i + 1]
            if not value.isdigit() or not 1 <= int(value) <= 65535:
                raise ArgsError(f"--port expects a TCP port number 1-65535, got {value!r}")
            return int(value)
    return None


def without_flags(argv: list[str], names: set[str]) -> list[str]:
    """argv with the modelled flags named (canonical names, e.g. {"ctx", "ctk"}) removed, values included."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag = argv[i].partition("=")[0]
        name = _BY_SPELLING.get(flag)
        step = 2 if (FLAGS.get(flag) and "=" not in argv[i]) else 1
        if name not in names:
            out += argv[i:i + step]
        i += step
    return out


def with_devices(p: Params, devices: list[Device]) -> Params:
    return replace(p, devices=tuple(devices))


_ENDPOINT = re.compile(r"(?P<host>[^\s,@\[\]]+):(?P<port>\d{1,5})")


def _endpoint(flag: str, text: str) -> str:
    m = _ENDPOINT.fullmatch(text.strip())
    if not m or not 1 <= int(m["port"]) <= 65535:
        raise ArgsError(f"{flag}: expected host:port for an RPC server, got {text!r}")
    return f"{m['host']}:{int(m['port'])}"


def rpc_devices(flag: str, value: str) -> tuple[Device, ...]:
    """--rpc host:port,...: one device per server (rpc-server's default on a machine without GPUs: its CPU), named
    RPC0, RPC1... in order (ggml-rpc.cpp ggml_backend_rpc_add_server), the worker's backend assumed CPU."""
    if not value.strip():
        raise ArgsError(f"{flag} expects host:port[,host:port...]")
    return tuple(Device(f"RPC{k}", endpoint=_endpoint(flag, ep)) for k, ep in enumerate(value.split(",")))


_DEVICE = re.compile(r"(?P<prefix>[A-Za-z]+)(?P<index>[0-9]*)(?:\[(?P<endpoint>[^\]]*)\])?")


def parse_devices(flag: str, text: str) -> list[Device]:
    """A device list as llama.cpp names devices, for `--devices`: CUDA0, ROCm1, MUSA0, Vulkan0, MTL0 (or Metal0),
    SYCL0, RPC0, or an RPC buffer's name RPC<i>[host:port] (the i-th device of the worker at host:port). Case does
    not matter. Each name may end in @-options: a number is the device's buffer alignment (for backends where it is
    the device's own, e.g. Vulkan0@4), a backend name is an RPC device's worker backend (RPC0[10.0.0.2:50052]@cuda;
    default cpu). RPC devices are numbered across the list as llama.cpp numbers them (RPC0, RPC1... in order)."""
    from ...memory import BACKEND_ALIASES, BACKENDS, known_backends
    from ...units import MAX_DEVICE_INDEX

    by_lower = {b.lower(): b for b in BACKENDS if b != "CPU"} | {a.lower(): b for a, b in BACKEND_ALIASES.items()}
    out: list[Device] = []
    n_rpc = 0
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        head, *opts = item.split("@")
        m = _DEVICE.fullmatch(head.strip())
        backend = by_lower.get(m["prefix"].lower()) if m else None
        if m and m["prefix"].lower() == "cpu":
            raise ArgsError(f"{flag} lists GPUs and RPC devices only (the CPU is always there)")
        if not m or backend is None or (m["endpoint"] is not None and backend != "RPC") or \
                (not m["index"] and m["endpoint"] is None):
            raise ArgsError(f"{flag}: unknown device {item!r} (known backends: {known_backends()}; e.g. cuda0, "
                            "vulkan1, mtl0, rpc0, RPC0[127.0.0.1:50052])")
        index = int(m["index"] or 0)
        if index > MAX_DEVICE_INDEX:
            raise ArgsError(f"{flag}: unknown device {item!r}: device numbers go up to {MAX_DEVICE_INDEX}")
        kw: dict = {}
        for opt in (o.strip() for o in opts):
            if opt.isascii() and opt.isdigit():
                align = int(opt)
                if not 1 <= align <= 1 << 20 or align & (align - 1):
                    raise ArgsError(f"{flag}: {item!r}: an alignment is a power of two up to 1 MiB, got {opt}")
                kw["align"] = align
            elif backend == "RPC" and (opt.lower() == "cpu" or by_lower.get(opt.lower()) not in (None, "RPC")):
                kw["remote"] = "CPU" if opt.lower() == "cpu" else by_lower[opt.lower()]
            else:
                raise ArgsError(f"{flag}: {item!r}: unknown option {opt!r} (an alignment in bytes, or for an RPC "
                                f"device its worker's backend: cpu, {known_backends().replace(', RPC', '')})")
        if backend == "RPC":
            if m["endpoint"] is not None:
                kw.update(endpoint=_endpoint(flag, m["endpoint"]), remote_index=index)
                index = n_rpc
            n_rpc += 1
        name = f"{backend}{index}"
        if any(d.name == name for d in out):
            raise ArgsError(f"{flag} names {name} twice")
        out.append(Device(name, **kw))
    return out


def _num(x: float) -> str:
    s = f"{x:g}"
    return s if float(s) == x else repr(x)


def to_server_args(p: Params, model: str | None = None) -> list[str]:
    """Every memory-relevant flag, explicitly, so that the server cannot re-decide (fit off)."""
    argv: list[str] = []
    if model:
        argv += ["-m", model]
    remote = [d for d in p.devices if d.backend.remote and d.endpoint]
    if remote:  # the workers, then every device in the planned order (--rpc first: -dev needs their devices named)
        argv += ["--rpc", ",".join(dict.fromkeys(d.endpoint for d in remote)),
                 "-dev", ",".join(d.name for d in p.devices)]
    argv += ["-c", str(p.n_ctx), "-np", str(p.n_parallel), "-ctk", p.cache_type_k, "-ctv", p.cache_type_v,
             "-fa", p.flash_attn, "-ngl", str(p.n_gpu_layers), "-b", str(p.n_batch), "-ub", str(p.n_ubatch)]
    if p.kv_unified is not None:
        argv.append("-kvu" if p.kv_unified else "-no-kvu")
    if p.swa_full:
        argv.append("--swa-full")
    if not p.repack:
        argv.append("--no-repack")
    if p.no_host:
        argv.append("--no-host")
    if not p.mmap:
        argv += ["--load-mode", "none"]
    if not p.offload_kqv:
        argv.append("--no-kv-offload")
    if p.tensor_split:
        argv += ["-ts", ",".join(_num(x) for x in p.tensor_split)]
    if p.split_mode != "layer":
        argv += ["-sm", p.split_mode]
    if p.main_gpu:
        argv += ["-mg", str(p.main_gpu)]
    if not p.op_offload:
        argv.append("--no-op-offload")
    if p.embeddings:
        argv.append("--embedding")
    for flag, value in p.tensor_overrides:  # in their order: the first matching pattern wins
        argv += [flag, value] if value else [flag]
    argv += beside_args(p)
    argv += ["--fit", "on" if p.fit else "off"]
    return argv


_BESIDE = ("mmproj", "mmproj_offload", "no_mmproj_offload", "model_draft", "ngld", "ctkd", "ctvd", "spec_type",
           "draft_n_max", "lora", "lora_scaled", "cache_ram", "ctx_checkpoints", "no_warmup", "warmup")


def _files(flag: str, value: str) -> tuple[str, ...]:
    files = tuple(x.strip() for x in value.split(",") if x.strip())
    if not files:
        raise ArgsError(f"{flag} expects a file")
    return files


def _beside(p: Params, name: str, flag: str, value: str | None) -> Params:
    """One flag of the files beside the model (--mmproj, -md, --lora...) or of the host prompt cache, as common/arg.cpp
    reads it."""
    from ...memory import SPEC_TYPES

    if name == "mmproj":
        return replace(p, mmproj=_files(flag, value or "")[0])
    if name in ("mmproj_offload", "no_mmproj_offload"):
        return replace(p, mmproj_offload=name == "mmproj_offload")
    if name == "model_draft":
        return replace(p, model_draft=_files(flag, value or "")[0])
    if name == "ngld":
        v = (value or "").lower()
        return replace(p, draft_ngl=-1 if v == "auto" else -2 if v == "all" else _int(flag, value or ""))
    if name in ("ctkd", "ctvd"):
        t = (value or "").lower()
        if t not in KV_TYPES:
            raise ArgsError(f"{flag}: unsupported cache type {value!r} (allowed: {', '.join(KV_TYPES)})")
        return replace(p, **{"cache_type_k_draft" if name == "ctkd" else "cache_type_v_draft": t})
    if name == "spec_type":
        types = tuple(x.strip() for x in (value or "").split(",") if x.strip())
        bad = [t for t in types if t not in SPEC_TYPES]
        if bad or not types:
            raise ArgsError(f"{flag}: unknown speculative type {(bad or [value])[0]!r} "
                            f"(known: {', '.join(SPEC_TYPES)})")
        return replace(p, spec_types=tuple(dict.fromkeys((*p.spec_types, *(t for t in types if t != "none")))))
    if name == "draft_n_max":
        n = _int(flag, value or "")
        if n < 0:
            raise ArgsError(f"{flag} must be >= 0")
        return replace(p, draft_n_max=n)
    if name == "lora":
        return replace(p, lora=(*p.lora, *_files(flag, value or "")))
    if name == "lora_scaled":
        items = _files(flag, value or "")
        if any(len(x.split(":")) != 2 for x in items):
            raise ArgsError(f"{flag} expects FNAME:SCALE[,FNAME:SCALE...], got {value!r}")
        return replace(p, lora=(*p.lora, *(x.split(":")[0] for x in items)))
    if name in ("warmup", "no_warmup"):
        return replace(p, warmup=name == "warmup")
    if name == "cache_ram":
        return replace(p, cache_ram_mib=max(-1, _int(flag, value or "")))
    return replace(p, ctx_checkpoints=max(0, _int(flag, value or "")))  # ctx_checkpoints


def beside_args(p: Params) -> list[str]:
    """The flags of the files beside the model and of the host prompt cache, explicitly (to_server_args)."""
    argv: list[str] = []
    if p.mmproj:
        argv += ["--mmproj", p.mmproj] + ([] if p.mmproj_offload else ["--no-mmproj-offload"])
    if p.model_draft:
        argv += ["-md", p.model_draft, "-ctkd", p.cache_type_k_draft, "-ctvd", p.cache_type_v_draft]
        if p.draft_ngl != -1:
            argv += ["-ngld", "all" if p.draft_ngl < -1 else str(p.draft_ngl)]
    if p.spec_types:
        argv += ["--spec-type", ",".join(p.spec_types), "--spec-draft-n-max", str(p.draft_n_max)]
    for f in p.lora:
        argv += ["--lora", f]
    if not p.warmup:
        argv.append("--no-warmup")
    return argv + ["--cache-ram", str(p.cache_ram_mib), "--ctx-checkpoints", str(p.ctx_checkpoints)]
