"""Compare a prediction (memory.Estimate) with what llama-server reported (logparse.ServerLog)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .memory import Estimate

if TYPE_CHECKING:  # read by its fields: verify stays below the runtimes
    from .runtimes.llamacpp.logparse import ServerLog

MiB = 1024 * 1024
KINDS = ("model", "kv", "compute", "output")
# Tolerances: llama.cpp prints MiB with 2 decimals, so exact buffers must agree to 0.01 MiB; the compute buffer is
# a closed form (see memory.compute_bytes) and is held to 10 %.
TOLERANCE_PCT = {"model": 0.0, "kv": 0.0, "output": 0.0, "compute": 10.0}
# A llama-server of another build than the one autoctx mirrors (runtimes.llamacpp.build): its layouts and graph may
# have moved a little; a miss within these is said as a note by the caller, and the profile learns the difference.
OTHER_BUILD_TOLERANCE_PCT = {"model": 1.0, "kv": 1.0, "output": 1.0, "compute": 25.0}


@dataclass(frozen=True)
class Row:
    device: str
    kind: str
    predicted_mib: float
    actual_mib: float | None  # None: the server printed no such buffer
    n_printed: int = 1  # how many printed (rounded) buffer lines the actual sums
    other_build: bool = False  # the server is not the build autoctx mirrors: wider tolerances

    @property
    def diff_mib(self) -> float | None:
        return None if self.actual_mib is None else round(self.predicted_mib - self.actual_mib, 2)

    @property
    def pct(self) -> float | None:
        if self.actual_mib is None or self.actual_mib == 0:
            return None
        return 100.0 * (self.predicted_mib - self.actual_mib) / self.actual_mib

    @property
    def ok(self) -> bool:
        if self.actual_mib is None:
            return self.predicted_mib == 0
        tol = (OTHER_BUILD_TOLERANCE_PCT if self.other_build else TOLERANCE_PCT)[self.kind]
        if tol == 0.0:  # each printed line is rounded to 0.01 MiB
            return abs(self.predicted_mib - self.actual_mib) <= 0.005 * (self.n_printed + 1) + 1e-9
        return abs(self.predicted_mib - self.actual_mib) <= max(0.011, tol / 100 * self.actual_mib)

    def as_dict(self) -> dict:
        return {"device": self.device, "kind": self.kind, "predicted_mib": self.predicted_mib,
                "actual_mib": self.actual_mib, "diff_mib": self.diff_mib,
                "pct": None if self.pct is None else round(self.pct, 2), "ok": self.ok}


def compare(est: Estimate, log: ServerLog, other_build: bool = False) -> list[Row]:
    """One row per (device, kind) seen in either the prediction or the log."""
    devices = list(dict.fromkeys([b.device for b in est.buffers] + log.devices()))
    rows = []
    for d in devices:
        for k in KINDS:
            pred = round(est.kind_bytes(k, d) / MiB, 2)
            printed = sum(1 for b in log.buffers if b.device == d and b.kind == k)
            if pred == 0 and not printed:
                continue
            rows.append(Row(d, k, pred, log.mib(k, d) if printed else None, max(printed, 1), other_build))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'device':<8}{'kind':<9}{'predicted':>12}{'actual':>12}{'diff':>10}{'%':>8}  (MiB)"]
    for r in rows:
        act = "-" if r.actual_mib is None else f"{r.actual_mib:,.2f}"
        diff = "-" if r.diff_mib is None else f"{r.diff_mib:+,.2f}"
        pct = "-" if r.pct is None else f"{r.pct:+.1f}"
        flag = "" if r.ok else "  MISS"
        lines.append(f"{r.device:<8}{r.kind:<9}{r.predicted_mib:>12,.2f}{act:>12}{diff:>10}{pct:>8}{flag}")
    return "\n".join(lines)
