"""Plugins: modules that register tasks, detection decoders, image decoders, resizers, colour paths and model
variants through the public registries when they are imported.

Three ways in, each loaded before a suite is validated (so the names they register are valid in it):
- a suite's `plugins = ["my_package.harness_ext"]` (the suite's folder is searched first),
- the command line's `harness --plugin MODULE` (repeatable),
- installed packages, through the entry-point group `sysnoise_harness.plugins` (each entry point names a
  module, or a function called once with no arguments).

Loaded modules are recorded in the environment (`HARNESS_PLUGINS`, `HARNESS_PLUGIN_PATH`), so spawned decode
workers and Ray actors load the same plugins before they do any work (`load_from_environment`).
A plugin that fails to import is one `HarnessError` line naming the module and the first line of its error.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from harness.core.errors import HarnessError, first_line

ENTRY_POINT_GROUP = "sysnoise_harness.plugins"
MODULES_ENV = "HARNESS_PLUGINS"  # os.pathsep-separated module names
PATH_ENV = "HARNESS_PLUGIN_PATH"  # os.pathsep-separated folders searched for them (suites' folders)

_installed_loaded = False


def _remember(env: str, value: str) -> None:
    known = [v for v in os.environ.get(env, "").split(os.pathsep) if v]
    if value not in known:
        os.environ[env] = os.pathsep.join([*known, value])


def _add_path(folder: Path) -> None:
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)
    _remember(PATH_ENV, entry)


def load_plugins(modules: Iterable[str], folder: Path | None = None, origin: str = "--plugin") -> None:
    """Import each plugin module once (`folder`, the suite's, is searched first); `origin` names where it was
    listed, for the error line."""
    modules = list(modules)
    if modules and folder is not None:
        _add_path(folder)
    for module in modules:
        if module not in sys.modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # a plugin's own bug as much as a missing module: one line either way
                raise HarnessError(
                    f"plugin '{module}' ({origin}) failed to import: {type(exc).__name__}: {first_line(exc)}",
                    "fix the plugin, install its package, or remove it",
                ) from exc
        _remember(MODULES_ENV, module)


def load_installed() -> None:
    """The plugins installed packages declare in the `sysnoise_harness.plugins` entry-point group, once."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception as exc:
            raise HarnessError(
                f"plugin '{point.value}' (entry point '{point.name}' of {point.dist.name if point.dist else 'a package'}) "
                f"failed to import: {type(exc).__name__}: {first_line(exc)}",
                "fix or uninstall the package",
            ) from exc
        if callable(loaded):
            loaded()


def load_from_environment() -> None:
    """In a spawned worker or a Ray actor: the plugins the parent process loaded, before any work."""
    for folder in reversed([v for v in os.environ.get(PATH_ENV, "").split(os.pathsep) if v]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    load_installed()
    load_plugins([v for v in os.environ.get(MODULES_ENV, "").split(os.pathsep) if v], origin=MODULES_ENV)


def plugin_environment() -> dict[str, str]:
    """The variables that carry the loaded plugins to another process (a Ray actor's runtime_env)."""
    return {env: os.environ[env] for env in (MODULES_ENV, PATH_ENV) if os.environ.get(env)}
