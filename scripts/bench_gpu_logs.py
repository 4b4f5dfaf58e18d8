#!/usr/bin/env python3
"""Print the GPU-log table: each public GPU log of tests/data/gpu_logs/ re-estimated by autoctx, predicted vs printed.

Usage: .venv/bin/python scripts/bench_gpu_logs.py [--json PATH]
No GPU and no llama-server needed: the logs are data (tests/gpu_logs.py rebuilds each model and its settings).
KV/RS/output are judged exact (0.01 MiB); compute within 10 % on builds after llama.cpp PR #23861, recorded before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gpu_logs import checks_for, load_gpu_logs  # noqa: E402


def mark(c) -> str:
    if c.xfail:
        return " (xfail)"
    if c.judged == "recorded":
        return ""
    return "" if c.ok else " ✗"


def table() -> tuple[list[str], list[dict]]:
    lines = ["| log | backend | build | kind | device | predicted MiB | printed MiB | diff | judged |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for g in load_gpu_logs():
        build = f"b{g.build}" if g.build else g.meta.get("date", "?")
        for c in checks_for(g):
            pct = "" if c.pct is None else f" ({c.pct:+.1f}%)"
            url = g.header["source"].split()[0]
            lines.append(f"| [{g.name}]({url}) | {g.backend} | {build} | {c.what} | {c.device} "
                         f"| {c.predicted_mib:,.2f} | {c.printed_mib:,.2f} | {c.diff_mib:+,.2f}{pct} "
                         f"| {c.judged}{mark(c)} |")
            rows.append({**c.as_dict(), "backend": g.backend, "build": g.build, "source": g.header["source"]})
    return lines, rows


def summary(rows: list[dict]) -> str:
    exact = [r for r in rows if r["judged"] == "exact"]
    judged = [r for r in rows if r["judged"] == "10%"]
    rec = [r for r in rows if r["judged"] == "recorded"]
    return (f"{sum(r['ok'] for r in exact)} of {len(exact)} KV/RS/output values exact "
            f"({sum(1 for r in exact if not r['ok'] and r['xfail'])} named xfails); "
            f"{sum(r['ok'] for r in judged)} of {len(judged)} compute values within 10 % on builds after PR #23861; "
            f"{len(rec)} compute values of older builds recorded.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the rows as JSON to this path")
    a = ap.parse_args()
    lines, rows = table()
    print("\n".join(lines))
    print("\n" + summary(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    unexpected = [r for r in rows if r["judged"] != "recorded" and not r["ok"] and not r["xfail"]]
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
