"""Memory budgets per device, from what the user said (--free, --device, --margin) or from the probe."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import ArgsError
from .planner import Budget, default_margin
from .units import device_name, parse_size

_RPC_INDEX = re.compile(r"rpc(\d+)", re.I)


@dataclass
class BudgetFlags:
    """--free, --device, --margin and --rpc as given, checked."""

    free: dict[str, int] = field(default_factory=dict)  # local devices (CPU, CUDA0...): replaces the local probe
    cpu_only: bool = False
    margin: int | None = None  # --margin SIZE: every device
    margins: dict[str, int] = field(default_factory=dict)  # --margin DEVICE=SIZE (CUDA0, CPU, RPC<n>, HOST:PORT)
    rpc_free: dict[str, int] = field(default_factory=dict)  # --free RPC<n>=SIZE or HOST:PORT=SIZE: caps that device
    rpc: list[tuple[str, str | None]] = field(default_factory=list)  # --rpc HOST:PORT[@backend], in order


def rpc_endpoints(value: str) -> list[tuple[str, str | None]]:
    """--rpc HOST:PORT[@BACKEND][,...]: the workers in order, each with its backend when named (cuda, vulkan...;
    None: assumed CPU, rpc-server's device on a machine without GPUs). llama-server gets the endpoints alone."""
    from .memory import BACKEND_ALIASES, BACKENDS
    from .runtimes.llamacpp.args import rpc_devices

    known = {b.lower(): b for b in BACKENDS if b != "RPC"} | {a.lower(): b for a, b in BACKEND_ALIASES.items()}
    out: list[tuple[str, str | None]] = []
    for item in value.split(",") if value.strip() else [""]:
        ep, at, backend = item.partition("@")
        endpoint = rpc_devices("--rpc", ep)[0].endpoint  # HOST:PORT checked, one line when it is not
        if at and backend.strip().lower() not in known:
            raise ArgsError(f"--rpc {item.strip()}: unknown worker backend {backend.strip()!r} (one of "
                            f"{', '.join(k for k in known if k != 'metal')})")
        if endpoint in (e for e, _ in out):
            raise ArgsError(f"--rpc names {endpoint} twice")
        out.append((endpoint, known[backend.strip().lower()] if at else None))
    return out


def is_loopback(endpoint: str) -> bool:
    """Whether HOST:PORT is this machine by its loopback address (127.0.0.0/8, ::1, localhost)."""
    host = endpoint.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def budget_flags(free: list[str], device: str, margin: str | list[str] | None, rpc: str = "") -> BudgetFlags:
    """--free DEVICE=SIZE (each device once; an RPC device as rpc<n> or HOST:PORT), --device cpu, --margin SIZE
    and --margin DEVICE=SIZE, --rpc HOST:PORT[@backend],..., checked before anything is probed or asked. Errors
    name the flag."""
    def size(flag: str, text: str) -> int:
        try:
            return parse_size(text)
        except ArgsError as e:
            raise ArgsError(f"{flag}: {e}") from None

    f = BudgetFlags(rpc=rpc_endpoints(rpc) if rpc else [])
    endpoints = [ep for ep, _ in f.rpc]

    def name_of(flag: str, name: str) -> tuple[str, bool]:
        """(the device, whether it is an RPC one)."""
        t = name.strip()
        rpc_dev = f"RPC{int(m[1])}" if (m := _RPC_INDEX.fullmatch(t)) else None
        if rpc_dev is None and ":" in t:
            from .runtimes.llamacpp.args import rpc_devices

            rpc_dev = rpc_devices(flag, t)[0].endpoint
            if endpoints and rpc_dev not in endpoints:
                raise ArgsError(f"{flag} {t}: not one of the --rpc workers ({', '.join(endpoints)})")
        if rpc_dev is not None:
            if not endpoints:
                raise ArgsError(f"{flag} {t}: an RPC device, but no --rpc HOST:PORT,... names the workers")
            return rpc_dev, True
        try:
            return device_name(t), False
        except ArgsError as e:
            raise ArgsError(f"{flag}: {e}") from None

    items = [margin] if isinstance(margin, str) else list(margin or [])
    for item in (x for x in items if x):
        name, eq, text = item.rpartition("=")
        if not eq:
            if f.margin is not None:
                raise ArgsError(f"--margin SIZE given twice (then {item!r}): one SIZE for every device, "
                                "DEVICE=SIZE for one")
            f.margin = size("--margin", item)
            continue
        dev, _ = name_of("--margin", name)
        if dev in f.margins:
            raise ArgsError(f"--margin names {dev} twice (one --margin DEVICE=SIZE per device)")
        f.margins[dev] = size("--margin", text)
    for item in free:
        name, eq, text = item.partition("=")
        if not eq:
            raise ArgsError(f"--free expects DEVICE=SIZE, got {item!r}")
        if "," in item:
            raise ArgsError(f"--free takes one DEVICE=SIZE, got {item!r}: repeat --free for each device")
        dev, remote = name_of("--free", name)
        into = f.rpc_free if remote else f.free
        if dev in into:
            raise ArgsError(f"--free names {dev} twice (one --free DEVICE=SIZE per device)")
        into[dev] = size("--free", text)
    if device and device.strip().lower() != "cpu":
        raise ArgsError(f"--device accepts only cpu, got {device!r} (GPUs come from the probe or --free)")
    if device and f.rpc:
        raise ArgsError("--device cpu plans for this machine's RAM only: not with --rpc workers")
    f.cpu_only = bool(device)
    return f


def budget_args(free: list[str], device: str, margin: str | list[str] | None,
                rpc: str = "") -> tuple[dict[str, int], bool, int | None]:
    """budget_flags' local part: (free bytes per local device, cpu only, the margin or None for the default)."""
    f = budget_flags(free, device, margin, rpc)
    return f.free, f.cpu_only, f.margin


def budgets_from(free: list[str], device: str, margin: str | list[str] | None, describe: bool = False, warn=None,
                 listed=None, rpc: str = "", llama_server: str | None = None):
    """Budgets per device from --free DEVICE=SIZE, --device cpu and --margin, else from the probe; with --rpc the
    workers' devices first (rpc_budgets), as llama.cpp orders devices.

    `listed`: the devices the llama-server binary lists (runtimes.llamacpp.build), whose names and order the probed
    GPUs take (a Vulkan build's Vulkan0, CUDA's fastest-first order). With `describe`, also the devices'
    description and driver (the profile key's machine part)."""

    flags = budget_flags(free, device, margin, rpc)
    given, cpu_only, fixed_margin = flags.free, flags.cpu_only, flags.margin
    probed = None
    if given:
        if cpu_only:
            given = {k: v for k, v in given.items() if k == "CPU"}
        totals = {k: v for k, v in given.items()}
    else:
        from .probe.devices import probe as run_probe

        probed = run_probe()
        notes = list(probed.warnings)
        if listed is not None and not cpu_only:
            from .probe.devices import join_listed

            probed.devices, joined = join_listed(probed.devices, listed)
            notes += joined
        if any(not d.order_known for d in probed.devices):
            notes.append("mixed GPUs numbered fastest-first by CUDA (CUDA_DEVICE_ORDER unset): NVML cannot tell that "
                         "order, so CUDA<n> here follows PCI order; set CUDA_DEVICE_ORDER=PCI_BUS_ID, or let "
                         "`autoctx serve` read llama-server's own device list")
        for w in notes:
            if warn:
                warn(w)
        devs = [d for d in probed.devices if not cpu_only or d.kind == "cpu"]
        given = {d.name: d.free_bytes for d in devs}
        totals = {d.name: d.total_bytes for d in devs}
    if not given:
        raise ArgsError("no device to plan for (use --free DEVICE=SIZE or --device cpu)")
    budgets = [Budget(name, size, flags.margins.get(name, fixed_margin if fixed_margin is not None
                                                    else default_margin(name, totals[name])))
               for name, size in given.items()]
    unknown = [d for d in flags.margins if ":" not in d and not d.startswith("RPC") and d not in given]
    if unknown:
        raise ArgsError(f"--margin {unknown[0]}: no such device to plan for ({', '.join(given)})")
    remote, remote_desc = rpc_budgets(flags, llama_server, warn, shares=any(b.device == "CPU" for b in budgets))
    budgets = remote + budgets
    if not describe:
        return budgets
    import platform

    if probed is None:
        from .probe.devices import probe as run_probe

        probed = run_probe()
    local = budgets[len(remote):]
    infos = [probed.device(b.device) for b in local]
    desc = "; ".join(remote_desc + [f"{b.device} {i.description} {i.total_bytes / 1024**3:.1f}GiB" if i else
                                    f"{b.device} (given {b.free_bytes / 1024**3:.1f}GiB free)"
                                    for b, i in zip(local, infos)])
    driver = next((i.driver for i in infos if i and i.driver), f"{platform.system()} {platform.release()}")
    return budgets, desc, driver


def rpc_budgets(flags: BudgetFlags, llama_server: str | None = None, warn=None,
                shares: bool = False) -> tuple[list[Budget], list[str]]:
    """A budget per device of the --rpc workers, in llama.cpp's numbering (RPC0, RPC1... across the workers in
    order), and each one's description for the profile key (its endpoint, backend and memory total).

    Free memory is the worker's own report (runtimes.llamacpp.build.rpc_workers, through the llama-server binary),
    capped by --free RPC<n>=SIZE or --free HOST:PORT=SIZE (each device of that worker). When every worker is given
    as HOST:PORT=SIZE none is asked: one device each (plan for workers that are not up yet). Default margin: a CPU
    worker's is the CPU's (1 GiB or 5 % of its RAM), a GPU worker's a GPU's (1 GiB, as llama.cpp's own fit).
    `shares`: a CPU worker on loopback is this machine's RAM, counted in the CPU budget too (Budget.shares)."""
    from .memory import CPU, Device

    if not flags.rpc:
        return [], []
    say = warn or (lambda _m: None)
    offline = all(ep in flags.rpc_free for ep, _ in flags.rpc)
    if offline:
        listed = [(f"RPC{k}", ep, None, flags.rpc_free[ep]) for k, (ep, _) in enumerate(flags.rpc)]
    else:
        from .runtimes.llamacpp.build import rpc_workers
        from .runtimes.llamacpp.launch import find_llama_server

        found = rpc_workers(find_llama_server(llama_server or None), [ep for ep, _ in flags.rpc])
        listed = [(d.name, d.description, d.total_bytes, d.free_bytes) for d in found]
    names = [n for n, *_ in listed]
    for flag, given in (("--free", flags.rpc_free), ("--margin", flags.margins)):
        for k in given:
            if k.startswith("RPC") and ":" not in k and k not in names:
                raise ArgsError(f"{flag} {k}: the workers have {', '.join(names)}")
    backend = dict(flags.rpc)
    out, desc, seen = [], [], {}
    for name, ep, total, reported in listed:
        caps = [v for k in (name, ep) if (v := flags.rpc_free.get(k)) is not None]
        free = min(caps) if offline else min([reported, *caps])
        if not offline and caps and min(caps) > reported:
            say(f"--free {name}: more than {ep} reports free ({reported / 1024**3:.2f} GiB): its report is used")
        remote = backend.get(ep)
        on_cpu = remote in (None, CPU)
        total = total or free
        margin = flags.margins.get(name, flags.margins.get(ep, flags.margin))
        if margin is None:
            margin = default_margin(CPU if on_cpu else name, total)
        here = is_loopback(ep)
        if remote is None and not offline and reported < total:
            say(f"{name} ({ep}) reports {reported / 1024**3:.2f} of {total / 1024**3:.2f} GiB free, which a CPU "
                f"worker does not (ggml's CPU backend reports all its RAM free): if it runs a GPU, name its backend "
                f"(--rpc {ep}@cuda) so that its buffers follow that backend's rules")
        elif on_cpu and not here and not caps and not offline:
            say(f"{name} ({ep}) is its machine's CPU: ggml reports all of that machine's RAM free "
                f"({total / 1024**3:.2f} GiB); cap it with --free {ep}=SIZE")
        index = seen.get(ep, 0)
        seen[ep] = index + 1
        dev = Device(name, free, remote=remote, endpoint=ep, remote_index=index)
        out.append(Budget(name, free, margin, dev=dev, shares=CPU if here and on_cpu and shares else ""))
        desc.append(f"{name} RPC worker {ep} {remote or CPU} " + (f"(given {free / 1024**3:.1f}GiB free)" if offline
                                                                  else f"{total / 1024**3:.1f}GiB"))
    return out, desc
