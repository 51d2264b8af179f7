"""How a golden's provenance differs from this run's: the numerics-relevant
differences named by stage attribution (`numeric_changes`), and the
staleness notes of a report (`staleness`)."""

from __future__ import annotations

from typing import Any

from harness.core.environment import VOLATILE_KEYS, environment_changes, isa_changes
from harness.core.records import metadata_changes

STALENESS_KEYS = ("model", "dataset", "stack", "artifacts", "batch_size", "evaluator")  # and the environment, by `staleness`


def evaluator(task: object) -> dict[str, str]:
    """The task's metric implementation and its version, when the task names it (an optional `evaluator` attribute,
    e.g. 'pycocotools 2.0.8'): part of a golden's metadata, so a run scored by another evaluator says so."""
    name = getattr(task, "evaluator", None)
    return {"evaluator": str(name)} if name else {}


def comparable(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the environment facts that are recorded but never a change (`VOLATILE_KEYS`: a VM's kernel
    build tag, the core count); `harness doctor` shows them."""
    environment = {k: v for k, v in metadata.get("environment", {}).items() if k not in VOLATILE_KEYS}
    return metadata | {"environment": environment} if "environment" in metadata else metadata


def executed_precision(metadata: dict[str, Any]) -> str | None:
    """The precision a run or golden really executed in (None when not recorded)."""
    return metadata.get("session", {}).get("executed")


UNRECORDED = (("isa", "ISA features"), ("threads", "threads"), ("batch_size", "batch size"))


def numeric_changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a golden's metadata and this run's that can move numbers: libraries, CPU, ISA
    features, threads, GPU, batch size, executed precision (keys the golden did not record are skipped)."""
    lines = environment_changes(recorded.get("environment", {}), now.get("environment", {}))
    gained, lost = isa_changes(recorded.get("environment", {}), now.get("environment", {}))
    if gained or lost:
        lines.append("ISA " + " ".join([f"+{f}" for f in gained] + [f"-{f}" for f in lost]))
    recorded_keys = set(recorded) | set(recorded.get("environment", {}))
    unrecorded = [label for key, label in UNRECORDED if key not in recorded_keys]
    if unrecorded:
        lines.append(f"{', '.join(unrecorded)} not recorded in the golden")
    if "batch_size" in recorded and recorded["batch_size"] != now.get("batch_size"):
        lines.append(f"batch size: {recorded['batch_size']} -> {now.get('batch_size')}")
    if executed_precision(recorded) and executed_precision(recorded) != executed_precision(now):
        lines.append(f"executed precision: {executed_precision(recorded)} -> {executed_precision(now)}")
    return lines


def staleness(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How a golden's provenance differs from this run's, as phrases after 'golden of X recorded ...'
    ('with environment.libraries.onnxruntime: 1.17, now 1.18', 'without AVX512-VNNI, now with it');
    never a failure by itself."""
    old = {k: recorded.get(k, {}) for k in STALENESS_KEYS if k in recorded}
    new = {k: now.get(k, {}) for k in STALENESS_KEYS if k in recorded}
    lines = metadata_changes(old, new)
    lines += [f"environment.{line}" for line in environment_changes(recorded.get("environment", {}), now.get("environment", {}))]
    phrases = [f"with {line.replace(' -> ', ', now ')}" for line in lines]
    gained, lost = isa_changes(recorded.get("environment", {}), now.get("environment", {}))
    if gained:
        phrases.append(f"without {', '.join(gained)}, now with {'it' if len(gained) == 1 else 'them'}")
    if lost:
        phrases.append(f"with {', '.join(lost)}, now without {'it' if len(lost) == 1 else 'them'}")
    if executed_precision(recorded) and executed_precision(recorded) != executed_precision(now):
        phrases.append(f"executing {executed_precision(recorded)}, now {executed_precision(now)}")
    return phrases
