"""The planner: from free memory per device to the largest safe context, the KV cache type and the GPU layers.

Pure: it takes a ModelSpec and budgets (free bytes and margin per device) and asks `memory.estimate` what each
candidate allocates. Memory grows monotonically with the context, so the largest context that fits is found by
bisection over multiples of 256 (llama.cpp pads to 256 anyway): ~10 estimates per KV type, not one per step.

Choices, in order:
1. the context: the target is n_ctx_train (or --max-ctx); never below --min-ctx (4096, or n_ctx_train if smaller);
2. quality first: the first KV type in the order (f16 → q8_0) that reaches the target with every layer on the GPUs;
   if none reaches it, the one of them that gives the largest context. A q4_0 cache (K or V) costs measurable
   quality: the fallback types (q8_0/q4_0 → q4_0) are tried only when no type of the order reaches --min-ctx with
   every layer on the GPUs, and the plan then says so loudly; an order the user gave (--kv-types) has no fallback;
3. layers: all on the GPUs if --min-ctx fits that way; else the most layers that still leave room for --min-ctx,
   found by trying every layer count: fewer GPU layers means more CPU memory, so "fits" is not monotone in the
   layer count and a bisection would miss placements that fit;
4. several GPUs: layers split in proportion to usable memory (free − margin), emitted as --tensor-split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import AutoctxError
from .memory import CPU, FFN_EXPS_REGEX, Device, Estimate, Params, buft_overrides, estimate, layer_devices, \
    resolve_ngl, tensor_devices
from .memory import BESIDE_FIELDS
from .model import ModelSpec

GiB = 1024**3
MiB = 1024**2
# Default margins: a GPU loses ~0.3–0.6 GiB to the CUDA/HIP context and cuBLAS/rocBLAS workspaces that no
# llama.cpp buffer shows, plus allocator rounding; llama.cpp's own --fit keeps 1 GiB free per device. System RAM
# keeps 1 GiB or 5 % of it, whichever is larger, for the OS and the page cache.
GPU_MARGIN = 1 * GiB
DEFAULT_KV_ORDER: tuple[tuple[str, str], ...] = (("f16", "f16"), ("q8_0", "q8_0"))
# only when no type of the order reaches --min-ctx with every layer on the GPUs (and said loudly)
DEFAULT_KV_FALLBACK: tuple[tuple[str, str], ...] = (("q8_0", "q4_0"), ("q4_0", "q4_0"))


class PlanError(AutoctxError):
    """Nothing fits: the message says how much is missing."""


def default_margin(device: str, total_bytes: int) -> int:
    if device == CPU:
        return max(1 * GiB, total_bytes // 20)
    return GPU_MARGIN


@dataclass(frozen=True)
class Budget:
    device: str  # CPU, CUDA0, ROCm1, RPC0 ...
    free_bytes: int
    margin_bytes: int
    # the device with its buffer rules (an RPC device's endpoint and worker backend); None: named by `device` alone
    dev: Device | None = None
    # the budget whose memory this device's is too ("CPU": an RPC worker on this machine's CPU, loopback): its
    # buffers count in that budget as well, with that device's own
    shares: str = ""

    @property
    def usable(self) -> int:
        return self.free_bytes - self.margin_bytes

    def as_dict(self) -> dict:
        return {"device": self.device, "free_bytes": self.free_bytes, "margin_bytes": self.margin_bytes,
                **({"endpoint": self.dev.endpoint} if self.dev is not None and self.dev.endpoint else {}),
                **({"shares": self.shares} if self.shares else {})}


@dataclass(frozen=True)
class PlanOptions:
    runtime: str = "llamacpp"  # llamacpp | ollama
    max_ctx: int | None = None
    min_ctx: int = 4096
    kv_order: tuple[tuple[str, str], ...] = DEFAULT_KV_ORDER
    kv_fallback: tuple[tuple[str, str], ...] = DEFAULT_KV_FALLBACK  # () when the user gave the order
    kv_forced: tuple[str, str] | None = None
    n_parallel: int = 1
    n_ubatch: int = 512
    n_batch: int = 2048
    flash_attn: str = "auto"
    repack: bool = True
    cpu_repack: dict[str, int] = field(default_factory=dict)
    fixed_ctx: bool = False  # the user set the context: do not search it
    fixed_ngl: int | None = None  # the user set -ngl: do not change the layers
    # the user's -ot/--cpu-moe/--n-cpu-moe/--n-cpu-ffn (memory.Params.tensor_overrides): kept on every candidate,
    # and the planner then leaves the experts where they say
    tensor_overrides: tuple[tuple[str, str], ...] = ()
    # beside the model: the user's --mmproj/-md/--spec-type/--lora settings (memory.Params fields, by name) and the
    # headers of those files (extras.Extras), counted on every candidate; the host prompt cache and checkpoints
    # (--cache-ram MiB, --ctx-checkpoints per slot): None = sized after the plan from the RAM left (host_cache)
    beside: dict[str, Any] = field(default_factory=dict)
    extras: Any = None
    cache_ram_mib: int | None = None
    ctx_checkpoints: int | None = None


@dataclass
class Plan:
    """What the planner chose and why; runtime-free (runtimes.llamacpp.runtime.plan_args renders it as llama-server
    arguments, runtimes.ollama.runtime.modelfile as a Modelfile)."""

    spec: ModelSpec
    num_ctx: int
    cache_type_k: str
    cache_type_v: str
    flash_attn: str
    n_gpu_layers: int
    n_parallel: int
    ubatch: int
    tensor_split: tuple[float, ...] | None
    estimate: Estimate
    budgets: list[Budget]
    reasons: list[str]
    max_ctx_by_kv: dict[str, int]  # "f16/f16" -> largest context that fits (0: not even 256)
    params: Params
    profile_key: object = None  # set by callers that read/write a profile for this plan
    n_cpu_moe: int = 0  # the planner's --n-cpu-moe: the experts of the first N blocks stay on the CPU
    extras: Any = None  # the headers of the files beside the model it was planned with (PlanOptions.extras)

    def tight_device(self) -> Budget:
        """The budget with the least room left: the one that limits the context."""
        return min(self.budgets, key=lambda b: b.usable - self.estimate.resident_bytes(b.device))

    def as_dict(self) -> dict:
        return {"num_ctx": self.num_ctx, "cache_type_k": self.cache_type_k, "cache_type_v": self.cache_type_v,
                "flash_attn": self.flash_attn, "n_gpu_layers": self.n_gpu_layers, "n_cpu_moe": self.n_cpu_moe,
                "n_parallel": self.n_parallel, "ubatch": self.ubatch}


def _kv_label(kv: tuple[str, str]) -> str:
    return kv[0] if kv[0] == kv[1] else f"{kv[0]}/{kv[1]}"


class _Search:
    """Memoised estimates for one model and budget set."""

    def __init__(self, spec: ModelSpec, budgets: list[Budget], opts: PlanOptions):
        self.spec, self.budgets, self.opts = spec, budgets, opts
        self.gpus = [b for b in budgets if b.device != CPU]
        split = None
        if len(self.gpus) > 1:
            split = tuple(float(max(b.usable, 0) // MiB) for b in self.gpus)
        self.tensor_split = split
        self.base = Params(
            n_parallel=opts.n_parallel, kv_unified=False, n_batch=opts.n_batch, n_ubatch=opts.n_ubatch,
            flash_attn=opts.flash_attn, fit=False, tensor_split=split, repack=opts.repack,
            cpu_repack=dict(opts.cpu_repack), tensor_overrides=opts.tensor_overrides,
            devices=tuple(b.dev or Device(b.device, b.free_bytes) for b in self.gpus), **opts.beside,
            cache_ram_mib=opts.cache_ram_mib or 0, ctx_checkpoints=opts.ctx_checkpoints or 0,
        )
        self.cache: dict[tuple, Estimate | None] = {}
        self.weights: dict = {}  # memory.estimate's per-placement memo: the tensors are walked once per placement
        # the expert lever (--n-cpu-moe N): a MoE model with GPUs, for llama-server (an Ollama Modelfile has no such
        # parameter), unless the user placed tensors themselves
        self.moe = bool(spec.is_moe and self.gpus and opts.runtime == "llamacpp" and not opts.tensor_overrides)
        self._weights: dict[tuple[int, int, bool], tuple[int, int, dict[str, int]]] = {}  # placement_weights memo
        # several devices for llama-server, no tensors placed by the user: -ts per placement (split)
        self.balance = bool(split and opts.runtime == "llamacpp" and not opts.tensor_overrides)
        self._splits: dict[tuple[int, int], tuple[float, ...] | None] = {}
        self._rooms: dict[int, list[int] | None] = {}  # _room memo

    def params(self, ctx: int, kv: tuple[str, str], ngl: int, n_cpu_moe: int = 0, balanced: bool = True) -> Params:
        fa = self.opts.flash_attn
        if fa == "auto" and kv[1] not in ("f16", "f32", "bf16"):
            fa = "on"  # a quantized V cache needs flash attention; say it explicitly
        moe = (("--n-cpu-moe", str(n_cpu_moe)),) if n_cpu_moe else ()
        # no layer on a GPU: --no-op-offload, or llama.cpp would still run the prompt batches on the first GPU and
        # reserve a compute buffer there (memory.op_offload_device) that a plan leaving the GPU alone has no room for
        p = replace(self.base, n_ctx=ctx * self.opts.n_parallel, cache_type_k=kv[0], cache_type_v=kv[1],
                    n_gpu_layers=ngl if self.gpus else 0, flash_attn=fa,
                    op_offload=self.base.op_offload and (ngl > 0 or not self.gpus),
                    tensor_overrides=self.base.tensor_overrides + moe)
        return replace(p, tensor_split=self.split(ngl, n_cpu_moe)) if balanced and self.balance else p

    def _room(self, ngl: int) -> list[int] | None:
        """Each device's usable bytes less its buffers other than weights and KV (compute, output), from one estimate
        per layer count (the proportional split, every expert on the devices, --min-ctx f16); None when llama.cpp
        would refuse it. The split only needs them roughly: every plan is checked with its own estimate."""
        if ngl not in self._rooms:
            try:
                est = estimate(self.spec, self.params(self.opts.min_ctx or 4096, ("f16", "f16"), ngl, 0,
                                                      balanced=False), self.weights, self.opts.extras)
                self._rooms[ngl] = [b.usable - (est.device_bytes(b.device) - est.kind_bytes("model", b.device)
                                                - est.kind_bytes("kv", b.device)) for b in self.gpus]
            except AutoctxError:
                self._rooms[ngl] = None
        return self._rooms[ngl]

    def split(self, ngl: int, n_cpu_moe: int) -> tuple[float, ...] | None:
        """-ts for a placement on several devices: whole layers per device (llama.cpp's split of the offloaded
        layers, memory.layer_devices, is exact at integer counts), chosen so that every device keeps the same room
        per layer for the KV cache after its weights and its other buffers. The proportional split (layers in
        proportion to usable memory) ignores that blocks differ: with --n-cpu-moe N the first N blocks leave their
        experts in RAM and weigh a fraction of the others, the output layer sits on the last device. Memoised per
        placement; the plan's every estimate is made with it, so a split that fits worse than expected is only
        found to fit less."""
        key = (ngl, n_cpu_moe)
        if key in self._splits:
            return self._splits[key]
        self._splits[key] = self.tensor_split
        room = self._room(ngl) if ngl > 0 else None  # no layer offloaded: nothing to split
        if room is None:
            return self.tensor_split
        spec, n_all = self.spec, self.spec.n_layer
        first = max(n_all + 1 - ngl, 0)  # the offloaded slots: blocks first..n_all-1, then the output layer
        p = self.params(256, ("f16", "f16"), ngl, n_cpu_moe, balanced=False)
        names = [b.device for b in self.gpus]
        layer_dev, out_dev = layer_devices(spec, p, ngl)
        held, kv_width = [0] * (n_all + 1 - first), [0] * (n_all + 1 - first)
        for t, li, dev in zip(spec.tensors, spec.tensor_layer, tensor_devices(spec, p, layer_dev, out_dev)):
            if dev in names and first <= li <= n_all:
                held[li - first] += t.nbytes
        if spec.tied_output:  # the output layer's copy of token_embd (model_buffers)
            held[-1] += next((t.nbytes for t in spec.tensors if t.name == "token_embd.weight"), 0)
        for il in range(first, n_all):
            if spec.has_kv[il] and not spec.is_swa[il]:  # SWA layers' few cells are left to the estimate
                kv_width[il - first] = spec.n_embd_k_gqa(il) + spec.n_embd_v_gqa(il)

        def counts(x: float) -> list[int] | None:
            """Greedy: each device in order takes layers while its weights + x per KV width fit its room."""
            out, d, used = [0] * len(names), 0, 0.0
            for w, k in zip(held, kv_width):
                while d < len(names) and used + w + x * k > room[d]:
                    d, used = d + 1, 0.0
                if d == len(names):
                    return None
                out[d] += 1
                used += w + x * k
            return out

        if counts(0.0) is None:
            return self.tensor_split  # not even the weights: left to the estimate to refuse
        lo, hi = 0.0, float(max(room) + 1)
        for _ in range(48):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if counts(mid) is not None else (lo, mid)
        best = counts(lo)
        self._splits[key] = tuple(float(c) for c in best)
        return self._splits[key]

    def estimate(self, ctx: int, kv: tuple[str, str], ngl: int, n_cpu_moe: int = 0) -> Estimate | None:
        key = (ctx, kv, ngl, n_cpu_moe)
        if key not in self.cache:
            try:
                self.cache[key] = estimate(self.spec, self.params(ctx, kv, ngl, n_cpu_moe), self.weights,
                                           self.opts.extras)
            except AutoctxError:
                self.cache[key] = None  # this KV type cannot be used with this model (width, MLA, FA)
        return self.cache[key]

    def reads(self, ngl: int, n_cpu_moe: int = 0) -> tuple[int, int]:
        """token_reads of a placement (which device holds an offloaded tensor does not change them: the split is
        not needed, so placements that are only ranked never compute one)."""
        return self.placed(ngl, n_cpu_moe, balanced=False)[:2]

    def placed(self, ngl: int, n_cpu_moe: int = 0, balanced: bool = True) -> tuple[int, int, dict[str, int]]:
        """placement_weights of a placement (memoised)."""
        key = (ngl, n_cpu_moe, balanced and self.balance)
        if key not in self._weights:
            self._weights[key] = placement_weights(self.spec, self.params(256, ("f16", "f16"), ngl, n_cpu_moe,
                                                                          balanced=balanced))
        return self._weights[key]

    def placements(self, start: int, fewer: bool) -> list[tuple[int, int]]:
        """Candidate (GPU layers, --n-cpu-moe N) placements, cheapest first: by the bytes each generated token reads
        from CPU memory (token_reads), then more GPU layers.

        Without `fewer`: `start` GPU layers, and for a MoE model (the expert lever) the experts of the first N blocks
        on the CPU, for every N that moves experts off a device (N = 0 first; an N whose last block has no experts
        places nothing new and is left out). Every one of them reads less from RAM than any placement with fewer GPU
        layers and the experts of those layers' blocks in RAM. With `fewer`: every layer count from `start` down to
        0, a MoE model's experts all in RAM (--n-cpu-moe n_layer: llama.cpp's fit also moves every expert before it
        takes a layer off; plan then brings back what experts still fit). Either list is its whole space, so the
        first placement in it that fits is the cheapest of that space that fits."""
        has_experts = [False] * self.spec.n_layer
        for t, li in zip(self.spec.tensors, self.spec.tensor_layer):
            if 0 <= li < self.spec.n_layer_main and _EXPERTS.search(t.name):  # NextN/MTP blocks are not loaded
                has_experts[li] = True
        every = max((il + 1 for il, e in enumerate(has_experts) if e), default=0) if self.moe else 0
        out = []
        for ngl in (range(start, -1, -1) if fewer else (start,)):
            first_gpu = max(self.spec.n_layer + 1 - ngl, 0)  # memory.layer_devices: the blocks below are CPU
            if fewer:
                out.append((ngl, every if every > first_gpu else 0))
            else:
                out += [(ngl, 0)] + [(ngl, n) for n in range(first_gpu + 1, every + 1) if has_experts[n - 1]]
        return sorted(out, key=lambda pl: (self.reads(*pl)[0], -pl[0], pl[1]))

    def cheapest(self, ctx: int, kv: tuple[str, str], places: list[tuple[int, int]]) -> tuple[int, int] | None:
        """The first of `places` (cheapest first, see placements) with which `ctx` tokens fit, or None. Each one is
        tried in turn: more GPU layers or fewer CPU experts means more GPU memory but less CPU memory, so fitting is
        monotone in neither and no bisection or early stop would be right. A placement whose weights alone exceed a
        device's budget is passed over without an estimate: every buffer holds at least its tensors' bytes."""
        for pl in places:
            held = self.placed(*pl)[2]
            if all(held.get(b.device, 0) <= b.usable for b in self.budgets) and self.fits(ctx, kv, *pl):
                return pl
        return None

    def refusal(self, kv: tuple[str, str], ngl: int) -> str | None:
        """Why this KV type cannot be used with this model (llama.cpp's own refusal, from memory.estimate)."""
        try:
            estimate(self.spec, self.params(256, kv, ngl), self.weights, self.opts.extras)
        except AutoctxError as e:
            return str(e)
        return None

    def over(self, est: Estimate) -> dict[str, int]:
        """Bytes over budget per device (empty: it fits)."""
        out = {}
        for b in self.budgets:
            used = est.resident_bytes(b.device) + est.later_bytes(b.device)  # + what fills after /health
            used += shared_bytes(self.budgets, est, b.device)  # loopback RPC workers' buffers in this machine's RAM
            if used > b.usable:
                out[b.device] = used - b.usable
        return out

    def fits(self, ctx: int, kv: tuple[str, str], ngl: int, n_cpu_moe: int = 0) -> bool:
        est = self.estimate(ctx, kv, ngl, n_cpu_moe)
        return est is not None and not self.over(est)

    def max_ctx(self, kv: tuple[str, str], ngl: int, hi: int, n_cpu_moe: int = 0) -> int:
        """Largest multiple of 256 ≤ hi that fits (0 if not even 256): bisection on a monotone predicate."""
        lo_k, hi_k = 0, hi // 256
        if hi_k == 0:
            return 0
        if self.fits(hi_k * 256, kv, ngl, n_cpu_moe):
            return hi_k * 256
        while hi_k - lo_k > 1:
            mid = (lo_k + hi_k) // 2
            if self.fits(mid * 256, kv, ngl, n_cpu_moe):
                lo_k = mid
            else:
                hi_k = mid
        return lo_k * 256


def plan(spec: ModelSpec, budgets: list[Budget], opts: PlanOptions | None = None) -> Plan:
    opts = opts or PlanOptions()
    if not budgets:
        raise PlanError("no device to plan for")
    s = _Search(spec, budgets, opts)
    buft_overrides(s.base)  # a bad -ot buffer type is the user's error, said as such (not a KV type refused)
    reasons: list[str] = []
    if opts.fixed_ctx and opts.max_ctx:  # the user's -c: kept even beyond n_ctx_train
        target = min_ctx = max(256, -(-opts.max_ctx // 256) * 256)
    else:
        target = min(spec.n_ctx_train, opts.max_ctx or spec.n_ctx_train)
        target = max(256, target // 256 * 256)
        min_ctx = max(256, min(opts.min_ctx, spec.n_ctx_train) // 256 * 256)
        min_ctx = min(min_ctx, target)
    order = (opts.kv_forced,) if opts.kv_forced else opts.kv_order
    fallback = () if opts.kv_forced else tuple(k for k in opts.kv_fallback if k not in order)
    all_layers = spec.n_layer + 1 if s.gpus else 0
    refused = {k: why for k in (*order, *fallback) if (why := s.refusal(k, all_layers))}
    usable = [k for k in order if k not in refused]
    spare = [k for k in fallback if k not in refused]
    if not usable and not spare:
        raise PlanError("none of the KV cache types " + ", ".join(_kv_label(k) for k in order) + " can be used: "
                        + "; ".join(f"{_kv_label(k)}: {why}" for k, why in refused.items()))
    for k, why in refused.items():
        if k in order:
            reasons.append(f"KV {_kv_label(k)} not possible for this model: {why}")

    def choose(kinds: list[tuple[str, str]], at: tuple[int, int], need: int = target
               ) -> tuple[tuple[str, str], int, dict[str, int]]:
        """The first type that reaches `need` (the target; a fallback only needs --min-ctx), else the one with
        the largest context, at the placement `at` (GPU layers, --n-cpu-moe)."""
        found: dict[str, int] = {}
        for kv in kinds:
            found[_kv_label(kv)] = c = s.max_ctx(kv, at[0], target, at[1])
            if c >= need:
                return kv, c, found
        best = max(kinds, key=lambda k: found[_kv_label(k)])
        return best, found[_kv_label(best)], found

    ngl = all_layers if opts.fixed_ngl is None or not s.gpus else min(opts.fixed_ngl, all_layers)
    start, n_cpu_moe = ngl, 0
    # each step keeps the placement of the one before when it reaches --min-ctx: the order's types with every layer
    # on the GPUs; the fallback types with every layer on the GPUs; fewer layers with the order's most compact
    # type; fewer layers with the fallback's most compact type. For a MoE model "every layer on the GPUs" includes
    # the experts of the first N blocks on the CPU (the smallest N that leaves room for --min-ctx); "fewer layers"
    # is the most layers that fit with every expert on the CPU, then the smallest N that still fits with them.
    full = s.placements(start, fewer=False)
    anywhere: list[tuple[int, int]] = []  # fewer layers: weighed only when every layer on the GPUs leaves no room
    steps = [(usable, False), (spare, False), (usable, True), (spare, True)]
    kinds, kv, ctx, found = usable or spare, None, 0, {}
    for cand, fewer in steps:
        if fewer and s.gpus and opts.fixed_ngl is None and not anywhere:
            anywhere = s.placements(start, fewer=True)
        places = anywhere if fewer else full
        if not cand or not places:
            continue
        at = s.cheapest(min_ctx, cand[-1], places)
        if at is not None and fewer and s.moe:  # then as few of the GPU blocks' experts in RAM as still fit
            at = s.cheapest(min_ctx, cand[-1], s.placements(at[0], fewer=False))
        if at is None:
            if fewer:
                continue
            at = places[0]
        kv2, ctx2, found2 = choose(cand, at, target if cand is usable else min_ctx)
        found.update(found2)
        if kv is None or ctx2 > ctx:
            kinds, kv, ctx, (ngl, n_cpu_moe) = cand, kv2, ctx2, at
        if ctx >= min_ctx:
            break
    if ctx < min_ctx:
        compact, ngl = (spare or usable)[-1], 0  # the missing memory, with every layer on the CPU
        est = s.estimate(min_ctx, compact, ngl)
        missing = s.over(est) if est else {}
        what = ", ".join(f"{d}: {v / GiB:.2f} GiB" for d, v in missing.items()) or "unknown"
        raise PlanError(f"{spec.name or spec.path}: even {min_ctx} tokens with KV {_kv_label(compact)} do not fit "
                        f"(missing {what} beyond free − margin)")
    est = s.estimate(ctx, kv, ngl, n_cpu_moe)
    assert est is not None
    p = s.params(ctx, kv, ngl, n_cpu_moe)
    est, p, host_reasons = host_cache(s, est, p)

    # --- reasons ---
    label = _kv_label(kv)
    if ctx >= target:
        why = "the model's trained context" if target == spec.n_ctx_train else "the --max-ctx target"
        reasons.insert(0, f"context {ctx}: {why} fits")
    else:
        limits = ", ".join(f"{b.device} {b.usable / GiB:.1f} GiB usable" for b in budgets)
        reasons.insert(0, f"context {ctx}: the largest multiple of 256 that fits ({limits})")
    if usable and kv == usable[0]:
        reasons.append(f"KV cache {label}: the first of the order, and it "
                       + ("reaches the target" if ctx >= target else "gives the largest context"))
    elif kv in usable:
        first = _kv_label(kinds[0])
        reasons.append(f"KV cache {label}: {first} would fit only {found.get(first, 0)} tokens")
    else:  # a fallback type: only because the order's types could not reach --min-ctx
        short = ", ".join(f"{_kv_label(k)} fits only {found.get(_kv_label(k), 0)} tokens" for k in usable)
        reasons.append(f"WARNING: KV cache {label}: a 4-bit cache costs measurable quality; "
                       + (f"{short}, below --min-ctx {min_ctx}" if short else "the better types did not fit")
                       + " (--kv-types f16,q8_0 refuses it)")
    if s.gpus:
        gpu_s = "GPU" + ("s" if len(s.gpus) > 1 else "")
        if any(b.dev and b.dev.backend.remote for b in s.gpus):
            gpu_s = "devices" if len(s.gpus) > 1 else "device"
        cpu_read, all_read = token_reads(spec, est.params)
        given = " ".join(f"{flag} {value}".strip() for flag, value in opts.tensor_overrides)
        if ngl == all_layers and not n_cpu_moe:
            reasons.append(f"all {spec.n_layer} layers + output on the {gpu_s}"
                           + (f", but for the tensors {given} places" if given else ""))
        elif ngl == all_layers:
            reasons.append(f"all {spec.n_layer} layers' attention and KV cache + output on the {gpu_s}, the experts "
                           f"of the first {n_cpu_moe} on the CPU (--n-cpu-moe {n_cpu_moe}): the fewest that leave room "
                           f"for {min_ctx} tokens")
        else:
            on = max(ngl - 1, 0)
            moe = f" (and the experts of the first {n_cpu_moe} blocks)" if n_cpu_moe else ""
            reasons.append(f"only {on} of {spec.n_layer} layers{moe} fit on the GPU with {min_ctx} tokens: the rest "
                           "run on the CPU")
        if cpu_read:
            reasons.append(slowdown(cpu_read, all_read))
        if p.tensor_split and s.balance:
            reasons.append(f"layers per device (-ts {','.join(f'{x:g}' for x in p.tensor_split)}): each {gpu_s[:-1]} "
                           "keeps the same room per layer for the KV cache after its weights")
        elif p.tensor_split:
            reasons.append(f"layers split across {gpu_s} in proportion to usable memory: -ts "
                           + ",".join(f"{x:g}" for x in p.tensor_split))
        reasons += network_reasons(spec, est, budgets)
    if opts.n_parallel > 1:
        reasons.append(f"{opts.n_parallel} slots of {ctx} tokens each (KV cache × {opts.n_parallel})")
    reasons += host_reasons
    return Plan(spec, ctx, kv[0], kv[1], p.flash_attn, ngl if s.gpus else 0, opts.n_parallel, opts.n_ubatch,
                p.tensor_split, est, budgets, reasons, found, p, n_cpu_moe=n_cpu_moe, extras=opts.extras)


_EXPERTS = re.compile(FFN_EXPS_REGEX)  # what --cpu-moe / --n-cpu-moe move: the routed experts' weights
_FFN_WEIGHTS = re.compile(r"\.ffn_(up|down|gate)")  # a block's FFN matmul weights (dense, experts, shared experts)
# An assumption for the slowdown class, not a measurement: a GPU reads its memory ~10× faster than a desktop CPU
# reads RAM (GDDR6/HBM at 0.4–3 TB/s against dual-channel DDR4/DDR5 at 50–100 GB/s); generating a token reads every
# weight it uses once, so the time per token follows the bytes read from each memory.
GPU_CPU_BANDWIDTH = 10


def token_reads(spec: ModelSpec, p: Params) -> tuple[int, int]:
    """(bytes of weights a generated token reads from CPU memory, bytes of weights it reads in all), for the
    placement `p` describes (its GPU layers and tensor overrides, memory.tensor_devices).

    Each block and the output layer are read once per token; of a MoE block's routed experts (FFN_EXPS_REGEX) only
    n_expert_used of n_expert are, so an expert tensor counts that share of its bytes. The input embedding is left
    out: a token reads one row of it."""
    return placement_weights(spec, p)[:2]


def placement_weights(spec: ModelSpec, p: Params) -> tuple[int, int, dict[str, int]]:
    """token_reads, and the bytes of the tensors each device (CPU included) holds: a lower bound of its memory (a
    buffer is at least the sum of its tensors, a mapped range at least the tensors read from it)."""
    layer_dev, out_dev = layer_devices(spec, p, resolve_ngl(spec, p))
    cpu = total = 0
    held: dict[str, int] = {}
    for t, li, dev in zip(spec.tensors, spec.tensor_layer, tensor_devices(spec, p, layer_dev, out_dev)):
        if not dev:
            continue
        held[dev] = held.get(dev, 0) + t.nbytes
        if li < 0:
            continue
        read = _expert_read(spec, t.nbytes) if _EXPERTS.search(t.name) else t.nbytes
        total += read
        if dev == CPU:
            cpu += read
    return cpu, total, held


def _expert_read(spec: ModelSpec, nbytes: int) -> int:
    """The bytes of an expert tensor a token reads: n_expert_used of its n_expert experts."""
    return nbytes * spec.n_expert_used // spec.n_expert


def slowdown(cpu_read: int, all_read: int) -> str:
    """The expected slowdown of generation, in words, from the share of each token's weight reads that CPU memory
    serves (token_reads), at GPU_CPU_BANDWIDTH: time per token ∝ GPU bytes + GPU_CPU_BANDWIDTH × CPU bytes."""
    share = cpu_read / all_read if all_read else 0.0
    factor = 1 + share * (GPU_CPU_BANDWIDTH - 1)
    if factor < 1.25:
        words = "close to full-GPU speed"
    elif factor < 2:
        words = "noticeably slower than a full offload"
    elif factor < 4:
        words = "several times slower than a full offload"
    else:
        words = "many times slower than a full offload (CPU-bound)"
    return (f"each generated token reads {cpu_read / MiB:,.0f} MiB of weights from CPU memory ({100 * share:.1f} % of "
            f"{all_read / MiB:,.0f} MiB): expect generation {words} (~{factor:.1f}× the time per token, if RAM is "
            f"~{GPU_CPU_BANDWIDTH}× slower than GPU memory)")


def shared_bytes(budgets: list[Budget], est: Estimate, device: str) -> int:
    """The bytes the devices sharing `device`'s memory hold (Budget.shares: RPC workers on this machine's CPU)."""
    return sum(est.resident_bytes(b.device) + est.later_bytes(b.device) for b in budgets if b.shares == device)


def network_reasons(spec: ModelSpec, est: Estimate, budgets: list[Budget]) -> list[str]:
    """What an RPC placement costs: the output layer's device, the layer boundaries that cross the network (from the
    input embedding through every block and the output layer back to this machine, which reads the logits) and the
    bytes each one carries, and the RPC workers whose memory is this machine's RAM. Empty without RPC devices."""
    p = est.params
    devs = {d.name: d for d in p.devices}
    if not any(d.backend.remote for d in p.devices):
        return []

    def machine(dev: str) -> str:
        d = devs.get(dev)
        return d.endpoint or d.name if d is not None and d.backend.remote else "local"

    def label(dev: str) -> str:
        d = devs.get(dev)
        return f"{dev}[{d.endpoint}]" if d is not None and d.backend.remote and d.endpoint else dev

    where = tensor_devices(spec, p, est.layer_device, est.output_device)
    inp = next((dev for t, dev in zip(spec.tensors, where) if t.name == "token_embd.weight" and dev), CPU)
    ffn: dict[int, str] = {}  # a block whose FFN weights (experts) an override put elsewhere runs that part there
    for t, li, dev in zip(spec.tensors, spec.tensor_layer, where):
        if 0 <= li < len(est.layer_device) and dev and dev != est.layer_device[li] and _FFN_WEIGHTS.search(t.name):
            ffn.setdefault(li, dev)
    stages = [(inp, "the input embedding")]
    for il, dev in enumerate(est.layer_device):
        stages.append((dev, f"at block {il}"))
        if il in ffn:
            stages.append((ffn[il], f"at block {il}'s FFN"))
    stages += [(est.output_device, "at the output layer"), (CPU, "for the logits")]
    crossings = [f"{label(a)} → {label(b)} {what}" for (a, _), (b, what) in zip(stages, stages[1:])
                 if machine(a) != machine(b)]
    shown = crossings if len(crossings) <= 6 else crossings[:4] + [f"… {len(crossings) - 5} more", crossings[-1]]
    out = []
    if est.n_gpu_layers:
        out.append(f"output layer on {label(est.output_device)}: llama.cpp gives it to the last device of the split "
                   "(RPC devices come first in its device order, this machine's GPUs after them)")
    act = est.n_ubatch * spec.n_embd * 4  # the f32 residual stream between two blocks
    if crossings:
        out.append(f"network: {len(crossings)} layer boundar{'y crosses' if len(crossings) == 1 else 'ies cross'} it "
                   f"({'; '.join(shown)}): each costs a network round trip per generated token, and each prompt "
                   f"batch sends {est.n_ubatch} × {spec.n_embd} × 4 B = {act / MiB:,.2f} MiB of activations across "
                   "it (ubatch × n_embd, f32)")
    else:
        out.append("network: no layer boundary crosses it (the RPC devices hold nothing of this placement)")
    shared = [b.device for b in budgets if b.shares]
    if shared:
        out.append(f"{', '.join(shared)} run{'s' if len(shared) == 1 else ''} on this machine (loopback): rpc-server "
                   "reports this machine's RAM, so their buffers are counted in the CPU budget with the CPU's own "
                   "(not twice)")
    return out


def memory_curve(spec: ModelSpec, plan_: Plan, kv: tuple[str, str], points: int = 24) -> list[tuple[int, int]]:
    """(context, bytes on the tightest device) for a chart, at the plan's layer placement."""
    s = _Search(spec, plan_.budgets, PlanOptions(n_parallel=plan_.n_parallel, n_ubatch=plan_.ubatch,
                                                  flash_attn="auto", repack=plan_.params.repack,
                                                  cpu_repack=dict(plan_.params.cpu_repack),
                                                  tensor_overrides=plan_.params.tensor_overrides,
                                                  beside={f: getattr(plan_.params, f) for f in BESIDE_FIELDS},
                                                  extras=plan_.extras))
    dev = plan_.tight_device().device
    out = []
    top = spec.n_ctx_train
    for i in range(1, points + 1):
        ctx = max(256, top * i // points // 256 * 256)
        est = s.estimate(ctx, kv, plan_.n_gpu_layers)
        if est is not None:
            out.append((ctx, est.resident_bytes(dev)))
    return out


PROMPT_CACHE_MAX_MIB = 8192  # llama-server's default --cache-ram (common/common.h cache_ram_mib)
PROMPT_CACHE_MIN_MIB = 256  # below this the prompt cache is turned off (--cache-ram 0): too small to hold a prompt
CHECKPOINTS_MAX = 32  # llama-server's default --ctx-checkpoints per slot


def host_cache(s: _Search, est: Estimate, p: Params) -> tuple[Estimate, Params, list[str]]:
    """The host memory llama-server fills after /health, set explicitly from the RAM the plan leaves (llama.cpp's
    --fit treats RAM as unlimited and its prompt cache defaults to 8 GiB): first the context checkpoints (up to 32
    per slot, for a model that makes them: sliding-window or recurrent state), then the prompt cache with what is
    left, at most 8192 MiB, off below 256 MiB. What the user set is kept (and was counted in the search)."""
    from .memory import checkpoint_bytes

    cpu = next((b for b in s.budgets if b.device == CPU), None)
    left = None if cpu is None else (cpu.usable - est.resident_bytes(CPU) - est.later_bytes(CPU)
                                     - shared_bytes(s.budgets, est, CPU))
    reasons = []
    n_ckpt, cache = p.ctx_checkpoints, p.cache_ram_mib
    one = checkpoint_bytes(est) * p.n_parallel
    if s.opts.ctx_checkpoints is None:
        n_ckpt = CHECKPOINTS_MAX if left is None or not one else max(0, min(CHECKPOINTS_MAX, left // one))
        if one and left is not None:
            left -= n_ckpt * one
            reasons.append(f"context checkpoints: {n_ckpt} per slot (--ctx-checkpoints; {one / MiB:.1f} MiB each "
                           f"for {p.n_parallel} slot{'s' if p.n_parallel > 1 else ''}, filled after /health)"
                           + ("" if n_ckpt == CHECKPOINTS_MAX else ": fewer than llama.cpp's 32 to fit in RAM"))
    if s.opts.cache_ram_mib is None:
        if left is None:
            cache = PROMPT_CACHE_MAX_MIB
        else:
            cache = min(PROMPT_CACHE_MAX_MIB, max(0, left // MiB))
            cache = cache if cache >= PROMPT_CACHE_MIN_MIB else 0
            reasons.append(f"prompt cache: --cache-ram {cache} MiB, "
                           + ("the RAM left after the plan (llama.cpp's default is 8192 MiB, filled after /health)"
                              if 0 < cache < PROMPT_CACHE_MAX_MIB else
                              "llama.cpp's 8192 MiB fits in the RAM left" if cache else
                              "off: less than 256 MiB of RAM is left after the plan"))
    extras = [b for b in est.buffers if b.detail.startswith(("projector", "draft", "LoRA", "MTP"))]
    if extras:
        by = {}
        for b in extras:
            what = b.detail.split(",")[0].split(" ")[0]
            by[(what, b.device)] = by.get((what, b.device), 0) + b.bytes
        reasons.append("beside the model: " + ", ".join(f"{w} {n / MiB:.0f} MiB on {d}" for (w, d), n in by.items())
                       + " (counted before the context search)")
    if (n_ckpt, cache) != (p.ctx_checkpoints, p.cache_ram_mib):
        p = replace(p, ctx_checkpoints=n_ckpt, cache_ram_mib=cache)
        est = estimate(s.spec, p, s.weights, s.opts.extras)
    return est, p, reasons
