"""Re-estimate real GPU logs (tests/data/gpu_logs/*.log) with autoctx and compare buffer by buffer.

A corpus file is a public llama.cpp log as it was posted, under a header of `#` lines:

    # source: <public URL> (<which post>, <date>)
    # build: <build number or what is known of it>
    # gpu: <the GPU(s)>
    # backend: CUDA | ROCm | Vulkan | Metal
    # ...free-text notes (what was cut, where the hyperparameters come from)...
    #   print_info: n_layer = 40          <- quoted hparam lines of the same model from another public log
    # autoctx: {JSON: what the log does not say itself, each value explained in the notes}
    <the log lines as printed>

The model is rebuilt without its GGUF: `spec_from_log` turns the `print_info:`/`llm_load_print_meta:` lines (of the
log, or quoted in the header from another public log of the same model) into the GGUF metadata keys llama.cpp read
them from and runs `autoctx.model.spec_from_gguf` on that synthetic header, so the same per-architecture rules apply
(SWA pattern, recurrent layers, NextN). A log of a model autoctx.catalog knows may name it (`"shape"`) instead; the
printed hparams are then checked against the shape. Tensors are left out (weights are not compared).

This lives in tests/, not in autoctx/: it needs the corpus headers (placement, sources) that a bare log does not
carry, and it is only used to check the memory model against public logs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoctx import memory
from autoctx.gguf import GGUFFile
from autoctx.model import ModelSpec, spec_from_gguf
from autoctx.runtimes.llamacpp.logparse import ServerLog, buffer_device, parse_server_log

MiB = 1024 * 1024
GPU_LOGS = Path(__file__).resolve().parent / "data" / "gpu_logs"
# llama.cpp PR #23861 (merged 2026-05-30): llama-server reserves logits for one row per slot in the compute graph.
# Compute buffers are judged only on builds at or after it.
OUTPUT_RULE_BUILD = 9450
COMPUTE_TOLERANCE = 0.10
# The mixed token/embedding batch path (src/llama-graph.cpp build_inp_embd: inp_mixed_tokens, inp_mixed_slots,
# inp_mixed_embd, and a second token-embedding get_rows) is in the pinned build and in no public log yet: b11146 (the
# newest log, vulkan_3090_qwen38_27b_mtp_b11146) lacks it, the pinned b11434 has it. Before it the host compute
# buffer holds those inputs and one get_rows output less: its host check takes them off (mixed_batch_host_bytes).
MIXED_BATCH_BUILD = 11434

# print_info (and older llm_load_print_meta) names -> GGUF metadata key suffixes (src/llama-model.cpp print_info)
_PRINT_INFO_KEYS = {
    "n_ctx_train": "context_length",
    "n_embd": "embedding_length",
    "n_layer": "block_count",
    "n_layer_all": "block_count",
    "n_head": "attention.head_count",
    "n_head_kv": "attention.head_count_kv",
    "n_embd_head_k": "attention.key_length",
    "n_embd_head_v": "attention.value_length",
    "n_embd_head_k_swa": "attention.key_length_swa",
    "n_embd_head_v_swa": "attention.value_length_swa",
    "n_swa": "attention.sliding_window",
    "n_ff": "feed_forward_length",
    "n_expert": "expert_count",
    "n_expert_used": "expert_used_count",
    "n_ff_exp": "expert_feed_forward_length",
    "ssm_d_conv": "ssm.conv_kernel",
    "ssm_d_inner": "ssm.inner_size",
    "ssm_d_state": "ssm.state_size",
    "ssm_dt_rank": "ssm.time_step_rank",
    "ssm_n_group": "ssm.group_count",
    "n_vocab": "vocab_size",
}
_PRINT_INFO = re.compile(r"(?:print_info|llm_load_print_meta):\s+(?P<key>\w+)\s*=\s*(?P<val>\S.*?)\s*$")
_CTX_LINE = re.compile(r"(?:llama_context|llama_new_context_with_model|llama_init_from_model):\s+(?P<key>n_seq_max|"
                       r"n_ctx|n_ctx_seq|n_ctx_per_seq|n_batch|n_ubatch|flash_attn|kv_unified)\s+=\s+(?P<val>\S+)")
_KV_SIZE = re.compile(r"llama_kv_cache\w*: (?:size|KV self size)\s*=\s*(?P<mib>[0-9.]+) MiB(?: \(\s*(?P<cells>\d+) "
                      r"cells,\s*(?P<layers>\d+) layers)?")
_ISWA = re.compile(r"creating\s+(?P<which>non-SWA|SWA) KV cache, size = (?P<cells>\d+) cells")


@dataclass
class GpuLog:
    name: str
    path: Path
    header: dict[str, str]  # "source", "build", "gpu", "backend" ...
    notes: list[str]
    meta: dict[str, Any]
    body: str
    hparams: dict[str, str]  # print_info name -> printed value (the log's own lines win over quoted ones)
    log: ServerLog = field(repr=False)

    @property
    def build(self) -> int | None:
        return self.meta.get("build")

    @property
    def after_output_rule(self) -> bool:
        return self.build is not None and self.build >= OUTPUT_RULE_BUILD

    @property
    def backend(self) -> str:
        return self.header.get("backend", "?")

    @property
    def before_mixed_batch(self) -> bool:
        return self.build is not None and self.build < MIXED_BATCH_BUILD


def _printed_hparams(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        m = _PRINT_INFO.search(line)
        if m:
            out.setdefault(m["key"], m["val"])
    return out


def load_gpu_log(path: Path) -> GpuLog:
    header: dict[str, str] = {}
    notes: list[str] = []
    quoted: list[str] = []
    meta_json: list[str] = []
    body: list[str] = []
    in_header = True
    for line in path.read_text(encoding="utf-8").splitlines():
        if in_header and line.startswith("#"):
            text = line[1:].strip()
            key, _, value = text.partition(":")
            if key in ("source", "build", "gpu", "backend", "model", "command", "cut") and value:
                header.setdefault(key, value.strip())
            elif key == "autoctx":  # one JSON object, possibly over several "# autoctx:" lines
                meta_json.append(value)
            elif _PRINT_INFO.search(line):
                quoted.append(line)
            else:
                notes.append(text)
            continue
        in_header = False
        body.append(line)
    meta = json.loads(" ".join(meta_json)) if meta_json else {}
    hparams = _printed_hparams(body)
    for k, v in _printed_hparams(quoted).items():
        hparams.setdefault(k, v)
    text = "\n".join(body)
    return GpuLog(path.stem, path, header, notes, meta, text, hparams, parse_server_log(text))


def load_gpu_logs(folder: Path = GPU_LOGS) -> list[GpuLog]:
    return [load_gpu_log(p) for p in sorted(folder.glob("*.log"))]


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


def _number(value: str) -> Any:
    value = value.strip()
    if value.startswith("["):
        return [int(x) for x in value.strip("[]").split(",") if x.strip()]
    try:
        return int(value)
    except ValueError:
        return float(value)


def spec_from_log(g: GpuLog) -> ModelSpec:
    """The ModelSpec llama.cpp had: from a named shape, or from the printed hparams (+ `gguf` keys of the header)."""
    meta = g.meta
    if "shape" in meta:
        from autoctx.catalog import get_shape, header_view

        f = header_view(get_shape(meta["shape"]))
        f.metadata.update(meta.get("gguf", {}))
        return spec_from_gguf(f)
    arch = meta.get("arch") or g.hparams.get("arch")
    md: dict[str, Any] = {"general.architecture": arch}
    for name, value in g.hparams.items():
        suffix = _PRINT_INFO_KEYS.get(name)
        if suffix is None:
            continue
        if name == "n_layer" and "n_layer_all" in g.hparams:
            continue
        try:
            md[f"{arch}.{suffix}"] = _number(value)
        except ValueError:
            continue
    if f"{arch}.attention.sliding_window" in md and not md[f"{arch}.attention.sliding_window"]:
        del md[f"{arch}.attention.sliding_window"]
    for key, value in meta.get("gguf", {}).items():
        md[key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"] = value
    f = GGUFFile([f"log:{g.name}"], 3, "<", md, [], 32, [0], [0])
    return spec_from_gguf(f)


def shape_disagreements(g: GpuLog, spec: ModelSpec) -> list[str]:
    """Printed hparams of the log that contradict the shape it names (empty when they agree or none are printed)."""
    checks = {
        "n_layer": spec.n_layer, "n_embd": spec.n_embd, "n_head": spec.n_head[0], "n_head_kv": spec.n_head_kv[0],
        "n_embd_head_k": spec.head_k, "n_embd_head_v": spec.head_v, "n_vocab": spec.n_vocab,
        "n_ctx_train": spec.n_ctx_train, "n_ff": spec.n_ff[0],
    }
    out = []
    for key, want in checks.items():
        if key in g.hparams:
            try:
                got = _number(g.hparams[key])
            except ValueError:
                continue
            if got != want:
                out.append(f"{key}: log {got}, shape {want}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# The settings
# ----------------------------------------------------------------------------------------------------------------


def context_lines(g: GpuLog) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in g.body.splitlines():
        m = _CTX_LINE.search(line)
        if m:
            out.setdefault(m["key"], m["val"])
    return out


def params_from_log(g: GpuLog) -> memory.Params:
    """Params from the header's `args` (the command line), overridden by what llama_context printed."""
    args = dict(g.meta.get("args", {}))
    ctx = context_lines(g)
    if "n_ctx" in ctx:
        args["n_ctx"] = int(ctx["n_ctx"])
    if "n_seq_max" in ctx:
        args["n_parallel"] = int(ctx["n_seq_max"])
    if "kv_unified" in ctx:
        args["kv_unified"] = ctx["kv_unified"] in ("true", "1")
    for key in ("n_batch", "n_ubatch"):
        if key in ctx:
            args[key] = int(ctx[key])
    if "flash_attn" in ctx:
        args["flash_attn"] = {"enabled": "on", "1": "on", "disabled": "off", "0": "off"}.get(ctx["flash_attn"],
                                                                                              ctx["flash_attn"])
    if args.get("n_parallel", -1) > 0 and "kv_unified" not in args:
        args["kv_unified"] = False
    if "tensor_split" in args:
        args["tensor_split"] = tuple(args["tensor_split"])
    args["devices"] = tuple(memory.Device(d) for d in g.meta["devices"])
    args.setdefault("fit", False)
    return memory.Params(**args)


# ----------------------------------------------------------------------------------------------------------------
# Predicted vs printed
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    log: str
    what: str  # kv | rs | output | compute
    device: str  # CUDA0..., "host" for the pinned host compute buffer, "total" for a summary-only KV
    predicted_mib: float
    printed_mib: float
    n_printed: int  # printed lines summed (each rounded to 0.01 MiB)
    judged: str  # "exact" | "10%" | "recorded" (an older build, or a rule the log predates)
    xfail: str = ""  # reason, when the check is expected to fail today (strict)

    @property
    def diff_mib(self) -> float:
        return round(self.predicted_mib - self.printed_mib, 2)

    @property
    def pct(self) -> float | None:
        return None if not self.printed_mib else 100.0 * (self.predicted_mib - self.printed_mib) / self.printed_mib

    @property
    def ok(self) -> bool:
        if self.judged == "10%":
            return abs(self.predicted_mib - self.printed_mib) <= COMPUTE_TOLERANCE * self.printed_mib
        return abs(self.predicted_mib - self.printed_mib) <= 0.005 * (self.n_printed + 1) + 1e-9

    @property
    def id(self) -> str:
        return f"{self.log}:{self.what}:{self.device}"

    def as_dict(self) -> dict[str, Any]:
        return {"log": self.log, "what": self.what, "device": self.device, "predicted_mib": self.predicted_mib,
                "printed_mib": self.printed_mib, "diff_mib": self.diff_mib,
                "pct": None if self.pct is None else round(self.pct, 1), "judged": self.judged, "ok": self.ok,
                "xfail": self.xfail}


def _mib(n: int) -> float:
    return round(n / MiB, 2)


def _is_rs(b: memory.Buffer) -> bool:
    return b.detail.startswith("recurrent")


def kv_from_printed_cells(g: GpuLog, spec: ModelSpec, est: memory.Estimate) -> list[memory.Buffer]:
    """KV buffers for the cell counts the log printed (an older build sized its caches by another rule): the
    non-SWA/only cache from `kv_cells`, the SWA cache by passing `swa_ubatch` where the current rule takes n_ubatch
    (older builds took n_batch there)."""
    rule = g.meta["kv_cells_from_log"]
    n_ubatch = rule.get("swa_ubatch", est.n_ubatch)
    bufs, _ = memory.kv_buffers(spec, est.params, rule["cells"], n_ubatch, est.flash_attn, est.layer_device)
    return [b for b in bufs if not _is_rs(b)]


def printed_kv_cells(g: GpuLog) -> dict[str, int]:
    """Cells of each KV cache the log printed: {"non-SWA": n, "SWA": n} for an iSWA model, else {"": n}."""
    cells = {m["which"]: int(m["cells"]) for m in _ISWA.finditer(g.body)}
    if cells:
        return cells
    sizes = [int(m["cells"]) for m in _KV_SIZE.finditer(g.body) if m["cells"]]
    return {"": sizes[0]} if sizes else {}


_BUFFER = re.compile(r"(?P<fn>\w+):\s+(?P<name>\S+)\s+(?P<what>model|output|KV|compute|RS) buffer size =\s*"
                     r"(?P<mib>[0-9.]+) MiB")


@dataclass(frozen=True)
class Printed:
    what: str  # kv | rs | output | compute | model
    name: str  # the buffer name as printed (CUDA0, CUDA_Host, Vulkan0, Metal, CPU...)
    cache: str  # "non-SWA" / "SWA" for the caches of an iSWA model, else ""
    mib: float

    @property
    def device(self) -> str:
        return buffer_device(self.name)


def printed_buffers(g: GpuLog) -> list[Printed]:
    """Every buffer line, in order, whatever the function prefix of its build (llama_new_context_with_model,
    llama_init_from_model, llama_context, sched_reserve...), each KV line tagged with the iSWA cache it belongs to.
    `device_names` in the header renames a device as an older build printed it (Metal) to today's name (MTL0)."""
    rename: dict[str, str] = g.meta.get("device_names", {})
    out: list[Printed] = []
    cache = ""
    for line in g.body.splitlines():
        m = _ISWA.search(line)
        if m:
            cache = m["which"]
            continue
        m = _BUFFER.search(line)
        if m:
            what = {"KV": "kv", "RS": "rs"}.get(m["what"], m["what"])
            out.append(Printed(what, rename.get(m["name"], m["name"]), cache if what == "kv" else "",
                               float(m["mib"])))
    return out


def mixed_batch_host_bytes(spec: ModelSpec, est: memory.Estimate) -> int:
    """What the pinned build's host compute buffer holds for the mixed token/embedding batch path, which builds before
    MIXED_BATCH_BUILD lack: its three graph inputs (memory.graph_inputs: inp_mixed_tokens, inp_mixed_slots,
    inp_mixed_embd) and, when every block runs on a device, the second get_rows output a device copies
    (memory.device_compute_buffers: n_get_rows). Each padded to the host buffer's alignment."""
    p = est.params
    if not p.devices or spec.architecture in memory._NO_MIXED:
        return 0
    names = ("inp_mixed_tokens", "inp_mixed_slots", "inp_mixed_embd")
    inputs = memory.graph_inputs(spec, p, est.kv_cells, est.swa_cells, est.n_ubatch, est.n_outputs_max,
                                 est.flash_attn)
    dev = p.devices[0]
    align = dev.backend.host_alignment if dev.has_host_buffer else memory.CPU_ALIGNMENT
    out = sum(memory.pad(i.bytes, align) for i in inputs if i.name in names)
    if memory.CPU not in est.layer_device:
        out += memory.pad(4 * spec.n_embd * est.n_ubatch, align)
    return out


def checks_for(g: GpuLog) -> list[Check]:
    spec = spec_from_log(g)
    est = memory.estimate(spec, params_from_log(g))
    xfail: dict[str, str] = g.meta.get("xfail", {})
    out: list[Check] = []

    def add(what: str, device: str, pred: int, printed: list[Printed], judged: str) -> None:
        reason = xfail.get(f"{what}:{device}", xfail.get(what, ""))
        out.append(Check(g.name, what, device, _mib(pred), round(sum(p.mib for p in printed), 2), len(printed),
                         judged, reason))

    # the excerpts print the model's own context: an MTP context's buffers (memory.add_extra_buffers) are left out
    est.buffers = [b for b in est.buffers if not b.detail.startswith("MTP")]
    kv_pred = [b for b in est.buffers if b.kind == "kv" and not _is_rs(b)]
    if "kv_cells_from_log" in g.meta:
        kv_pred = kv_from_printed_cells(g, spec, est)
    printed = printed_buffers(g)
    kv_lines = [p for p in printed if p.what == "kv"]
    for cache, dev in dict.fromkeys((p.cache, p.device) for p in kv_lines):
        mine = [p for p in kv_lines if p.cache == cache and p.device == dev]
        pred = sum(b.bytes for b in kv_pred if b.device == dev and (not cache or b.detail.startswith(cache + " ")))
        add("kv", f"{dev} {cache}".strip(), pred, mine, "exact")
    if not kv_lines:  # only the summary line(s) came with the excerpt: the whole cache
        sizes = [float(m["mib"]) for m in _KV_SIZE.finditer(g.body)]
        if sizes:
            add("kv", "total", sum(b.bytes for b in kv_pred), [Printed("kv", "total", "", s) for s in sizes],
                "exact")
    rs_lines = [p for p in printed if p.what == "rs"]
    for dev in dict.fromkeys(p.device for p in rs_lines):
        add("rs", dev, sum(b.bytes for b in est.buffers if _is_rs(b) and b.device == dev),
            [p for p in rs_lines if p.device == dev], "exact")
    outs = [p for p in printed if p.what == "output"]
    if outs:
        add("output", "host", est.kind_bytes("output"), outs, "exact")
    judged = "10%" if g.after_output_rule else "recorded"
    for p in (p for p in printed if p.what == "compute"):
        host = p.device == "CPU"
        pred = sum(b.bytes for b in est.buffers if b.kind == "compute"
                   and (b.device == "CPU" if host else b.device == p.device))
        if host and g.before_mixed_batch:
            pred -= mixed_batch_host_bytes(spec, est)
        add("compute", "host" if host else p.device, pred, [p], judged)
    return out


def predicted_cells(g: GpuLog) -> dict[str, int]:
    """The cache sizes autoctx predicts for this log, keyed like printed_kv_cells."""
    est = memory.estimate(spec_from_log(g), params_from_log(g))
    if est.swa_cells:
        return {"non-SWA": est.kv_cells, "SWA": est.swa_cells}
    return {"": est.kv_cells}


def all_checks(folder: Path = GPU_LOGS) -> list[Check]:
    return [c for g in load_gpu_logs(folder) for c in checks_for(g)]


def main() -> None:
    """Print every check as JSON (the summary the README table is made from)."""
    print(json.dumps([c.as_dict() for c in all_checks()], indent=1))


if __name__ == "__main__":
    main()
