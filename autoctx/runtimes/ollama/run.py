"""The steps of `autoctx run` that the Ollama runtime (runtime.py) is made of: create the derived model, load it,
compare /api/ps with the plan, read the runner's memory for the profile; pull and evict before planning.

The derived model (`<model>-autoctx`, or --name) holds `num_ctx` (and `num_gpu` when partial) as Modelfile
parameters, created with the real `ollama` Python client (`Client.create(from_=..., parameters=...)`). Its license
has a line that is exactly `autoctx-derived-model: <its name>`: a model without that exact line was not made by
autoctx (whatever else its license says) and is never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import AutoctxError
from ...planner import Plan
from .client import OllamaAPI
from .server import OllamaServerError

MARK = "autoctx-derived-model:"  # + the model's own name: a license line of exactly this text marks autoctx's models


def marker(name: str) -> str:
    return f"{MARK} {name}"


def made_by_autoctx(license_text: str | None, name: str) -> bool:
    """True only when one line of the license is exactly the marker for this name: a license that quotes autoctx,
    or carries another model's marker, is a user's model."""
    return marker(name) in (license_text or "").split("\n")


def derived_name(base: str) -> str:
    return f"{base}-autoctx" if ":" in base else f"{base}:latest-autoctx"


def plan_parameters(p: Plan) -> dict[str, int]:
    params = {"num_ctx": p.num_ctx}
    if p.n_gpu_layers and p.n_gpu_layers < p.spec.n_layer + 1:
        params["num_gpu"] = p.n_gpu_layers
    return params


def existing_parameters(api: OllamaAPI, name: str) -> tuple[bool, bool, dict[str, str]]:
    """(exists, made by autoctx, parameters) of a model on the server."""
    info = api.show(name)
    if info is None:
        return False, False, {}
    params = {}
    for line in (info.parameters or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            params[key] = value.strip().strip('"')
    return True, made_by_autoctx(info.license, name), params


def ensure_derived(api: OllamaAPI, base: str, name: str, p: Plan) -> str:
    """Create (or re-use) the derived model. Returns 'created', 'updated' or 'reused'."""
    wanted = plan_parameters(p)
    exists, ours, params = existing_parameters(api, name)
    if exists and not ours:
        raise AutoctxError(f"a model named {name} already exists and was not created by autoctx; "
                           f"pick another name with --name")
    if exists and all(params.get(k) == str(v) for k, v in wanted.items()) and \
            all(k in wanted for k in params if k in ("num_ctx", "num_gpu")):
        return "reused"
    about = (f"Made by autoctx from {base}: num_ctx {p.num_ctx}, KV {p.cache_type_k} (server-wide), "
             f"{p.n_gpu_layers} GPU layers. autoctx replaces it when it plans again; delete with `ollama rm {name}`.")
    api.create(name, base, wanted, [marker(name), about])
    return "updated" if exists else "created"


@dataclass
class LoadCheck:
    size: int
    size_vram: int
    context_length: int | None
    warnings: list[str] = field(default_factory=list)


def load_and_verify(api: OllamaAPI, name: str, p: Plan, keep_alive: str = "10m") -> LoadCheck:
    """Load the model (an empty generate), then compare /api/ps with the plan."""
    api.load(name, keep_alive)
    entry = next((m for m in api.ps() if m.name == name), None)
    if entry is None:
        raise OllamaServerError(f"{name} does not appear in /api/ps after loading")
    check = LoadCheck(entry.size, entry.size_vram, entry.context_length)
    gpus = [b for b in p.budgets if b.device != "CPU"]
    if gpus and check.size_vram < check.size:
        spill = check.size - check.size_vram
        check.warnings.append(f"CPU SPILL: {spill / 2**30:.2f} GiB of {name} is in system RAM, not on the GPU "
                              f"({100 * check.size_vram / max(check.size, 1):.0f}% GPU): generation will be slow")
    if check.context_length is not None and check.context_length != p.num_ctx:
        check.warnings.append(f"the server loaded {check.context_length} tokens of context, the plan said "
                              f"{p.num_ctx}")
    return check


def pull(api: OllamaAPI, name: str, out) -> None:
    """`ollama pull` through the client, with a one-line progress bar on `out` (stderr)."""
    last = ""
    try:
        for ev in api.pull(name):
            status = ev.status or ""
            if ev.total:
                frac = min(1.0, max(0.0, (ev.completed or 0) / ev.total))
                bar = "#" * int(frac * 30)
                line = f"\rpulling {name}: {status[:30]:<30} [{bar:<30}] {100 * frac:5.1f}%"
            else:
                line = f"\rpulling {name}: {status[:70]:<70}"
            if line != last:
                out.write(line)
                out.flush()
                last = line
    finally:
        if last:
            out.write("\n")  # the error line, if any, starts on its own line


def unload_others(api: OllamaAPI, keep: str) -> list[tuple[str, int]]:
    """Unload every loaded model but `keep` (keep_alive 0); returns (name, size_vram) of those unloaded."""
    gone = []
    for m in api.ps():
        if m.name == keep:
            continue
        api.load(m.name, keep_alive=0)
        gone.append((m.name, m.size_vram))
    return gone


def profile_key(spec, devices_desc: str, driver: str, version: str | None):
    """Profiles of Ollama runs: keyed by the model blob's digest (its file name in the store)."""
    import os

    from ...profiles import ProfileKey

    digest = os.path.basename(spec.path).removeprefix("sha256-")
    return ProfileKey(digest, devices_desc, driver, f"ollama {version or 'unknown'}")


def loaded_memory(spec, p: Plan, check: LoadCheck, per_gpu: dict[str, int] | None = None
                  ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], list[str]]:
    """(predicted, measured, notes) per device for the profile, both in Ollama's terms.

    Measured: the CPU holds what /api/ps says is not in VRAM (size - size_vram). Each GPU holds what the driver says
    the runner process holds on it (`per_gpu`, from NVML/amdsmi per-process memory); without that, a single GPU holds
    all of size_vram, and on several GPUs the split is unknown, so no GPU is learned (never all of it on the first).
    Predicted: what /api/ps would say if llama-server allocated the plan's buffers (the same accounting rule, see
    memory.py), so that a correction is a real misprediction, not a difference in counting."""
    import os

    from .memory import predicted_ps_sizes

    notes: list[str] = []
    gpus = [b.device for b in p.budgets if b.device != "CPU"]
    measured = {"CPU": {"total": max(0, check.size - check.size_vram)}}
    if per_gpu:
        for d in dict.fromkeys([*gpus, *per_gpu]):
            measured[d] = {"total": per_gpu.get(d, 0)}
    elif len(gpus) == 1:
        measured[gpus[0]] = {"total": check.size_vram}
    elif gpus:
        notes.append(f"{len(gpus)} GPUs and no per-process memory from the driver: how the "
                     f"{check.size_vram / 2**30:.2f} GiB in VRAM is split is unknown, so no GPU is learned")
    file_size = os.path.getsize(spec.path) if os.path.isfile(spec.path) else None
    pred = predicted_ps_sizes(p.estimate, file_size)
    predicted = {d: {"total": pred.size - pred.size_vram if d == "CPU" else pred.vram_by_device.get(d, 0)}
                 for d in measured}
    return predicted, measured, notes


@dataclass
class RunnerMemory:
    per_gpu: dict[str, int]  # device → bytes the model's runner process holds there (empty: unknown)
    lines: list[str]  # one per runner-like process on a GPU, as the driver reports it
    notes: list[str] = field(default_factory=list)


def _cmdline(pid: int) -> list[str] | None:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except Exception:  # gone, or another user's (AccessDenied)
        return None


def runner_memory(blob: str | None, probe_fn=None, cmdline=_cmdline) -> RunnerMemory:
    """What NVML/amdsmi say the model's runner process holds on each GPU.

    Runner-like processes (names with `ollama` or `llama`) are narrowed to the one whose command line names the model
    blob (`sha256-<hex>`: Ollama ≥ 0.30 runs `llama-server --model <store>/blobs/sha256-<hex>`), so another model's
    runner, or a llama-server of the user's own, is not counted. When no command line can be read, the processes are
    used only if there is exactly one."""
    from ...probe.devices import probe

    found = [(d.name, pr) for d in (probe_fn or probe)().gpus for pr in d.processes
             if ("ollama" in pr.name or "llama" in pr.name) and pr.used_bytes is not None]
    pids = {pr.pid for _, pr in found}
    notes = []
    if blob and pids:
        named = {pid for pid in pids if any(a == blob or a.endswith(f"/{blob}") for a in (cmdline(pid) or []))}
        if named:
            pids = named
        elif len(pids) > 1:
            notes.append(f"{len(pids)} runner processes on the GPUs and none names {blob}: GPU memory not attributed")
            pids = set()
    per_gpu: dict[str, int] = {}
    lines = []
    for dev, pr in found:
        mine = pr.pid in pids
        lines.append(f"{dev}: {pr.name} (pid {pr.pid}) holds {pr.used_bytes / 2**30:.2f} GiB"
                     + ("" if mine or not pids else " (not this model's runner)"))
        if mine:
            per_gpu[dev] = per_gpu.get(dev, 0) + pr.used_bytes
    return RunnerMemory(per_gpu, lines, notes)
