"""The `autoctx` command line: a thin layer over the library. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from .errors import AutoctxError

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Largest safe context for local LLMs on llama.cpp and Ollama, predicted exactly from the GGUF header.",
)

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--help"]}


@app.callback()
def _root() -> None:
    """autoctx: plan, estimate and verify llama.cpp / Ollama memory use."""


def _warn(msg: str) -> None:
    print(f"autoctx: warning: {msg}", file=sys.stderr)


def _mib(n: int) -> str:
    return f"{n / 1048576:,.2f}"


def _estimate(model: str, server_args: Optional[List[str]], devices: str = ""):
    """Parse llama-server arguments, read the model, predict. Returns (Estimate, ParsedArgs)."""
    from .memory import Device, estimate as run_estimate
    from .model import load_spec
    from .runtimes.llamacpp.args import parse_server_args, with_devices

    parsed = parse_server_args(list(server_args or []))
    if parsed.ignored:
        _warn("not modelled (passed through as they are): " + " ".join(dict.fromkeys(parsed.ignored)))
    params = parsed.params
    if devices:
        params = with_devices(params, [Device(d.strip()) for d in devices.split(",") if d.strip()])
    est = run_estimate(load_spec(parsed.model or model), params)
    for note in est.notes:
        _warn(note)
    return est, parsed


@app.command(context_settings=PASSTHROUGH)
def estimate(
    model: str = typer.Argument(..., help="GGUF file (first part of a split model is enough)"),
    server_args: Optional[List[str]] = typer.Argument(None, help="llama-server arguments (memory-relevant subset)"),
    as_json: bool = typer.Option(False, "--json", help="print the estimate as JSON"),
    devices: str = typer.Option("", "--devices", help="GPU devices llama.cpp would use, e.g. CUDA0,CUDA1 "
                                "(default: none, a CPU build)"),
) -> None:
    """What llama-server would allocate for MODEL with these arguments, per device and kind."""
    est, _ = _estimate(model, server_args, devices)
    if as_json:
        print(json.dumps(estimate_json(est), indent=2))
        return
    print_estimate_table(est)


@app.command(context_settings=PASSTHROUGH)
def check(
    model: str = typer.Argument(..., help="GGUF file"),
    server_args: Optional[List[str]] = typer.Argument(None, help="llama-server arguments"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
    llama_server: str = typer.Option("", "--llama-server", help="llama-server binary (default: "
                                     "$AUTOCTX_LLAMA_SERVER, then PATH)"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds to wait for the server to load"),
) -> None:
    """Start llama-server with these arguments until it has allocated, stop it, and print predicted vs actual.

    Exit status: 0 when every buffer is within tolerance (exact for model/KV/output, 10 % for compute),
    4 when a prediction missed, 1 when the server failed to load.
    """
    from .runtimes.llamacpp.server import ServerError, find_llama_server, last_lines, measure_allocation
    from .verify import compare, format_rows

    argv = list(server_args or [])
    est, parsed = _estimate(model, argv)
    binary = find_llama_server(llama_server or None)
    run_argv = argv if parsed.model else ["-m", model, *argv]
    m = measure_allocation(binary, run_argv, timeout=timeout)
    if not m.ready:
        raise ServerError(f"llama-server exited with status {m.returncode} before it was ready; last lines:\n"
                          + last_lines(m.log_text))
    rows = compare(est, m.log)
    if as_json:
        print(json.dumps({**estimate_json(est), "argv": m.argv, "comparison": [r.as_dict() for r in rows]},
                         indent=2))
    else:
        print_estimate_table(est)
        print()
        print(f"llama-server ({' '.join(m.argv[1:])}) reported:")
        print(format_rows(rows))
    if not all(r.ok for r in rows):
        sys.exit(4)


def estimate_json(est) -> dict:
    p = est.params
    args = p.as_dict()
    args.update({"n_ctx": est.n_ctx, "n_ctx_seq": est.n_ctx_seq, "n_batch": est.n_batch, "n_ubatch": est.n_ubatch,
                 "n_outputs_max": est.n_outputs_max, "flash_attn_resolved": est.flash_attn,
                 "kv_cells": est.kv_cells, "swa_cells": est.swa_cells, "n_gpu_layers_resolved": est.n_gpu_layers,
                 "requested_n_ctx": p.n_ctx})
    return {
        "model": est.spec.summary(),
        "args": args,
        "buffers": [b.as_dict() for b in est.buffers],
        "total_bytes": est.total_bytes,
        "notes": est.notes,
    }


def print_estimate_table(est) -> None:
    spec = est.spec
    print(f"{spec.path}")
    print(f"  {spec.architecture}, {spec.n_layer} layers, n_ctx_train {spec.n_ctx_train}, "
          f"ctx {est.n_ctx} ({est.n_ctx_seq}/seq x {est.params.n_parallel} slots"
          f"{', unified' if est.params.kv_unified else ''}), KV {est.params.cache_type_k}/{est.params.cache_type_v}, "
          f"flash-attn {'on' if est.flash_attn else 'off'}" + (f", SWA cache {est.swa_cells} cells" if est.swa_cells
                                                                 else ""))
    kinds = ["model", "kv", "compute", "output"]
    devices = list(dict.fromkeys(b.device for b in est.buffers))
    head = f"{'device':<10}" + "".join(f"{k:>12}" for k in kinds) + f"{'total':>12}"
    print(head + "   (MiB)")
    for d in devices:
        row = [est.kind_bytes(k, d) for k in kinds]
        print(f"{d:<10}" + "".join(f"{_mib(v):>12}" for v in row) + f"{_mib(sum(row)):>12}")
    print(f"{'total':<10}" + "".join(f"{_mib(est.kind_bytes(k)):>12}" for k in kinds) + f"{_mib(est.total_bytes):>12}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except AutoctxError as e:
        print(f"autoctx: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (ValueError, OSError) as e:  # GGUFError is a ValueError
        print(f"autoctx: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            print(f"autoctx: error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
