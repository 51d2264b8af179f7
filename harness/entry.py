"""The `harness` console script: a light module, so Ctrl-C while the heavy libraries import (the first
seconds of every command) is the same one line and exit code 130 as Ctrl-C later."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

INTERRUPTED = "error: interrupted (reports, goldens and cached artifacts are written whole or not at all)"


def exit_interrupted() -> NoReturn:
    """The one line and exit code 130.  A second Ctrl-C while the interpreter shuts down is ignored: Python puts
    SIGINT back to its default action during finalization, and the process would die of it (exit -2)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(130)


def main() -> None:
    try:
        from harness.cli import main as run_cli
    except KeyboardInterrupt:
        exit_interrupted()
    run_cli()
