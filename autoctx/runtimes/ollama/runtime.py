"""Ollama as the loop's runtime (runtimes.base.Runtime): the plan may set num_ctx and num_gpu (Modelfile
parameters of a derived model); the KV type, flash attention and the slots are the server's, fixed. Launching creates
(or re-uses) the derived model and loads it; /api/ps, and the drivers' per-process memory, say what it took."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

from ...memory import CPU
from ...planner import Budget, Plan, PlanOptions
from ..base import Allocation, Launched
from .server import ServerSettings


def modelfile(p: Plan, from_: str | None = None) -> str:
    """The plan as an Ollama Modelfile. The KV type is a server-wide env var in Ollama, not a Modelfile parameter."""
    spec = p.spec
    default = spec.name if spec.source.startswith(("ollama", "shipped")) else spec.path
    lines = [f"FROM {from_ or default}", f"PARAMETER num_ctx {p.num_ctx}"]
    if any(b.device != CPU for b in p.budgets) and p.n_gpu_layers < spec.n_layer + 1:
        lines.append(f"PARAMETER num_gpu {p.n_gpu_layers}")
    if (p.cache_type_k, p.cache_type_v) != ("f16", "f16"):
        lines += ["# KV cache type: Ollama has no Modelfile parameter for it; the server needs",
                  f"#   OLLAMA_KV_CACHE_TYPE={p.cache_type_k} OLLAMA_FLASH_ATTENTION=1 ollama serve"]
        if p.cache_type_k != p.cache_type_v:
            lines.append(f"#   (Ollama uses one type for K and V; this plan assumed K={p.cache_type_k}, "
                         f"V={p.cache_type_v})")
    return "\n".join(lines) + "\n"


class Ollama:
    """The Ollama server `srv` (its settings as read from it), the model `name` as the user gave it, and the derived
    model `target` that carries the plan. `per_gpu`: read the drivers' per-process memory of the model's runner."""

    label = "Ollama"

    def __init__(self, srv: ServerSettings, name: str, target: str = "", *, timeout: float = 600.0,
                 devices_desc: str = "", driver: str = "", per_gpu: bool = True,
                 say: Callable[[str], None] = print):
        self.srv, self.name, self.target, self.timeout = srv, name, target, timeout
        self.devices_desc, self.driver, self.per_gpu, self.say = devices_desc, driver, per_gpu, say

    @classmethod
    def connect(cls, name: str, say: Callable[[str], None], timeout: float | None = None, **kw) -> "Ollama":
        """The server's real settings (OLLAMA_HOST), its notes said; a bad NAME is refused before anything is asked."""
        from .server import ollama_host, server_settings
        from .store import parse_name

        parse_name(name)  # a bad name (a path, `..`) is refused before anything is opened or asked
        srv = server_settings(ollama_host(), timeout=min(10.0, timeout or 10.0))
        for n in srv.notes:
            say(n)
        return cls(srv, name, say=say, timeout=timeout or 600.0, **kw)

    def resolve(self, model: str):
        from ...resolve import resolve_ollama

        return resolve_ollama(model)

    def knobs(self, spec, opts: PlanOptions) -> PlanOptions:
        srv = self.srv
        kv = srv.kv_cache_type
        opts = replace(opts, runtime="ollama", max_ctx=opts.max_ctx or srv.context_length or None, kv_forced=(kv, kv),
                       n_parallel=srv.num_parallel, flash_attn="on" if kv != "f16" else srv.flash_attention)
        from .projector import with_ollama_projector

        return with_ollama_projector(opts, self.name, spec)  # Ollama loads it with --mmproj: counted on its GPU

    def render(self, p: Plan) -> str:
        return modelfile(p)

    def profile_key(self, spec):
        from .run import profile_key

        return profile_key(spec, self.devices_desc, self.driver, self.srv.version)

    def advise(self, p: Plan, budgets: list[Budget], opts: PlanOptions) -> list[str]:
        """A quantized KV cache, when the server's f16 gives a quarter less context than q8_0 would."""
        from ...planner import plan
        from .server import enable_kv_instructions

        if self.srv.kv_cache_type != "f16":
            return []
        alt = plan(p.spec, budgets, replace(opts, kv_forced=("q8_0", "q8_0"), flash_attn="on"))
        if alt.num_ctx < 1.25 * p.num_ctx:
            return []
        return [f"with a q8_0 KV cache the server could give {alt.num_ctx} tokens instead of {p.num_ctx}; the KV "
                f"type is server-wide, enable it with:\n  {enable_kv_instructions('q8_0')}"]

    def launch(self, p: Plan) -> Launched:
        """Create (or re-use) the derived model with the plan's parameters, and load it."""
        from .client import OllamaAPI
        from .run import ensure_derived, load_and_verify, plan_parameters

        api = OllamaAPI(self.srv.url, self.timeout)
        action = ensure_derived(api, p.spec.name, self.target, p)
        params = " ".join(f"{k}={v}" for k, v in plan_parameters(p).items())
        self.say(f"{action} {self.target} ({params}, KV {self.srv.kv_cache_type})")
        return Launched(load_and_verify(api, self.target, p))

    def read_back(self, launched: Launched, p: Plan, budgets: list[Budget]) -> Allocation:
        """/api/ps against the plan (a CPU spill, another context: said loudly), and what the model's runner holds on
        each GPU (the drivers' per-process memory) for the profile."""
        from .run import loaded_memory, runner_memory

        check = launched.handle
        for w in check.warnings:
            self.say(f"WARNING: {w}")
        per_gpu = None
        if p.n_gpu_layers and self.per_gpu:
            blob = os.path.basename(p.spec.path)
            rm = runner_memory(blob if blob.startswith("sha256-") else None)
            for line in rm.lines:
                self.say(f"driver: {line}")
            for n in rm.notes:
                self.say(n)
            per_gpu = rm.per_gpu
        predicted, measured, notes = loaded_memory(p.spec, p, check, per_gpu)
        for n in notes:
            self.say(n)
        return Allocation(predicted=predicted, measured=measured, record={**p.as_dict(), "runtime": "ollama"})

    def stop(self, launched: Launched) -> None:
        """A loaded model is the server's to unload (keep_alive): nothing to stop here."""
