"""autoctx's error types. The CLI turns each into one line on stderr and a non-zero exit."""

from __future__ import annotations


class AutoctxError(Exception):
    """Base of every error autoctx reports to the user as a single line."""

    exit_code = 1


class UnsupportedModel(AutoctxError):
    """A model whose architecture or hyperparameters autoctx cannot model (the message names it)."""


class ArgsError(AutoctxError):
    """Bad or contradictory runtime arguments (e.g. a quantized V cache with flash attention off)."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where autoctx is so that every `finally` (a server to stop, a temp file to remove)
    runs; the CLI exits with 128 + the signal number, as a shell expects."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.exit_code = 128 + signum
