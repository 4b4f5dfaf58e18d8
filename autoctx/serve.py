"""The closed loop for llama.cpp: plan → launch → read what was allocated → compare → step down or learn.

`serve_llamacpp` plans (applying a stored profile's correction), starts llama-server with an argv list, waits for
/health, verifies the allocation against the prediction, steps down and relaunches when the load fails for memory
(or the margin was eaten), and saves what it measured into the profile. The caller decides whether to keep the
server in the foreground or stop it (--check).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from .errors import AutoctxError
from .planner import Budget, Plan, PlanOptions, plan
from .profiles import Profile, ProfileKey, ProfileStore, apply_corrections, model_digest, runtime_build
from .runtimes.llamacpp.args import ParsedArgs, parse_server_args
from .runtimes.llamacpp.build import BuildInfo, read_build, rpc_failure
from .runtimes.llamacpp.server import LlamaServer, ServerError, last_lines
from .verify import Row, compare

MiB = 1024**2
Launcher = Callable[[str, list[str]], LlamaServer]  # (binary, argv) -> a server not yet started


@dataclass
class AfterLoad:
    """What the device libraries say once the server has loaded."""

    free: dict[str, int] = field(default_factory=dict)  # device -> free bytes
    process: dict[str, int] = field(default_factory=dict)  # device -> bytes the server process holds (NVML/amdsmi)


def probe_after_load(pid: int, used=(), probe_fn: Callable | None = None) -> AfterLoad:
    """Free memory per device and the server's own per-process GPU memory, from the probe backends, under the names
    llama-server gave the cards (`used`: the devices its log printed with their PCI bus ids)."""
    from .probe.devices import name_map, probe

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


@dataclass
class ServeResult:
    server: LlamaServer
    plan: Plan
    argv: list[str]
    rows: list[Row]
    flags: list[str]
    attempts: list[str]
    profile: Profile | None = None
    profile_path: str | None = None
    notes: list[str] = field(default_factory=list)
    after: AfterLoad | None = None
    build: BuildInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.flags

    def report(self) -> dict:
        budget = [{"device": b.device, "free_bytes": b.free_bytes, "margin_bytes": b.margin_bytes,
                   **({"endpoint": b.dev.endpoint} if b.dev is not None and b.dev.endpoint else {}),
                   **({"shares": b.shares} if b.shares else {})} for b in self.plan.budgets]
        return {"plan": self.plan.as_dict(), "argv": self.argv, "attempts": self.attempts, "flags": self.flags,
                "budget": budget,
                "comparison": [r.as_dict() for r in self.rows], "reasons": self.plan.reasons, "notes": self.notes,
                "profile": self.profile_path, "llama_server": None if self.build is None else self.build.as_dict(),
                "after_load": None if self.after is None else {"free_bytes": self.after.free,
                                                               "process_bytes": self.after.process}}


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
    from .extras import load_extras
    from .memory import BESIDE_FIELDS

    p, ex = parsed.params, parsed.explicit
    extras = load_extras(p, spec)
    return replace(opts, beside={**opts.beside, **{f: getattr(p, f) for f in BESIDE_FIELDS}},
                   extras=extras if extras else opts.extras,
                   cache_ram_mib=p.cache_ram_mib if "cache_ram" in ex else opts.cache_ram_mib,
                   ctx_checkpoints=p.ctx_checkpoints if "ctx_checkpoints" in ex else opts.ctx_checkpoints)


def merged_argv(plan_args: list[str], user_args: list[str]) -> list[str]:
    """The plan's arguments without the flags the user set, then the user's own, in their order."""
    from .runtimes.llamacpp.args import without_flags

    return [*without_flags(plan_args, parse_server_args(user_args).explicit), *user_args]


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


def serve_llamacpp(spec, budgets: list[Budget], opts: PlanOptions, user_args: list[str], binary: str, *,
                   max_tries: int = 3, timeout: float = 300.0, store: ProfileStore | None = None,
                   devices_desc: str = "", driver: str = "", after_load: Callable[..., AfterLoad] | None = None,
                   build: BuildInfo | None = None, say: Callable[[str], None] = print,
                   launch: Launcher = LlamaServer) -> ServeResult:
    """Plan, launch, verify, step down, record. `after_load(pid, used_devices)` reads the drivers once loaded;
    `build` is what the binary said of itself (another build than the mirrored one widens the verifier's
    tolerance); `launch(binary, argv)` makes each attempt's server (the tests inject one that fails)."""
    parsed = parse_server_args(user_args)
    opts = user_overrides(parsed, opts)
    opts = beside_options(parsed, opts, spec)
    notes: list[str] = []
    profile: Profile | None = None
    key: ProfileKey | None = None
    if store is not None:
        key = profile_key(spec, build or read_build(binary, devices=False), devices_desc, driver)
        profile = store.get(key)
        for w in store.warnings:
            say(f"warning: {w}")
        budgets, notes = apply_corrections(budgets, profile)
    attempts: list[str] = []
    for attempt in range(1, max_tries + 1):
        p = plan(spec, budgets, opts)
        for n in notes:
            if n not in p.reasons:
                p.reasons.append(n)
        argv = merged_argv(p.llama_server_args(), user_args)
        server = launch(binary, argv)
        try:  # the server is ours until the result hands it to the caller: no path out leaves it running
            server.start()
            ready = server.wait_ready(timeout)
            if not ready:
                oom = server.log().oom
                status = server.returncode()
                if not oom:
                    workers = list(dict.fromkeys(d.endpoint for d in p.params.devices if d.endpoint))
                    dead = rpc_failure(server.log_text(), binary, workers) if workers else None
                    raise ServerError(dead or f"llama-server exited with status {status} while loading; last "
                                      "lines:\n" + last_lines(server.log_text()))
                line = (f"attempt {attempt}: llama-server ran out of memory loading num_ctx {p.num_ctx} "
                        f"KV {p.cache_type_k}/{p.cache_type_v} ({_strip_prefix(oom[0])[:120]})")
                attempts.append(line)
                say(line)
                server.close()
                opts = step_down(p, opts)
                continue
            log = server.log()
            est = p.estimate
            rows = compare(est, log, other_build=build is not None and not build.pinned)
            flags = [f"{r.device} {r.kind}: predicted {r.predicted_mib:.2f} MiB, actual "
                     f"{r.actual_mib if r.actual_mib is not None else '-'} MiB" for r in rows if not r.ok]
            if p.n_gpu_layers and log.offloaded and log.offloaded[0] < p.n_gpu_layers:
                flags.append(f"only {log.offloaded[0]}/{log.offloaded[1]} layers were offloaded; the plan put "
                             f"{p.n_gpu_layers} on the GPU")
            eaten: list[str] = []
            observed: list[str] = []  # what the drivers said of this launch: reported, never carried to a next plan
            after = (after_load(server.proc.pid, log.devices_used) if after_load is not None and server.proc is not None
                     else None)
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
            if eaten and attempt < max_tries:
                line = f"attempt {attempt}: margin eaten ({'; '.join(eaten)}); stepping down"
                attempts.append(line)
                say(line)
                server.close()
                opts = step_down(p, opts)
                continue
            flags += eaten
            attempts.append(f"attempt {attempt}: loaded num_ctx {p.num_ctx} KV {p.cache_type_k}/{p.cache_type_v}")
            result = ServeResult(server, p, argv, rows, flags, attempts, notes=notes + observed, after=after,
                                 build=build)
            if store is not None and key is not None:
                pred, got = measured_by_device(est, log)  # learned into the profile as stored now, under its lock
                try:
                    result.profile, path = store.record(Profile(key, spec.path, spec.name, spec.architecture),
                                                        {**p.as_dict(), "llama_server_args": argv}, pred, got)
                    result.profile_path = str(path)
                except (OSError, AutoctxError) as e:  # the server is fine: serving goes on without the profile
                    say(f"warning: profile not saved ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            return result
        except BaseException:
            server.close()
            raise
    raise AutoctxError(f"llama-server still ran out of memory after {max_tries} attempts: "
                       + "; ".join(attempts))


def step_down(p: Plan, opts: PlanOptions) -> PlanOptions:
    """The next smaller plan: three quarters of the context, or the next KV type once the context is at its floor."""
    smaller = max(256, int(p.num_ctx * 0.75) // 256 * 256)
    floor = min(opts.min_ctx, p.spec.n_ctx_train)
    if smaller >= floor and not opts.fixed_ctx:
        return replace(opts, max_ctx=smaller)
    order = [*opts.kv_order, *(k for k in opts.kv_fallback if k not in opts.kv_order)]
    current = (p.cache_type_k, p.cache_type_v)
    if opts.kv_forced is None and current in order and order.index(current) + 1 < len(order):
        rest = order[order.index(current) + 1:]  # the fallback types stay fallbacks: the plan says so loudly
        return replace(opts, kv_order=tuple(k for k in rest if k in opts.kv_order),
                       kv_fallback=tuple(k for k in rest if k not in opts.kv_order))
    raise AutoctxError(f"cannot step down below num_ctx {p.num_ctx} with KV {p.cache_type_k}/{p.cache_type_v}")


def _strip_prefix(line: str) -> str:
    """Drop llama.cpp's '0.02.170.466 E ' timestamp/level prefix."""
    import re

    return re.sub(r"^\s*[\d.]+ [DIWE] ", "", line).strip()


