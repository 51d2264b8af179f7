"""The `harness` console script: a light module, so Ctrl-C while the heavy libraries import (the first
seconds of every command) is the same one line and exit code 130 as Ctrl-C later."""

from __future__ import annotations

import sys

INTERRUPTED = "error: interrupted (reports, goldens and cached artifacts are written whole or not at all)"


def main() -> None:
    try:
        from harness.cli import main as run_cli
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    run_cli()
