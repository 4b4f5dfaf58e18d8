"""Memory budgets per device, from what the user said (--free, --device, --margin) or from the probe."""

from __future__ import annotations

from .errors import ArgsError
from .planner import Budget, default_margin
from .units import device_name, parse_size


def budgets_from(free: list[str], device: str, margin: str, describe: bool = False, warn=None, listed=None):
    """Budgets per device from --free DEVICE=SIZE, --device cpu and --margin, else from the probe.

    `listed`: the devices the llama-server binary lists (runtimes.llamacpp.build), whose names and order the probed
    GPUs take (a Vulkan build's Vulkan0, CUDA's fastest-first order). With `describe`, also the devices'
    description and driver (the profile key's machine part)."""

    fixed_margin = parse_size(margin) if margin else None
    given: dict[str, int] = {}
    for item in free:
        name, eq, size = item.partition("=")
        if not eq:
            raise ArgsError(f"--free expects DEVICE=SIZE, got {item!r}")
        given[device_name(name)] = parse_size(size)
    if device and device_name(device) != "CPU":
        raise ArgsError("--device accepts only cpu (GPUs come from the probe or --free)")
    cpu_only = bool(device)
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
    budgets = [Budget(name, size, fixed_margin if fixed_margin is not None else default_margin(name, totals[name]))
               for name, size in given.items()]
    if not describe:
        return budgets
    import platform

    if probed is None:
        from .probe.devices import probe as run_probe

        probed = run_probe()
    infos = [probed.device(b.device) for b in budgets]
    desc = "; ".join(f"{b.device} {i.description} {i.total_bytes / 1024**3:.1f}GiB" if i else f"{b.device} "
                     f"(given {b.free_bytes / 1024**3:.1f}GiB free)" for b, i in zip(budgets, infos))
    driver = next((i.driver for i in infos if i and i.driver), f"{platform.system()} {platform.release()}")
    return budgets, desc, driver
