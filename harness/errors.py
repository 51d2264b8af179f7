"""User-facing errors: one line naming the file or value and the fix.

The CLI turns a `HarnessError` into that line and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Bad input or environment: a corrupt file, an unknown name, a missing runtime."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} ({fix})" if fix else what)


class RuntimeUnavailable(HarnessError):
    """A runtime whose library or device is missing on this machine."""
