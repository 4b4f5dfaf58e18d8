"""The `autoctx` command line: option declarations and calls into autoctx.commands, nothing else. Heavy imports
happen inside the commands; shared options are declared once (the Annotated aliases below)."""

from __future__ import annotations

import signal
import sys
from typing import Annotated, List, Optional

import typer

from .errors import AutoctxError, Terminated

app = typer.Typer(
    add_completion=True,  # autoctx --install-completion [bash|zsh|fish|powershell]
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Largest safe context for local LLMs on llama.cpp and Ollama, predicted exactly from the GGUF header.",
)

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--help"]}
RUN_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True, "help_option_names": ["--help"]}

# --- options shared by the commands that plan --------------------------------------------------------------------
Free = Annotated[Optional[List[str]], typer.Option(
    "--free", help="DEVICE=SIZE, e.g. cuda0=24GiB or cpu=16GiB (repeatable); replaces the probe; an RPC device "
    "(rpc0=8GiB or HOST:PORT=8GiB) caps what its worker reports")]
Device = Annotated[str, typer.Option("--device", help="cpu: plan for system RAM only")]
Margin = Annotated[Optional[List[str]], typer.Option(
    "--margin", help="SIZE to leave free on every device, or DEVICE=SIZE for one (cuda0, cpu, rpc0, HOST:PORT; "
    "repeatable); default: 1 GiB per GPU; 1 GiB or 5 % of RAM (a CPU RPC worker's too)")]
Rpc = Annotated[str, typer.Option(
    "--rpc", help="HOST:PORT[,HOST:PORT...]: llama.cpp RPC workers (ggml-rpc-server) to plan across, first in "
    "llama.cpp's device order; HOST:PORT@cuda names a worker's backend (default cpu)")]
MaxCtx = Annotated[int, typer.Option("--max-ctx", help="largest context to consider (default: n_ctx_train)")]
MinCtx = Annotated[int, typer.Option("--min-ctx", help="smallest acceptable context")]
KvTypes = Annotated[Optional[str], typer.Option(
    "--kv-types", help="KV types to try, in order (K/V for different types); default f16,q8_0, then q8_0/q4_0,q4_0 "
    "only if q8_0 cannot reach --min-ctx (said loudly); a list given here has no fallback")]
LlamaServer = Annotated[str, typer.Option(
    "--llama-server", help="llama-server binary (default: $AUTOCTX_LLAMA_SERVER, then PATH)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
ServerArgs = Annotated[Optional[List[str]], typer.Argument(
    help="-- then llama-server arguments (for serve they win over the plan, which is redone around them)")]
GgufModel = Annotated[str, typer.Argument(help="GGUF file (first part of a split model is enough)")]
AnyModel = Annotated[str, typer.Argument(help="GGUF file or Ollama model name")]
OllamaModel = Annotated[str, typer.Argument(help="Ollama model name, e.g. qwen2.5:32b")]
PROFILE_REF = "profile id prefix (at least 4 hex digits), model path or model name"


def _commands():
    from . import commands

    return commands


@app.callback()
def _root() -> None:
    """autoctx: plan, estimate and verify llama.cpp / Ollama memory use."""


@app.command(context_settings=PASSTHROUGH)
def estimate(
    model: GgufModel,
    server_args: ServerArgs = None,
    as_json: AsJson = False,
    devices: Annotated[str, typer.Option("--devices", help="devices llama.cpp would use, in its names and order, e.g. "
                                         "CUDA0,CUDA1 or Vulkan0@4 (the device's alignment) or RPC0[host:port]@cuda "
                                         "(an RPC worker and its backend); default: the --rpc servers' CPUs, else "
                                         "none (a CPU build)")] = "",
) -> None:
    """What llama-server would allocate for MODEL with these arguments, per device and kind."""
    _commands().estimate(model, server_args or [], as_json, devices)


@app.command(context_settings=PASSTHROUGH)
def check(
    model: GgufModel,
    server_args: ServerArgs = None,
    as_json: AsJson = False,
    llama_server: LlamaServer = "",
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the server to load")] = 300.0,
) -> int:
    """Start llama-server with these arguments until it has allocated, stop it, and print predicted vs actual.

    Exit status: 0 when every buffer is within tolerance (exact for model/KV/output, 10 % for compute),
    4 when a prediction missed, 1 when the server failed to load.
    """
    return _commands().check(model, server_args or [], as_json, llama_server, timeout)


@app.command()
def probe(
    as_json: AsJson = False,
    rpc: Annotated[str, typer.Option("--rpc", help="HOST:PORT[,HOST:PORT...]: llama.cpp RPC workers, listed as "
                                     "llama-server sees them")] = "",
    llama_server: LlamaServer = "",
) -> None:
    """Free memory per device: NVIDIA (NVML), AMD (amdsmi or sysfs), system RAM, and RPC workers (--rpc)."""
    _commands().probe(as_json, rpc, llama_server)


@app.command()
def plan(
    model: AnyModel,
    runtime: Annotated[str, typer.Option("--runtime", help="llamacpp or ollama")] = "llamacpp",
    as_json: AsJson = False,
    emit: Annotated[str, typer.Option("--emit", help="print only the llama-server arguments (args) or the "
                                      "Modelfile")] = "",
    free: Free = None,
    device: Device = "",
    margin: Margin = None,
    rpc: Rpc = "",
    llama_server: LlamaServer = "",
    max_ctx: MaxCtx = 0,
    min_ctx: MinCtx = 4096,
    kv_types: KvTypes = None,
    kv_type: Annotated[str, typer.Option("--kv-type", help="force one KV type (e.g. q8_0 or q8_0/q4_0)")] = "",
    parallel: Annotated[int, typer.Option("--parallel", help="slots (each gets num_ctx tokens)")] = 1,
    ubatch: Annotated[int, typer.Option("--ubatch", help="physical batch size")] = 512,
    chart: Annotated[str, typer.Option("--chart", help="write the memory-vs-context chart to FILE.svg or FILE.png "
                                       "(replaced atomically; a symbolic link at FILE is refused)")] = "",
    no_repack: Annotated[bool, typer.Option("--no-repack", help="plan for llama-server --no-repack")] = False,
    override_tensor: Annotated[Optional[List[str]], typer.Option(
        "-ot", "--override-tensor", help="plan for llama-server -ot PATTERN=BUFFER_TYPE[,...] (repeatable; matched "
        "before the flags below, the first match wins)")] = None,
    cpu_moe: Annotated[bool, typer.Option("--cpu-moe", help="plan with every MoE expert on the CPU")] = False,
    n_cpu_moe: Annotated[Optional[int], typer.Option(
        "--n-cpu-moe", help="plan with the experts of the first N blocks on the CPU (default: for a MoE model the "
        "plan picks N)")] = None,
    n_cpu_ffn: Annotated[Optional[int], typer.Option(
        "--n-cpu-ffn", help="plan with the FFN of the first N blocks on the CPU")] = None,
    mmproj: Annotated[str, typer.Option("--mmproj", help="plan with this multimodal projector (a clip GGUF) loaded "
                                        "too; on the first GPU unless --no-mmproj-offload")] = "",
    no_mmproj_offload: Annotated[bool, typer.Option("--no-mmproj-offload", help="the projector on the CPU")] = False,
    model_draft: Annotated[str, typer.Option("--model-draft", "-md", help="plan with this draft model for "
                                             "speculative decoding (emits --spec-type draft-simple)")] = "",
    lora: Annotated[Optional[List[str]], typer.Option("--lora", help="plan with this LoRA adapter "
                                                      "(repeatable)")] = None,
    cache_ram: Annotated[Optional[int], typer.Option(
        "--cache-ram", help="llama-server's host prompt cache in MiB, counted in the RAM budget (-1 no limit, 0 off; "
        "default: the RAM left after the plan, at most 8192)")] = None,
    ctx_checkpoints: Annotated[Optional[int], typer.Option(
        "--ctx-checkpoints", help="context checkpoints per slot, counted in the RAM budget (default: up to 32, as "
        "many as fit)")] = None,
) -> None:
    """The largest safe context, the KV cache type and the GPU layers for MODEL on this machine (or --free)."""
    _commands().plan(model, runtime, as_json, emit, free or [], device, margin or [], rpc, llama_server, max_ctx,
                     min_ctx, kv_types, kv_type, parallel, ubatch, chart, no_repack, override_tensor or [], cpu_moe,
                     n_cpu_moe, n_cpu_ffn, mmproj, no_mmproj_offload, model_draft, lora or [], cache_ram,
                     ctx_checkpoints)


@app.command(context_settings=PASSTHROUGH)
def serve(
    model: AnyModel,
    server_args: ServerArgs = None,
    free: Free = None,
    device: Device = "",
    margin: Margin = None,
    rpc: Rpc = "",
    max_ctx: MaxCtx = 0,
    min_ctx: MinCtx = 4096,
    kv_types: KvTypes = None,
    llama_server: LlamaServer = "",
    check: Annotated[bool, typer.Option("--check", help="stop the server after verification (for scripts and "
                                        "CI)")] = False,
    as_json: AsJson = False,
    max_tries: Annotated[int, typer.Option("--max-tries", help="launches before giving up on out-of-memory")] = 3,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for /health")] = 300.0,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="neither read nor write a profile")] = False,
) -> int:
    """Plan, start llama-server, verify what it allocated, and keep serving (or stop with --check).

    Exit status: the server's own when serving; with --check 0 when verified, 4 when a prediction missed.
    """
    return _commands().serve(model, server_args or [], free or [], device, margin or [], rpc, max_ctx, min_ctx,
                             kv_types, llama_server, check, as_json, max_tries, timeout, no_profile)


@app.command(context_settings=RUN_SETTINGS)
def run(
    model: OllamaModel,
    prompt: Annotated[Optional[List[str]], typer.Argument(help="prompt, as for `ollama run`")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and the commands, change "
                                          "nothing")] = False,
    name: Annotated[str, typer.Option("--name", help="derived model name (default: MODEL-autoctx)")] = "",
    free: Free = None,
    device: Device = "",
    margin: Margin = None,
    max_ctx: MaxCtx = 0,
    min_ctx: MinCtx = 4096,
    pull_model: Annotated[bool, typer.Option("--pull", help="pull MODEL first if it is not in the local "
                                             "store")] = False,
    evict: Annotated[bool, typer.Option("--evict", help="unload the other models the server holds, and plan with "
                                        "their memory")] = False,
    start_server: Annotated[bool, typer.Option("--start-server", help="when no Ollama server answers, start "
                                               "`ollama serve` with the KV cache type the plan wants")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds a load, generate or pull may wait for the "
                                           "server (default: $AUTOCTX_OLLAMA_TIMEOUT, else 600)")] = 0.0,
) -> None:
    """Like `ollama run MODEL [PROMPT]`, on a derived model with the largest safe num_ctx for this machine.

    autoctx's own flags go before MODEL. Messages go to stderr; stdout is the model's answer.
    """
    _commands().run(model, prompt or [], dry_run, name, free or [], device, margin or [], max_ctx, min_ctx,
                    pull_model, evict, start_server, timeout)


@app.command()
def modelfile(
    model: OllamaModel,
    free: Free = None,
    device: Device = "",
    margin: Margin = None,
    max_ctx: MaxCtx = 0,
    min_ctx: MinCtx = 4096,
) -> None:
    """Print the Modelfile `autoctx run` would create, planned for the Ollama server's real settings."""
    _commands().modelfile(model, free or [], device, margin or [], max_ctx, min_ctx)


profile_app = typer.Typer(help="Per-model profiles: plans, measurements and learned corrections.",
                          rich_markup_mode=None, no_args_is_help=True)
app.add_typer(profile_app, name="profile")
ProfileRef = Annotated[str, typer.Argument(help=PROFILE_REF)]


@profile_app.command("list")
def profile_list() -> None:
    """Stored profiles, one line each (a file that is not a readable profile: one warning line, skipped)."""
    _commands().profile_list()


@profile_app.command("show")
def profile_show(ref: ProfileRef) -> None:
    """One profile as TOML (REF must name exactly one)."""
    _commands().profile_show(ref)


@profile_app.command("rm")
def profile_rm(
    ref: ProfileRef,
    every: Annotated[bool, typer.Option("--all", help="remove every profile of the model REF names")] = False,
) -> None:
    """Delete the profile REF names, and only it.

    An id prefix must be at least 4 hex digits and start only one profile's id. A model path or name that several
    profiles share (other devices, drivers or runtime builds) is refused unless --all is given; --all never widens
    an id prefix. An empty REF is an error.
    """
    _commands().profile_rm(ref, every)


@profile_app.command("generate", context_settings=PASSTHROUGH)
def profile_generate(
    model: AnyModel,
    server_args: ServerArgs = None,
    device: Device = "",
    llama_server: LlamaServer = "",
) -> int:
    """Plan, load with llama-server, verify, save the profile (serve --check)."""
    return _commands().profile_generate(model, server_args or [], device, llama_server)


def _error_line(msg: str) -> str:
    """`autoctx: error: MSG` on one line: line breaks and other unprintable characters (a path or a name the user
    typed) are shown escaped. A server's log tail, after "last lines:", is the one part kept on lines of its own."""
    head, sep, tail = msg.partition("last lines:\n")
    return "autoctx: error: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in head) + sep + tail


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    try:
        status = app(standalone_mode=False)  # Ctrl-C comes back as typer's Exit(130), returned here
        sys.exit(status if isinstance(status, int) else 0)
    except Terminated as e:
        sys.exit(e.exit_code)
    except AutoctxError as e:
        print(_error_line(str(e)), file=sys.stderr)
        sys.exit(e.exit_code)
    except (ValueError, OSError) as e:  # GGUFError is a ValueError
        print(_error_line(str(e)), file=sys.stderr)
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
            print(_error_line(e.format_message()), file=sys.stderr)
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
