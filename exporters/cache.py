"""Content-addressed artifact cache.

An artifact's key is the hash of everything that determines its bytes (source
model hash, exporter options, toolkit versions).  Builds go to a private temp
folder and are renamed into place, so a reader never sees a half-written
artifact and two runs building the same key at once are both safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE_ENV = "HARNESS_CACHE_DIR"
CACHE_FORMAT = 3  # bump when the layout or the bytes of a cached artifact change (3: exports without path-bearing metadata)


def default_cache_dir() -> Path:
    if os.environ.get(DEFAULT_CACHE_ENV):
        return Path(os.environ[DEFAULT_CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "sysnoise-harness"


def cache_key(fields: dict[str, Any]) -> str:
    keyed = {"cache_format": CACHE_FORMAT, **fields}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ArtifactCache:
    root: Path

    def _folder(self, kind: str, fields: dict[str, Any]) -> Path:
        return self.root / kind / cache_key(fields)[:24]

    def find(self, kind: str, fields: dict[str, Any], filename: str) -> Path | None:
        """Path of `filename` for this key when it is cached (nothing is built)."""
        path = self._folder(kind, fields) / filename
        return path if path.is_file() else None

    def get_or_build(self, kind: str, fields: dict[str, Any], filename: str, build: Callable[[Path], None]) -> Path:
        """Path of `filename` for this key, calling `build(path)` in a temp folder when absent."""
        final = self._folder(kind, fields)
        if (final / filename).is_file():
            return final / filename
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            build(tmp / filename)
            (tmp / "key.json").write_text(json.dumps(fields, sort_keys=True, indent=1, default=str) + "\n")
            try:
                tmp.rename(final)
            except OSError:
                if not (final / filename).is_file():  # not a concurrent winner: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final / filename

    def entries(self) -> list[tuple[str, Path, int]]:
        """(kind, folder, size in bytes) of every cached artifact."""
        found = []
        for key_file in sorted(self.root.glob("*/*/key.json")):
            folder = key_file.parent
            found.append((folder.parent.name, folder, sum(p.stat().st_size for p in folder.iterdir())))
        return found

    def clear(self) -> int:
        count = len(self.entries())
        shutil.rmtree(self.root, ignore_errors=True)
        return count
