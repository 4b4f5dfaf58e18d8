"""Memory budgets per device, from what the user said (--free, --device, --margin) or from the probe."""

from __future__ import annotations

from .errors import ArgsError
from .planner import Budget, default_margin
from .units import device_name, parse_size


def budget_args(free: list[str], device: str, margin: str) -> tuple[dict[str, int], bool, int | None]:
    """--free DEVICE=SIZE (each device once), --device cpu and --margin SIZE, checked before anything is probed or
    asked: (free bytes per device, cpu only, the margin or None for the default). Errors name the flag."""
    def size(flag: str, text: str) -> int:
        try:
            return parse_size(text)
        except ArgsError as e:
            raise ArgsError(f"{flag}: {e}") from None

    fixed_margin = size("--margin", margin) if margin else None
    given: dict[str, int] = {}
    for item in free:
        name, eq, text = item.partition("=")
        if not eq:
            raise ArgsError(f"--free expects DEVICE=SIZE, got {item!r}")
        if "," in item:
            raise ArgsError(f"--free takes one DEVICE=SIZE, got {item!r}: repeat --free for each device")
        try:
            dev = device_name(name)
        except ArgsError as e:
            raise ArgsError(f"--free: {e}") from None
        if dev in given:
            raise ArgsError(f"--free names {dev} twice (one --free DEVICE=SIZE per device)")
        given[dev] = size("--free", text)
    if device and device.strip().lower() != "cpu":
        raise ArgsError(f"--device accepts only cpu, got {device!r} (GPUs come from the probe or --free)")
    return given, bool(device), fixed_margin


def budgets_from(free: list[str], device: str, margin: str, describe: bool = False, warn=None, listed=None):
    """Budgets per device from --free DEVICE=SIZE, --device cpu and --margin, else from the probe.

    `listed`: the devices the llama-server binary lists (runtimes.llamacpp.build), whose names and order the probed
    GPUs take (a Vulkan build's Vulkan0, CUDA's fastest-first order). With `describe`, also the devices'
    description and driver (the profile key's machine part)."""

    given, cpu_only, fixed_margin = budget_args(free, device, margin)
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
