#!/usr/bin/env python3
"""The README's architecture-coverage table (every architecture name of the pinned llama.cpp and what autoctx does
with it: modelled, refused as not modelled yet, or out of scope, from autoctx's rules) and its shipped-tag table
(the Ollama tags autoctx plans before a pull, weights vs the size the library lists).

    scripts/gen_arch_table.py            print the table (Markdown)
    scripts/gen_arch_table.py --write    replace the README sections between the arch-table and shipped-tags markers
    scripts/gen_arch_table.py --check    exit 1 when a README section or autoctx.model.LLAMA_ARCHS is stale

The names come from src/llama-arch.cpp of the cached sdist (scripts/llama-server-path extracts it) when it is there,
else from the committed list autoctx.model.LLAMA_ARCHS; --check compares the two.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _cache import PINS, cache_root  # noqa: E402

BEGIN, END = "<!-- arch-table:begin -->", "<!-- arch-table:end -->"
TAGS_BEGIN, TAGS_END = "<!-- shipped-tags:begin -->", "<!-- shipped-tags:end -->"
README = ROOT / "README.md"


def arch_source() -> Path:
    """src/llama-arch.cpp of the pinned llama.cpp in the cache (it may be absent)."""
    return cache_root() / f"llama.cpp-{PINS['llama_cpp']['version']}-cpu" / "src" / "llama.cpp" / "src" / \
        "llama-arch.cpp"


def pinned_arch_names(path: Path | None = None) -> list[str] | None:
    """LLM_ARCH_NAMES of llama-arch.cpp in order, "(unknown)" left out; None when the source is not cached."""
    path = path or arch_source()
    if not path.is_file():
        return None
    text = path.read_text()
    names = re.findall(r'\{\s*LLM_ARCH_(\w+),\s*"([^"]+)"\s*\}', text)
    return [name for enum, name in names if enum != "UNKNOWN"]


def _memory(arch: str) -> str:
    """What autoctx models for a modelled architecture (its ARCH_RULES entry, in words)."""
    from autoctx.model import ARCH_RULES

    r = ARCH_RULES[arch]
    parts = []
    if r.recurrent == "all":
        parts.append("recurrent state (RS) only")
    elif r.recurrent in ("head_kv0", "interval"):
        what = "short-conv" if r.shortconv else "recurrent"
        rule = "layers with 0 KV heads" if r.recurrent == "head_kv0" else "recurrent_layers / full_attention_interval"
        parts.append(f"hybrid: KV + {what} RS ({rule})")
    else:
        parts.append("KV")
    swa = {"standard": "SWA" + (f" period {r.period}" if r.period else " (pattern from the GGUF)")
                       + (", dense first" if r.dense_first else ""),
           "if_window": f"SWA when the GGUF has a window (period {r.period})",
           "attn_if_window": "SWA on every attention layer when the GGUF has a window",
           "chunked": f"chunked attention (period {r.period})",
           "disabled": "its sliding window ignored"}.get(r.swa)
    if swa:
        parts.append(swa)
    if r.kv_from_start >= 0 or arch == "gemma4":
        parts.append("shared-KV layers")
    return "; ".join(parts)


def _checked() -> dict[str, list[str]]:
    """architecture -> the shapes (and the real Gemma-3-270M) checked against the real llama-server."""
    from autoctx.bench import SHAPE_CASES
    from autoctx.catalog import get_shape
    from tests.test_accuracy_server import NEW_ARCH_CASES

    out: dict[str, list[str]] = {"gemma3": ["gemma-3-270m (real GGUF)"]}
    for name, _ in [*SHAPE_CASES, *NEW_ARCH_CASES]:
        arch = get_shape(name).arch
        if name not in out.setdefault(arch, []):
            out[arch].append(name)
    return out


def table(names: list[str]) -> str:
    from autoctx.model import arch_status

    checked = _checked()
    counts: dict[str, int] = {}
    rows = ["| architecture | status | what autoctx models / why not | checked on the real llama-server |",
            "| --- | --- | --- | --- |"]
    for arch in names:
        status, why = arch_status(arch)
        counts[status] = counts.get(status, 0) + 1
        detail = _memory(arch) if status == "modelled" else why
        rows.append(f"| `{arch}` | {status} | {detail} | {', '.join(checked.get(arch, [])) or '-'} |")
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("modelled", "not modelled", "out of scope"))
    return (f"{len(names)} architectures in the pinned llama.cpp (src/llama-arch.cpp): {summary}. A not-modelled "
            "one is refused with one line (`architecture X is not modelled yet`), an out-of-scope one with its "
            "reason.\n\n" + "\n".join(rows) + "\n")


def tags_table() -> str:
    """The shipped profiles: tag, shape, quantization, predicted weights vs the size Ollama's library lists (or the
    published file the catalog entry cites)."""
    from autoctx.catalog import get_shape
    from autoctx.resolve import shipped_profiles

    rows = ["| tag | architecture | shape | quantization | weights (autoctx) | published | projector |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for tag, p in sorted(shipped_profiles().items()):
        shape = get_shape(p["shape"])
        size = p.get("published_size")
        published = f"[{size}]({p['size_source']})" if size else "-"
        if not size and shape.published:
            published = f"[{shape.published['bytes'] / 1e9:.2f} GB file]({shape.published['url']})"
        rows.append(f"| `{tag}` | {shape.arch} | `{p['shape']}` | {p.get('quantization', 'Q4_K_M')} | "
                    f"{shape.weight_bytes / 1e9:.2f} GB | {published} | {p.get('projector', '-')} |")
    return "\n".join(rows) + "\n"


def _replace(readme: str, begin: str, end: str, text: str) -> str:
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}{end}{tail}"


def main(argv: list[str]) -> int:
    from autoctx.model import LLAMA_ARCHS

    pinned = pinned_arch_names()
    names = pinned if pinned is not None else list(LLAMA_ARCHS)
    text = table(names)
    if "--write" in argv or "--check" in argv:
        readme = README.read_text()
        for b, e in ((BEGIN, END), (TAGS_BEGIN, TAGS_END)):
            if b not in readme or e not in readme:
                print(f"README.md has no {b} ... {e} section", file=sys.stderr)
                return 1
        new = _replace(_replace(readme, BEGIN, END, text), TAGS_BEGIN, TAGS_END, tags_table())
        if "--check" in argv:
            stale = []
            if pinned is not None and pinned != list(LLAMA_ARCHS):
                stale.append("autoctx.model.LLAMA_ARCHS differs from the pinned llama-arch.cpp")
            if new != readme:
                stale.append("the README's architecture table is stale (scripts/gen_arch_table.py --write)")
            for line in stale:
                print(line, file=sys.stderr)
            return 1 if stale else 0
        README.write_text(new)
        return 0
    sys.stdout.write(text + "\n" + tags_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
