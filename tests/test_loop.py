"""The closed loop (autoctx/loop.py) over a runtime that is only the interface (runtimes.base.Runtime): the first
plan, the out-of-memory step-down, the eaten margin, giving up in one line, the record. No server: the runtime is a
stand-in that says what it was told to."""

from __future__ import annotations

import pytest

from autoctx.errors import AutoctxError
from autoctx.loop import closed_loop, plan_once
from autoctx.planner import Budget, PlanOptions
from autoctx.probe.cpu import host_repack_rules
from autoctx.profiles import ProfileKey, ProfileStore
from autoctx.runtimes.base import Allocation, Launched

GiB = 1024**3


class Scripted:
    """A runtime whose launches go as `outcomes` says: "oom", "eaten" or "ok" (then "ok" for ever)."""

    label = "scripted"

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.launched: list[int] = []
        self.stopped: list[int] = []

    def resolve(self, model):
        from autoctx.model import load_spec

        return load_spec(model)

    def knobs(self, spec, opts):
        return opts

    def render(self, p):
        return ["-c", str(p.num_ctx)]

    def profile_key(self, spec):
        return ProfileKey("d" * 64, "CPU test", "test", "scripted 1")

    def advise(self, p, budgets, opts):
        return [f"advice on {p.num_ctx}"]

    def launch(self, p):
        self.launched.append(p.num_ctx)
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        return Launched(outcome, oom="failed to allocate buffer" if outcome == "oom" else None)

    def read_back(self, launched, p, budgets):
        kv = p.estimate.kind_bytes("kv")
        return Allocation(eaten=["CPU: 0 MiB free after loading"] if launched.handle == "eaten" else [],
                          predicted={"CPU": {"kv": kv}}, measured={"CPU": {"kv": kv}}, record=p.as_dict())

    def stop(self, launched):
        self.stopped.append(len(self.launched))


def _first(rt, gemma_path, store=None, said=None):
    spec = rt.resolve(gemma_path)
    opts = PlanOptions(min_ctx=4096, cpu_repack=host_repack_rules())
    return plan_once(rt, spec, [Budget("CPU", 16 * GiB, GiB)], opts, store, (said if said is not None else []).append)


def test_out_of_memory_and_an_eaten_margin_step_down_then_the_load_is_recorded(gemma_path, tmp_path):
    rt, said = Scripted(["oom", "eaten"]), []
    store = ProfileStore(tmp_path / "profiles")
    first = _first(rt, gemma_path, store, said)
    res = closed_loop(rt, first, store, 3, said.append)
    assert rt.launched == [32768, 24576, 18432]  # ¾ of the context each time
    assert rt.stopped == [1, 2]  # the failed and the eaten launch were stopped, the kept one is the caller's
    assert said[0] == "advice on 32768"
    assert said[1].startswith("attempt 1: scripted ran out of memory loading num_ctx 32768 KV f16/f16 (failed")
    assert said[2] == "attempt 2: margin eaten (CPU: 0 MiB free after loading); stepping down"
    assert res.attempts[-1] == "attempt 3: loaded num_ctx 18432 KV f16/f16" and res.ok
    assert res.argv == ["-c", "18432"] and res.server == "ok"
    assert res.profile is not None and res.profile.runs == 1 and res.profile_path.startswith(str(tmp_path))


def test_the_last_try_keeps_an_eaten_margin_as_a_flag(gemma_path):
    rt = Scripted(["eaten"])
    res = closed_loop(rt, _first(rt, gemma_path), None, 1, lambda m: None)
    assert res.flags == ["CPU: 0 MiB free after loading"] and not res.ok and res.profile_path is None


def test_out_of_memory_every_time_is_one_line(gemma_path):
    rt = Scripted(["oom", "oom"])
    with pytest.raises(AutoctxError) as e:
        closed_loop(rt, _first(rt, gemma_path), None, 2, lambda m: None)
    assert str(e.value).startswith("scripted still ran out of memory after 2 attempts: attempt 1: scripted ran out")
    assert "\n" not in str(e.value) and rt.stopped == [1, 2]


def test_an_error_while_reading_back_stops_the_launch(gemma_path):
    rt = Scripted([])

    def broken(*_):
        raise AutoctxError("cannot read")

    rt.read_back = broken
    with pytest.raises(AutoctxError, match="cannot read"):
        closed_loop(rt, _first(rt, gemma_path), None, 3, lambda m: None)
    assert rt.stopped == [1]
