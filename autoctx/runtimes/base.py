"""What a runtime gives the closed loop (autoctx/loop.py): one interface, two runtimes (llama.cpp, Ollama).

The loop plans (the pure planner), asks the runtime to fix its knobs, render the plan into what the runtime takes,
launch it, read back what was allocated and compare it with the prediction; it steps down when the load ran out of
memory (or the margin was eaten), and records the measurement in the profile under the runtime's key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from ..model import ModelSpec
    from ..planner import Budget, Plan, PlanOptions
    from ..profiles import ProfileKey


@dataclass
class Launched:
    """One launch: the runtime's handle on what it started, and the out-of-memory line when the load failed for
    memory (then nothing was allocated to read back)."""

    handle: Any
    oom: str | None = None


@dataclass
class Allocation:
    """What a loaded runtime allocated, read back and compared with the plan's prediction."""

    rows: list = field(default_factory=list)  # verify.Row per device and kind (llama.cpp's log); [] for Ollama
    flags: list[str] = field(default_factory=list)  # misses: the result is not ok
    eaten: list[str] = field(default_factory=list)  # devices whose free memory fell below the margin once loaded
    notes: list[str] = field(default_factory=list)  # what the drivers said of this load: reported, not carried on
    predicted: dict[str, dict[str, int]] = field(default_factory=dict)  # per device and kind, for the profile
    measured: dict[str, dict[str, int]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # what the profile stores of the plan
    after: Any = None  # the drivers' reading after the load (llama.cpp: serve.AfterLoad)


class Runtime(Protocol):
    """A runtime the loop can drive. `label` names it in messages ("llama-server", "Ollama")."""

    label: str

    def resolve(self, model: str) -> ModelSpec:
        """The model MODEL names, read for planning."""

    def knobs(self, spec: ModelSpec, opts: PlanOptions) -> PlanOptions:
        """The options this runtime lets the plan choose, the rest fixed to what the runtime (or its user) set:
        Ollama: num_ctx and num_gpu, its server-wide KV type and slots fixed; llama.cpp: everything, the user's own
        arguments fixed."""

    def render(self, p: Plan) -> Any:
        """What the runtime is given: llama-server's argv, or a Modelfile."""

    def profile_key(self, spec: ModelSpec) -> ProfileKey:
        """The key of this model's profile on this machine and runtime build."""

    def advise(self, p: Plan, budgets: list[Budget], opts: PlanOptions) -> list[str]:
        """Lines for the user about the first plan (e.g. a server setting that would give more context)."""

    def launch(self, p: Plan) -> Launched:
        """Start the runtime on the plan and wait until it has allocated (or failed for memory); other failures
        raise AutoctxError with one line."""

    def read_back(self, launched: Launched, p: Plan, budgets: list[Budget]) -> Allocation:
        """What was allocated, compared with the plan."""

    def stop(self, launched: Launched) -> None:
        """Undo a launch that is not kept (a failed or stepped-down attempt, an error)."""


Say = Callable[[str], None]
