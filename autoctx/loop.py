"""The closed loop, the same for every runtime (runtimes.base.Runtime): plan → render → launch → read back what was
allocated → compare → step down or record.

`plan_once` reads the model's profile (its correction narrows the budgets) and makes the first plan; `closed_loop`
launches it, steps down and relaunches when the load ran out of memory (or the margin was eaten), and saves what it
measured into the profile. `autoctx serve` runs it over llama.cpp, `autoctx run` over Ollama; the caller decides
whether to keep what was launched in the foreground or stop it (--check).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .errors import AutoctxError
from .planner import Budget, Plan, PlanOptions, plan
from .profiles import Profile, ProfileKey, ProfileStore, apply_corrections
from .runtimes.base import Allocation, Runtime


@dataclass
class Planned:
    """The first plan, with the budgets and options it was made from (the profile's correction applied)."""

    plan: Plan
    budgets: list[Budget]
    opts: PlanOptions
    key: ProfileKey | None
    notes: list[str]  # the profile's corrections, said in every plan's reasons


@dataclass
class LoopResult:
    server: Any  # what the runtime launched and the caller now owns (llama.cpp: its LlamaServer)
    plan: Plan
    argv: Any  # what the runtime was given (llama.cpp: the argv; Ollama: the Modelfile)
    rows: list
    flags: list[str]
    attempts: list[str]
    profile: Profile | None = None
    profile_path: str | None = None
    notes: list[str] = field(default_factory=list)
    after: Any = None
    build: Any = None
    allocation: Allocation | None = None

    @property
    def ok(self) -> bool:
        return not self.flags

    def report(self) -> dict:
        return {"plan": self.plan.as_dict(), "argv": self.argv, "attempts": self.attempts, "flags": self.flags,
                "budget": [b.as_dict() for b in self.plan.budgets],
                "comparison": [r.as_dict() for r in self.rows], "reasons": self.plan.reasons, "notes": self.notes,
                "profile": self.profile_path, "llama_server": None if self.build is None else self.build.as_dict(),
                "after_load": None if self.after is None else {"free_bytes": self.after.free,
                                                               "process_bytes": self.after.process}}


def plan_once(rt: Runtime, spec, budgets: list[Budget], opts: PlanOptions, store: ProfileStore | None = None,
              say: Callable[[str], None] = print) -> Planned:
    """The runtime's knobs, the profile's correction, the first plan and the runtime's advice on it."""
    opts = rt.knobs(spec, opts)
    key, notes = None, []
    if store is not None:
        key = rt.profile_key(spec)
        profile = store.get(key)
        for w in store.warnings:
            say(f"warning: {w}")
        budgets, notes = apply_corrections(budgets, profile)
    p = _plan(spec, budgets, opts, notes, key)
    for line in rt.advise(p, budgets, opts):
        say(line)
    return Planned(p, budgets, opts, key, notes)


def _plan(spec, budgets: list[Budget], opts: PlanOptions, notes: list[str], key) -> Plan:
    p = plan(spec, budgets, opts)
    for n in notes:
        if n not in p.reasons:
            p.reasons.append(n)
    p.profile_key = key
    return p


def closed_loop(rt: Runtime, first: Planned, store: ProfileStore | None = None, max_tries: int = 3,
                say: Callable[[str], None] = print, build=None) -> LoopResult:
    """Launch the first plan, read back, compare; step down and relaunch on out-of-memory or an eaten margin; record.
    What was launched is the caller's once returned; on every other way out it is stopped."""
    budgets, opts, p, key, notes = first.budgets, first.opts, first.plan, first.key, first.notes
    attempts: list[str] = []
    spec = p.spec
    for attempt in range(1, max_tries + 1):
        if attempt > 1:
            p = _plan(spec, budgets, opts, notes, key)
        launched = rt.launch(p)
        try:  # what was launched is ours until the result hands it to the caller
            if launched.oom is not None:
                line = (f"attempt {attempt}: {rt.label} ran out of memory loading num_ctx {p.num_ctx} "
                        f"KV {p.cache_type_k}/{p.cache_type_v} ({launched.oom[:120]})")
                attempts.append(line)
                say(line)
                rt.stop(launched)
                opts = step_down(p, opts)
                continue
            got = rt.read_back(launched, p, budgets)
            if got.eaten and attempt < max_tries:
                line = f"attempt {attempt}: margin eaten ({'; '.join(got.eaten)}); stepping down"
                attempts.append(line)
                say(line)
                rt.stop(launched)
                opts = step_down(p, opts)
                continue
            attempts.append(f"attempt {attempt}: loaded num_ctx {p.num_ctx} KV {p.cache_type_k}/{p.cache_type_v}")
            result = LoopResult(launched.handle, p, rt.render(p), got.rows, got.flags + got.eaten, attempts,
                                notes=notes + got.notes, after=got.after, build=build, allocation=got)
            if store is not None and key is not None:  # learned into the profile as stored now, under its lock
                try:
                    result.profile, path = store.record(Profile(key, spec.path, spec.name, spec.architecture),
                                                        got.record, got.predicted, got.measured)
                    result.profile_path = str(path)
                except (OSError, AutoctxError) as e:  # what runs is fine: it goes on without the profile
                    say(f"warning: profile not saved ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            return result
        except BaseException:
            rt.stop(launched)
            raise
    raise AutoctxError(f"{rt.label} still ran out of memory after {max_tries} attempts: " + "; ".join(attempts))


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


def serve_llamacpp(spec, budgets: list[Budget], opts: PlanOptions, user_args: list[str], binary: str, *,
                   max_tries: int = 3, timeout: float = 300.0, store: ProfileStore | None = None,
                   devices_desc: str = "", driver: str = "", after_load=None, build=None,
                   say: Callable[[str], None] = print, launch=None) -> LoopResult:
    """The loop over llama.cpp: plan, launch llama-server, verify, step down, record. `after_load(pid, used_devices)`
    reads the drivers once loaded; `build` is what the binary said of itself (another build than the mirrored one
    widens the verifier's tolerance); `launch(binary, argv)` makes each attempt's server (the tests inject one that
    fails)."""
    from .runtimes.llamacpp.runtime import LlamaCpp

    rt = LlamaCpp(binary, user_args, timeout=timeout, build=build, devices_desc=devices_desc, driver=driver,
                  after_load=after_load, launch=launch)
    return closed_loop(rt, plan_once(rt, spec, budgets, opts, store, say), store, max_tries, say, build=build)
