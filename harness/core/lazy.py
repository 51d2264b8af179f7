"""Modules imported on first use (Polygraphy's `mod.lazy_import`): `cv2 = lazy_import("cv2")` at the top of a
module costs nothing until an attribute is read, so a command that never decodes an image never loads OpenCV."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), attr)
        self.__dict__[attr] = value  # later reads skip this method
        return value


def lazy_import(name: str) -> Any:
    """A stand-in for module `name` that imports it when one of its attributes is first read."""
    return _LazyModule(name)
