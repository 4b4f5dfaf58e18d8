"""llama.cpp as the loop's runtime (runtimes.base.Runtime): every knob is ours, the user's own llama-server arguments
win; the plan becomes an argv, llama-server is launched with it, and its log says what it allocated."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

from ...planner import Budget, Plan, PlanOptions
from ...profiles import ProfileKey, model_digest, runtime_build
from ..base import Allocation, Launched
from .args import ParsedArgs, parse_server_args, to_server_args
from .build import BuildInfo, read_build, rpc_failure
from .server import LlamaServer, ServerError, last_lines

MiB = 1024**2
Launcher = Callable[[str, list[str]], LlamaServer]  # (binary, argv) -> a server not yet started


def plan_args(p: Plan, model_path: str | None = None) -> list[str]:
    """The plan as llama-server arguments: every memory-relevant flag set explicitly, --fit off, so the runtime
    cannot re-decide."""
    return to_server_args(p.params, model_path or p.spec.path)


@dataclass
class AfterLoad:
    """What the device libraries say once the server has loaded."""

    free: dict[str, int] = field(default_factory=dict)  # device -> free bytes
    process: dict[str, int] = field(default_factory=dict)  # device -> bytes the server process holds (NVML/amdsmi)


def probe_after_load(pid: int, used=(), probe_fn: Callable | None = None) -> AfterLoad:
    """Free memory per device and the server's own per-process GPU memory, from the probe backends, under the names
    llama-server gave the cards (`used`: the devices its log printed with their PCI bus ids)."""
    from ...probe.devices import name_map, probe

    r = (probe_fn or probe)()
    names = name_map(r.devices, used)
    out = AfterLoad()
    for d in r.devices:
        name = names.get(d.name, d.name)
        out.free[name] = d.free_bytes
        held = [p.used_bytes for p in d.processes if p.pid == pid and p.used_bytes is not None]
        if held:
            out.process[name] = sum(held)
    return out


def user_overrides(parsed: ParsedArgs, opts: PlanOptions) -> PlanOptions:
    """Arguments the user passed win: they fix those choices and the plan is redone around them."""
    p, ex = parsed.params, parsed.explicit
    if "np" in ex and p.n_parallel > 0:
        opts = replace(opts, n_parallel=p.n_parallel)
    if "ctx" in ex and p.n_ctx > 0:
        per_slot = max(256, p.n_ctx // max(1, opts.n_parallel))
        opts = replace(opts, max_ctx=per_slot, min_ctx=per_slot, fixed_ctx=True)
    if "ctk" in ex or "ctv" in ex:
        opts = replace(opts, kv_forced=(p.cache_type_k, p.cache_type_v))
    if "ub" in ex:
        opts = replace(opts, n_ubatch=p.n_ubatch)
    if "b" in ex:
        opts = replace(opts, n_batch=p.n_batch)
    if "fa" in ex:
        opts = replace(opts, flash_attn=p.flash_attn)
    if "no_repack" in ex or "repack" in ex:
        opts = replace(opts, repack=p.repack)
    if "ngl" in ex and p.n_gpu_layers >= 0:
        opts = replace(opts, fixed_ngl=p.n_gpu_layers)
    if ex & {"ot", "cpu_moe", "n_cpu_moe", "n_cpu_ffn"}:  # the user placed tensors: kept, no expert lever
        opts = replace(opts, tensor_overrides=p.tensor_overrides)
    return opts


def beside_options(parsed: ParsedArgs, opts: PlanOptions, spec) -> PlanOptions:
    """The user's files beside the model (--mmproj, -md, --lora, --spec-type...) read and counted on every candidate
    of the plan; their --cache-ram and --ctx-checkpoints kept (and counted), else sized from the RAM the plan
    leaves (planner.host_cache)."""
    from ...extras import load_extras
    from ...memory import BESIDE_FIELDS

    p, ex = parsed.params, parsed.explicit
    extras = load_extras(p, spec)
    return replace(opts, beside={**opts.beside, **{f: getattr(p, f) for f in BESIDE_FIELDS}},
                   extras=extras if extras else opts.extras,
                   cache_ram_mib=p.cache_ram_mib if "cache_ram" in ex else opts.cache_ram_mib,
                   ctx_checkpoints=p.ctx_checkpoints if "ctx_checkpoints" in ex else opts.ctx_checkpoints)


def merged_argv(plan_argv: list[str], user_args: list[str]) -> list[str]:
    """The plan's arguments without the flags the user set, then the user's own, in their order."""
    from .args import without_flags

    return [*without_flags(plan_argv, parse_server_args(user_args).explicit), *user_args]


def profile_key(spec, build: BuildInfo, devices: str, driver: str) -> ProfileKey:
    digest = model_digest(spec.path, spec.data_offsets[0], sum(spec.file_sizes))
    return ProfileKey(digest, devices, driver, runtime_build(build.label, build.binary))


def measured_by_device(est, log) -> tuple[dict, dict]:
    pred: dict[str, dict[str, int]] = {}
    for b in est.buffers:
        pred.setdefault(b.device, {}).setdefault(b.kind, 0)
        pred[b.device][b.kind] += b.bytes
    got: dict[str, dict[str, int]] = {}
    for b in log.buffers:
        got.setdefault(b.device, {}).setdefault(b.kind, 0)
        got[b.device][b.kind] += b.bytes
    return pred, got


class LlamaCpp:
    """llama-server `binary` with the user's own arguments (`user_args`, which win over the plan)."""

    label = "llama-server"

    def __init__(self, binary: str, user_args: list[str], *, timeout: float = 300.0, build: BuildInfo | None = None,
                 devices_desc: str = "", driver: str = "", after_load: Callable[..., AfterLoad] | None = None,
                 launch: Launcher | None = None):
        self.binary, self.user_args, self.timeout = binary, list(user_args), timeout
        self.build, self.devices_desc, self.driver = build, devices_desc, driver
        self.after_load = after_load
        self.launcher: Launcher = launch or LlamaServer
        self.parsed = parse_server_args(self.user_args)

    def resolve(self, model: str):
        import os

        from ...errors import AutoctxError
        from ...resolve import resolve

        spec = resolve(model, pulled_only=True)
        if not os.path.isfile(spec.path):
            raise AutoctxError(f"{model}: serve needs the model's GGUF on this machine (a path or a pulled Ollama "
                               "model)")
        return spec

    def knobs(self, spec, opts: PlanOptions) -> PlanOptions:
        return beside_options(self.parsed, user_overrides(self.parsed, opts), spec)

    def render(self, p: Plan) -> list[str]:
        return merged_argv(plan_args(p), self.user_args)

    def profile_key(self, spec) -> ProfileKey:
        return profile_key(spec, self.build or read_build(self.binary, devices=False), self.devices_desc, self.driver)

    def advise(self, p: Plan, budgets: list[Budget], opts: PlanOptions) -> list[str]:
        return []

    def launch(self, p: Plan) -> Launched:
        server = self.launcher(self.binary, self.render(p))
        try:
            server.start()
            if server.wait_ready(self.timeout):
                return Launched(server)
            oom = server.log().oom
            if oom:
                return Launched(server, oom=_strip_prefix(oom[0]))
            status = server.returncode()
            workers = list(dict.fromkeys(d.endpoint for d in p.params.devices if d.endpoint))
            dead = rpc_failure(server.log_text(), self.binary, workers) if workers else None
            raise ServerError(dead or f"llama-server exited with status {status} while loading; last lines:\n"
                              + last_lines(server.log_text()))
        except BaseException:
            server.close()
            raise

    def read_back(self, launched: Launched, p: Plan, budgets: list[Budget]) -> Allocation:
        from ...verify import compare

        server = launched.handle
        log = server.log()
        est = p.estimate
        build = self.build
        rows = compare(est, log, other_build=build is not None and not build.pinned)
        flags = [f"{r.device} {r.kind}: predicted {r.predicted_mib:.2f} MiB, actual "
                 f"{r.actual_mib if r.actual_mib is not None else '-'} MiB" for r in rows if not r.ok]
        if p.n_gpu_layers and log.offloaded and log.offloaded[0] < p.n_gpu_layers:
            flags.append(f"only {log.offloaded[0]}/{log.offloaded[1]} layers were offloaded; the plan put "
                         f"{p.n_gpu_layers} on the GPU")
        eaten: list[str] = []
        observed: list[str] = []  # what the drivers said of this launch: reported, never carried to a next plan
        after = (self.after_load(server.proc.pid, log.devices_used)
                 if self.after_load is not None and server.proc is not None else None)
        if after is not None:
            for b in budgets:
                free = after.free.get(b.device)
                if free is not None and free < b.margin_bytes:
                    eaten.append(f"{b.device}: {free / MiB:.0f} MiB free after loading, below the "
                                 f"{b.margin_bytes / MiB:.0f} MiB margin")
            for b in budgets:
                if b.device in after.free and b.device != "CPU":  # RAM's drop is blurred by the page cache
                    drop = b.free_bytes - after.free[b.device]
                    observed.append(f"{b.device}: free memory dropped by {drop / MiB:.0f} MiB while loading; "
                                    f"predicted {est.device_bytes(b.device) / MiB:.0f} MiB of buffers")
            for dev, held in after.process.items():
                buffers = est.device_bytes(dev)
                observed.append(f"{dev}: llama-server holds {held / MiB:.0f} MiB (driver), its buffers "
                                f"{buffers / MiB:.0f} MiB: {(held - buffers) / MiB:.0f} MiB outside llama.cpp "
                                "buffers")
        pred, got = measured_by_device(est, log)
        return Allocation(rows, flags, eaten, observed, pred, got,
                          {**p.as_dict(), "llama_server_args": self.render(p)}, after)

    def stop(self, launched: Launched) -> None:
        launched.handle.close()


def _strip_prefix(line: str) -> str:
    """Drop llama.cpp's '0.02.170.466 E ' timestamp/level prefix."""
    return re.sub(r"^\s*[\d.]+ [DIWE] ", "", line).strip()
