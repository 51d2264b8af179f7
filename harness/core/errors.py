"""User-facing errors: one line naming the file or value and the fix.

The CLI turns a `HarnessError` into that line and exit code 2; anything else
is a bug and keeps its traceback.  Ctrl-C is one line too, and exit code 130.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn


class HarnessError(Exception):
    """Bad input or environment: a corrupt file, an unknown name, a missing runtime."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = " ".join(what.split())  # always one line, whatever a wrapped library message held
        self.fix = fix
        super().__init__(f"{self.what} ({fix})" if fix else self.what)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled whole (what, fix and any fields of a subclass), so an error raised in a worker process reads the same."""
        return (type(self), (self.what, self.fix), self.__dict__)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first meaningful line of a third-party error message (torch's unpickling errors run to 8 lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RuntimeUnavailable(HarnessError):
    """A runtime whose library or device is missing on this machine."""


INTERRUPTED = "error: interrupted (reports, goldens and cached artifacts are written whole or not at all)"


def exit_interrupted() -> NoReturn:
    """The one line and exit code 130, for the command line (the stack has unwound: every `with` block is closed).

    The process ends with `os._exit` after flushing: a second Ctrl-C during the interpreter's shutdown would kill
    it (Python puts SIGINT back to its default action during finalization), and a Ctrl-C that lands during the
    start-up imports can make CPython end the process with SIGINT (exit -2) at shutdown although the
    KeyboardInterrupt was caught here (about 1 in 8 interrupts half a second into `harness run`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(INTERRUPTED, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(130)
