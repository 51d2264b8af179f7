"""The `harness` console script: a light module, so Ctrl-C while the heavy libraries import (the first
seconds of every command) is the same one line and exit code 130 as Ctrl-C later."""

from __future__ import annotations

from harness.core.errors import exit_interrupted


def main() -> None:
    try:
        from harness.cli import main as run_cli
    except KeyboardInterrupt:
        exit_interrupted()
    run_cli()
