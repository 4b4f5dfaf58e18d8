"""Human-readable output for plans: where the memory goes, why, and a chart of memory against context."""

from __future__ import annotations

from .planner import Plan, memory_curve, shared_bytes

GiB = 1024**3


def _g(n: float) -> str:
    return f"{n / GiB:,.2f}"


def plan_table(p: Plan) -> str:
    est = p.estimate
    head = f"{'device':<8}{'weights':>10}{'KV':>10}{'compute':>10}{'output':>10}{'later':>10}{'total':>10}" \
           f"{'margin':>10}{'free':>10}{'left':>10}   (GiB)"
    lines = [head]
    for b in p.budgets:
        w, kv, c, o = (sum(x.resident_bytes for x in est.buffers if x.kind == k and x.device == b.device)
                       for k in ("model", "kv", "compute", "output"))
        later = est.later_bytes(b.device)  # prompt cache and checkpoints, filled after /health
        total = w + kv + c + o + later
        shared = shared_bytes(p.budgets, est, b.device)  # loopback RPC workers' buffers in this machine's RAM
        lines.append(f"{b.device:<8}{_g(w):>10}{_g(kv):>10}{_g(c):>10}{_g(o):>10}{_g(later):>10}{_g(total):>10}"
                     f"{_g(b.margin_bytes):>10}{_g(b.free_bytes):>10}{_g(b.usable - total - shared):>10}")
    sharing = [b.device for b in p.budgets if b.shares]
    if sharing:
        lines.append(f"  CPU left: after {', '.join(sharing)} too (RPC workers on this machine: its RAM)")
    if any(est.later):
        lines.append("  later: llama-server's prompt cache and context checkpoints, filled after /health "
                     "(--cache-ram, --ctx-checkpoints)")
    return "\n".join(lines)


def settings(p: Plan) -> str:
    kv = p.cache_type_k if p.cache_type_k == p.cache_type_v else f"{p.cache_type_k} (K) / {p.cache_type_v} (V)"
    experts = f" (experts of the first {p.n_cpu_moe} on the CPU)" if p.n_cpu_moe else ""
    out = [f"num_ctx {p.num_ctx}   KV {kv}   flash-attn {p.flash_attn}   GPU layers {p.n_gpu_layers}{experts}"
           f"   slots {p.n_parallel}   ubatch {p.ubatch}"]
    out += [f"  - {r}" for r in p.reasons]
    return "\n".join(out)


def _curves(p: Plan) -> dict[str, list[tuple[int, int]]]:
    curves = {}
    for label in p.max_ctx_by_kv:
        k, _, v = label.partition("/")
        curves[label] = memory_curve(p.spec, p, (k, v or k))
    return curves


def _top(budget: int, curves: dict[str, list[tuple[int, int]]]) -> float:
    """The chart's height in bytes: 5 % above the budget and every curve, and never 0 (a GPU given no more than
    its margin, with no layer on it: every value is 0 or below)."""
    return max([budget, 1024**2] + [y for c in curves.values() for _, y in c]) * 1.05


def text_chart(p: Plan, width: int = 56, height: int = 10) -> str:
    """Memory on the tightest device against context, one letter per KV type; '=' the budget, '*' the plan."""
    curves = _curves(p)
    tight = p.tight_device()
    budget = tight.usable
    top = _top(budget, curves)
    xmax = p.spec.n_ctx_train
    grid = [[" "] * width for _ in range(height)]

    def cell(x: float, y: float) -> tuple[int, int]:
        col = min(width - 1, int(x / xmax * (width - 1)))
        row = min(height - 1, max(0, height - 1 - int(y / top * (height - 1))))
        return row, col

    row_budget, _ = cell(0, budget)
    for c in range(width):
        grid[row_budget][c] = "="
    marks = {}
    for i, (label, pts) in enumerate(curves.items()):
        mark = "abcdefgh"[i]
        marks[mark] = label
        for x, y in pts:
            r, c = cell(x, y)
            grid[r][c] = mark
    r, c = cell(p.num_ctx, p.estimate.resident_bytes(tight.device))
    grid[r][c] = "*"
    lines = [f"{_g(top):>7} |" + "".join(grid[0])]
    lines += ["        |" + "".join(row) for row in grid[1:]]
    lines.append("        +" + "-" * width)
    lines.append(f"         0{'context':^{width - 12}}{xmax:>10}")
    legend = "  ".join(f"{m}={label} (fits {p.max_ctx_by_kv[label]})" for m, label in marks.items())
    lines.append(f"  {tight.device}: {legend}  '=' budget {_g(budget)} GiB  '*' plan")
    return "\n".join(lines)


def svg_chart(p: Plan) -> str:
    """The same chart as an SVG picture (no plotting library needed)."""
    curves = _curves(p)
    tight = p.tight_device()
    budget = tight.usable
    top = _top(budget, curves)
    W, H, L, B = 640, 400, 70, 50
    xmax = p.spec.n_ctx_train

    def xy(x: float, y: float) -> tuple[float, float]:
        return L + x / xmax * (W - L - 20), H - B - y / top * (H - B - 20)

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
             f'<line x1="{L}" y1="20" x2="{L}" y2="{H - B}" stroke="black"/>',
             f'<text x="{(W + L) / 2}" y="{H - 15}" text-anchor="middle">context (tokens, max {xmax})</text>',
             f'<text x="15" y="{(H - B) / 2}" transform="rotate(-90 15 {(H - B) / 2})" text-anchor="middle">'
             f'GiB on {tight.device}</text>']
    bx0, by = xy(0, budget)
    bx1, _ = xy(xmax, budget)
    parts.append(f'<line x1="{bx0}" y1="{by}" x2="{bx1}" y2="{by}" stroke="gray" stroke-dasharray="6,4"/>')
    parts.append(f'<text x="{bx1}" y="{by - 5}" text-anchor="end" fill="gray">budget {_g(budget)} GiB</text>')
    for i, (label, pts) in enumerate(curves.items()):
        col = colors[i % len(colors)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(a, b) for a, b in pts))
        parts.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{L + 10}" y="{35 + 16 * i}" fill="{col}">{label}: fits '
                     f'{p.max_ctx_by_kv[label]}</text>')
    px, py = xy(p.num_ctx, p.estimate.resident_bytes(tight.device))
    parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="black"/>')
    parts.append(f'<text x="{px + 8:.1f}" y="{py - 8:.1f}">plan: {p.num_ctx}</text>')
    for i in range(5):
        v = top * i / 4
        _, y = xy(0, v)
        parts.append(f'<text x="{L - 5}" y="{y + 4:.1f}" text-anchor="end">{_g(v)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def png_chart(p: Plan, path: str) -> None:
    """The chart as a PNG, with matplotlib (optional dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(p)
    tight = p.tight_device()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, pts in curves.items():
        ax.plot([x for x, _ in pts], [y / GiB for _, y in pts], label=f"{label} (fits {p.max_ctx_by_kv[label]})")
    ax.axhline(tight.usable / GiB, color="gray", linestyle="--", label="budget (free − margin)")
    ax.plot([p.num_ctx], [p.estimate.resident_bytes(tight.device) / GiB], "ko", label=f"plan: {p.num_ctx}")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(f"GiB on {tight.device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the commands' tables and JSON -----------------------------------------------------------------------------------

def _mib(n: int) -> str:
    return f"{n / 1048576:,.2f}"


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def command_line(argv: list[str]) -> str:
    """An argv as one shell-quoted line."""
    return " ".join(_quote(a) for a in argv)


def estimate_json(est) -> dict:
    p = est.params
    args = p.as_dict()
    args.update({"n_ctx": est.n_ctx, "n_ctx_seq": est.n_ctx_seq, "n_batch": est.n_batch, "n_ubatch": est.n_ubatch,
                 "n_outputs_max": est.n_outputs_max, "flash_attn_resolved": est.flash_attn,
                 "kv_cells": est.kv_cells, "swa_cells": est.swa_cells, "n_gpu_layers_resolved": est.n_gpu_layers,
                 "requested_n_ctx": p.n_ctx})
    return {
        "model": est.spec.summary(),
        "args": args,
        "buffers": [b.as_dict() for b in est.buffers],
        "total_bytes": est.total_bytes,
        "after_health": [b.as_dict() for b in est.later],
        "notes": est.notes,
    }


def estimate_table(est) -> str:
    """estimate's table: the model line, MiB per device and kind, then the buffers beside the model."""
    spec = est.spec
    lines = [f"{spec.path}",
             f"  {spec.architecture}, {spec.n_layer} layers, n_ctx_train {spec.n_ctx_train}, "
             f"ctx {est.n_ctx} ({est.n_ctx_seq}/seq x {est.params.n_parallel} slots"
             f"{', unified' if est.params.kv_unified else ''}), "
             f"KV {est.params.cache_type_k}/{est.params.cache_type_v}, "
             f"flash-attn {'on' if est.flash_attn else 'off'}" + (f", SWA cache {est.swa_cells} cells" if est.swa_cells
                                                                    else "")]
    kinds = ["model", "kv", "compute", "output"]
    devices = list(dict.fromkeys(b.device for b in est.buffers))
    lines.append(f"{'device':<10}" + "".join(f"{k:>12}" for k in kinds) + f"{'total':>12}" + "   (MiB)")
    for d in devices:
        row = [est.kind_bytes(k, d) for k in kinds]
        lines.append(f"{d:<10}" + "".join(f"{_mib(v):>12}" for v in row) + f"{_mib(sum(row)):>12}")
    lines.append(f"{'total':<10}" + "".join(f"{_mib(est.kind_bytes(k)):>12}" for k in kinds)
                 + f"{_mib(est.total_bytes):>12}")
    return "\n".join(lines + extra_buffer_lines(est))


def extra_buffer_lines(est) -> list[str]:
    """The buffers beside the model (projector, draft, MTP, LoRA; included in the table above) and the host memory
    llama-server fills after /health (prompt cache, context checkpoints; not in the table), one line each."""
    lines = []
    beside = [b for b in est.buffers if b.detail.startswith(("projector", "draft", "LoRA", "MTP"))]
    if beside:
        lines.append("beside the model (in the table above):")
        lines += [f"  {b.device:<8}{b.kind:<9}{_mib(b.bytes):>12}  {b.name}: {b.detail}" for b in beside]
    if est.later:
        lines.append("after /health, in host memory (not in the table):")
        lines += [f"  {b.device:<8}{b.kind:<13}{_mib(b.bytes):>12}  up to: {b.detail}" for b in est.later]
    return lines


def plan_json(spec, p: Plan, args: list[str], modelfile: str) -> dict:
    return {"model": {"name": spec.name, "path": spec.path, "source": spec.source},
            "plan": p.as_dict(), "buffers": [b.as_dict() for b in p.estimate.buffers],
            "budget": [b.as_dict() for b in p.budgets], "llama_server_args": args, "modelfile": modelfile,
            "reasons": p.reasons, "max_ctx_by_kv": p.max_ctx_by_kv}


def plan_text(spec, p: Plan, rendered: str) -> str:
    """plan's text: the model, the settings and reasons, the table, the chart, and what the runtime is given
    (`rendered`: the llama-server line or the Modelfile)."""
    out = [f"{spec.name if spec.source != 'gguf' else spec.path}: {spec.architecture}, {spec.n_layer} layers, "
           f"n_ctx_train {spec.n_ctx_train}"]
    if spec.source.startswith("shipped profile"):
        out.append(f"  not pulled: architecture and weights from the {spec.source}")
    out += [settings(p), "", plan_table(p), "", text_chart(p), "", rendered]
    return "\n".join(out)


def probe_table(devices) -> str:
    from .units import gib

    lines = [f"{'device':<8}{'total':>14}{'free':>14}{'used':>14}  description"]
    for d in devices:
        desc = f"RPC worker {d.description}" if d.kind == "rpc" else d.description
        lines.append(f"{d.name:<8}{gib(d.total_bytes):>14}{gib(d.free_bytes):>14}{gib(d.used_bytes):>14}  {desc}"
                     + (f" (driver {d.driver}{', ' + d.runtime if d.runtime else ''})" if d.driver else ""))
        for pr in d.processes:
            used = gib(pr.used_bytes) if pr.used_bytes is not None else "?"
            lines.append(f"{'':<8}  pid {pr.pid} {pr.name}: {used}")
    return "\n".join(lines)


def profile_line(p) -> str:
    plan = p.plan
    return (f"{p.key.id}  {p.model_name or p.model_path}  num_ctx {plan.get('num_ctx')} "
            f"KV {plan.get('cache_type_k')}/{plan.get('cache_type_v')}  runs {p.runs}  {p.key.devices}")


def serve_text(result, argv_line: str) -> str:
    """serve's report: the settings, the command line it runs, predicted vs actual per buffer, and what the drivers
    said of each planned device."""
    from .verify import format_rows

    devices = tuple(f"{b.device}:" for b in result.plan.budgets)
    return "\n".join([settings(result.plan), f"llama-server {argv_line}", format_rows(result.rows),
                      *(n for n in result.notes if n.startswith(devices))])
