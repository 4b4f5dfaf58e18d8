"""The GGUF fuzzer (tests/fuzz_gguf.py) in `make test`: the saved regression cases replay cleanly, a bounded run finds
nothing, and the worker really catches each kind of failure it is there to catch.

FUZZ_SECONDS (default 45) and FUZZ_SEED (default 1) set the bounded run; `make fuzz FUZZ_SECONDS=600` runs longer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from autoctx.errors import AutoctxError
from tests import fuzz_gguf as fz

REGRESSION_FILES = sorted(fz.REGRESSIONS.glob("*.json"))


@pytest.fixture(scope="module")
def worker():
    fz._prepare_parent()
    w = fz.Worker(fz.Bounds.from_env())
    yield w
    w.close()


def test_regression_files_are_small_and_complete():
    assert len(REGRESSION_FILES) >= 40  # what the first run against the unguarded code found (see the report)
    for path in REGRESSION_FILES:
        assert path.stat().st_size < 256 * 1024, path.name
        d = json.loads(path.read_text())
        assert d["found"] in fz.FAILURES and d["files"], path.name


@pytest.mark.parametrize("path", REGRESSION_FILES, ids=[p.stem for p in REGRESSION_FILES])
def test_regression_case(worker, tmp_path: Path, path: Path):
    """Each case once raised a traceback, blew up memory, ran too long or printed a bad message; now it is read or
    refused in one short line, within the bounds."""
    case = fz.Case.from_json(json.loads(path.read_text()))
    res = worker.run(case.write(tmp_path))
    assert res.kind in ("ok", "refused"), f"{path.name} ({case.family}: {case.note}): {res.kind}\n{res.detail}"


@pytest.mark.slow
def test_bounded_fuzz_run(gemma_path):
    seconds = float(os.environ.get("FUZZ_SECONDS", 45))
    seed = int(os.environ.get("FUZZ_SEED", 1))
    report = fz.fuzz(seconds, seed, gemma_path, out=fz.REGRESSIONS)
    print(report.summary())
    assert not report.failures, report.summary()
    assert report.by_family["seed"] == {"ok": len(report.seeds)}  # every unmutated seed is a valid model
    assert len(report.seeds) == len(fz.SHAPE_SEEDS) + 4 + 1
    if seconds >= 20:  # enough time for every family to come up
        assert set(report.by_family) == set(fz.FAMILIES) | {"seed", "combo"}
        assert report.cases > 500


def test_same_seed_same_cases():
    seeds = {"h": fz.Header(3, [fz.KV(b"general.architecture", fz.STR, fz.enc(fz.STR, "llama")),
                                fz.KV(b"llama.block_count", fz.U32, fz.enc(fz.U32, 4))],
                            [fz.TI(b"token_embd.weight", [8, 4], 0, 0)], 128)}

    def cases(seed):
        rng = fz.random.Random(seed)
        return [[(f.name, f.data, f.size) for f in fz.make_case(rng, seeds).files] for _ in range(200)]

    assert cases(5) == cases(5)
    assert cases(5) != cases(6)


def _raise():
    raise KeyError("boom")


def _spin():
    while True:
        pass


def _block():
    time.sleep(60)


def _hog():
    return bytearray(400 << 20)


def _die():
    os._exit(3)


def _two_lines():
    raise AutoctxError("first\nsecond")


@pytest.mark.parametrize("behaviour,kind,signature", [
    (_raise, "traceback", "traceback KeyError at test_fuzz_gguf.py:"),
    (_spin, "slow", "slow"),
    (_block, "hang", "hang"),
    (_hog, "memory", "memory"),
    (_die, "crash", "crash 3"),
    (_two_lines, "message", "message not one short line"),
])
def test_the_worker_catches(monkeypatch, tmp_path: Path, behaviour, kind, signature):
    """The forked worker runs whatever run_pipeline is at fork time: each misbehaviour is caught, bounded, and the
    worker is replaced so that the next case runs normally."""
    monkeypatch.setattr(fz, "run_pipeline", lambda path: behaviour())
    w = fz.Worker(fz.Bounds(cpu_s=0.3, hang_s=2.0, mem_mb=100))
    try:
        t0 = time.monotonic()
        res = w.run(str(tmp_path / "x.gguf"))
        assert (res.kind, res.signature[: len(signature)]) == (kind, signature), res.detail
        assert time.monotonic() - t0 < 10
        monkeypatch.setattr(fz, "run_pipeline", lambda path: "ok")
        w.restart()
        assert w.run(str(tmp_path / "x.gguf")).kind == "ok"
    finally:
        w.close()
