"""The command line's values checked, and turned into what the library takes: one `PlanOptions` builder for every
command that plans, and the checks each bad value fails with one line (ArgsError). No typer here: cli.py declares the
options, this module reads them."""

from __future__ import annotations

from typing import Optional

from .errors import ArgsError, AutoctxError

CTX_LIMIT = 2**32 - 1  # llama.cpp's n_ctx is a uint32_t
MAX_SLOTS = 256  # llama.cpp's LLAMA_MAX_SEQ (src/llama-cparams.h): more sequences are refused when the context is made
PLAN_BATCH = 2048  # the -b of every plan (PlanOptions.n_batch); llama.cpp lowers a larger -ub to it
RUNTIMES = ("llamacpp", "ollama")


def in_range(flag: str, value: int, lo: int, hi: int, note: str = "") -> None:
    """An integer option out of its range: one line that names the flag, the range and the value."""
    if not lo <= value <= hi:
        raise ArgsError(f"{flag} must be between {lo} and {hi}{note}, got {value}")


def seconds(flag: str, value: float) -> float:
    """A wait in seconds: above 0 and finite (nan and inf included in what is refused)."""
    if not 0 < value < float("inf"):
        raise ArgsError(f"{flag} must be a number of seconds above 0, got {value:g}")
    return value


def context_flags(max_ctx: int, min_ctx: int) -> None:
    """--max-ctx (0: the model's trained context) and --min-ctx, as every planning command takes them."""
    in_range("--max-ctx", max_ctx, 0, CTX_LIMIT, " (0: the model's trained context)")
    in_range("--min-ctx", min_ctx, 1, CTX_LIMIT)
    if max_ctx and min_ctx > max_ctx:
        raise ArgsError(f"--min-ctx {min_ctx} is above --max-ctx {max_ctx}")


def kv_pair(text: str, flag: str = "--kv-type") -> tuple[str, str]:
    """TYPE (K and V) or K/V, e.g. q8_0 or q8_0/q4_0."""
    from .memory import KV_TYPES

    parts = [t.strip() for t in text.strip().lower().split("/")]
    if len(parts) > 2 or "" in parts:
        raise ArgsError(f"{flag}: {text!r} is not a KV cache type nor K/V (e.g. q8_0 or q8_0/q4_0)")
    for t in parts:
        if t not in KV_TYPES:
            raise ArgsError(f"{flag}: unknown KV cache type {t!r} (allowed: {', '.join(KV_TYPES)})")
    return parts[0], parts[-1]


def kv_list(flag: str, text: str, runtime: str = "llamacpp") -> tuple[tuple[str, str], ...]:
    """--kv-types: a comma-separated list of TYPE or K/V, at least one; Ollama's need K = V."""
    kinds = tuple(kv_pair(t, flag) for t in text.split(",") if t.strip())
    if not kinds:
        raise ArgsError(f"{flag} is empty (e.g. {flag} f16,q8_0,q8_0/q4_0,q4_0)")
    if runtime == "ollama":  # one server-wide type for K and V (OLLAMA_KV_CACHE_TYPE)
        kinds = tuple(k for k in kinds if k[0] == k[1])
        if not kinds:
            raise ArgsError(f"{flag} {text!r}: Ollama uses one type for K and V; give at least one such type")
    return kinds


def kv_policy(kinds: tuple[tuple[str, str], ...] | None, runtime: str = "llamacpp") -> dict:
    """PlanOptions' KV order: the user's list as given (no fallback), else the quality-first default."""
    from .planner import DEFAULT_KV_FALLBACK

    if kinds is not None:
        return {"kv_order": kinds, "kv_fallback": ()}
    if runtime == "ollama":  # one server-wide type for K and V
        return {"kv_fallback": tuple(k for k in DEFAULT_KV_FALLBACK if k[0] == k[1])}
    return {}


def tensor_overrides(ot: list[str], cpu_moe: bool, n_cpu_moe: Optional[int],
                     n_cpu_ffn: Optional[int]) -> tuple[tuple[str, str], ...]:
    """plan's override options as memory.Params.tensor_overrides, in the order plan emits them (-ot first), checked
    as llama-server checks them."""
    from .memory import Params
    from .runtimes.llamacpp.args import parse_server_args

    argv = [a for v in ot for a in ("-ot", v)] + (["--cpu-moe"] if cpu_moe else [])
    argv += ["--n-cpu-moe", str(n_cpu_moe)] if n_cpu_moe is not None else []
    argv += ["--n-cpu-ffn", str(n_cpu_ffn)] if n_cpu_ffn is not None else []
    return parse_server_args(argv, base=Params()).params.tensor_overrides


def plan_options(runtime: str = "llamacpp", *, max_ctx: int = 0, min_ctx: int = 4096, kv_types: str | None = None,
                 kv_type: str = "", parallel: int = 1, ubatch: int = 512, no_repack: bool = False,
                 override_tensor: list[str] | tuple[str, ...] = (), cpu_moe: bool = False,
                 n_cpu_moe: Optional[int] = None, n_cpu_ffn: Optional[int] = None):
    """The one PlanOptions builder: the planning flags checked in order (one line each when wrong) and turned into
    options. `kv_types` None: the quality-first order with its loud fallback; a list given has no fallback."""
    from .planner import PlanOptions
    from .probe.cpu import host_repack_rules

    if runtime not in RUNTIMES:
        raise ArgsError(f"--runtime must be llamacpp or ollama, got {runtime!r}")
    context_flags(max_ctx, min_ctx)
    in_range("--parallel", parallel, 1, MAX_SLOTS)
    in_range("--ubatch", ubatch, 1, PLAN_BATCH, f" (the plan's batch size, -b {PLAN_BATCH})")
    kinds = None if kv_types is None else kv_list("--kv-types", kv_types, runtime)
    forced = kv_pair(kv_type, "--kv-type") if kv_type else None
    if forced and runtime == "ollama" and forced[0] != forced[1]:
        raise ArgsError(f"--kv-type {kv_type}: Ollama uses one type for K and V")
    overrides = tensor_overrides(list(override_tensor), cpu_moe, n_cpu_moe, n_cpu_ffn)
    if overrides and runtime == "ollama":
        raise ArgsError("-ot/--cpu-moe/--n-cpu-moe/--n-cpu-ffn are llama-server flags: an Ollama Modelfile has none")
    return PlanOptions(runtime=runtime, max_ctx=max_ctx or None, min_ctx=min_ctx, **kv_policy(kinds, runtime),
                       kv_forced=forced, n_parallel=parallel, n_ubatch=ubatch, repack=not no_repack,
                       cpu_repack=host_repack_rules(), tensor_overrides=overrides)


def ollama_name_not_file(text: str) -> bool:
    """TEXT names no file but reads as an Ollama model name (qwen2.5:32b), not as a path to a GGUF."""
    import os

    from .runtimes.ollama.store import BadModelName, parse_name

    if os.path.lexists(text) or text.endswith(".gguf") or ":" not in text:
        return False
    try:
        parse_name(text)
    except BadModelName:
        return False
    return True


def chart_mode(path: str) -> int:
    """--chart checked before anything is planned or written: a .svg or .png name, not a symbolic link, nothing but
    a regular file there now. Returns the mode the chart gets (the old file's, else 0666 less the umask)."""
    import os
    import stat

    if not path.endswith((".svg", ".png")):
        raise ArgsError(f"--chart must end in .svg or .png, got {path!r}")
    if path.endswith(".png"):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ArgsError("--chart FILE.png needs matplotlib (pip install matplotlib); FILE.svg needs nothing")
    if os.path.islink(path):
        raise ArgsError(f"--chart {path} is a symbolic link; autoctx does not write through links (remove it or give "
                        "the path it points to)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
    except OSError as e:
        raise AutoctxError(f"cannot write --chart {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ArgsError(f"--chart {path} is {what}; autoctx replaces only a regular file")
    return st.st_mode & 0o7777
