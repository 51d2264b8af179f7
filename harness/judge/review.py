"""Deliberate golden updates: measure, show what an update would change, then
(only for `update`) write under a lock.

`harness golden diff` prints the change set and writes nothing.  `harness
golden update` prints the same change set first and refuses to write when the
model weights or the dataset differ from what the golden was recorded with,
unless `--force`: a new model or dataset needs a conscious decision, not a
refresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.records import metadata_changes
from harness.judge.compare import Comparison
from harness.judge.golden import Golden, GoldenStore
from harness.judge.provenance import comparable, evaluator
from harness.judge.verdict import compare_to_golden
from harness.run.outputs import Inference, RunOutputs
from harness.spec.suite import GoldenSpec, Suite
from harness.tasks import Task, make_task

# Metadata whose change means "a different model or dataset", not a refresh.
IDENTITY_KEYS = (("model", "weights_sha256"), ("model", "builder"), ("dataset", "sha256"), ("dataset", "split"))


def golden_from(measured: RunOutputs, inference: Inference, task: Task, spec: GoldenSpec) -> Golden:
    """What a golden of `inference` keeps under the suite's [golden] bounds (`Golden.bounded`)."""
    return Golden(
        runtime=inference.runtime,
        ids=measured.ids,
        labels=measured.labels,
        outputs=inference.outputs,
        predictions=inference.predictions,
        metrics={task.metric_name: task.metric(inference.predictions, measured.labels)},
        metadata=measured.metadata(inference.runtime) | evaluator(task),
        stages=measured.stages | inference.stages,
    ).bounded(spec)


@dataclass
class GoldenChange:
    """What updating one runtime's golden would change."""

    runtime: str
    new: Golden
    old: Golden | None
    comparison: Comparison | None  # the run against the old golden (None: new golden or other samples)
    metadata: list[str]
    identity: list[str]  # model/dataset identity changes: need --force

    def lines(self) -> list[str]:
        if self.old is None:
            return ["new golden"]
        lines = [f"{name} {self.old.metrics.get(name)} -> {value}" for name, value in self.new.metrics.items()]
        comp = self.comparison
        if comp is None:
            lines.append("sample set changed")
        else:
            lines.append(
                f"max abs change {comp.worst.max_abs:.3e}{self._numeric_scope()}, {len(comp.flips)} predictions changed "
                f"({len(comp.negative_flips)} right -> wrong, {len(comp.positive_flips)} wrong -> right)"
            )
            if comp.attribution:
                lines.append(f"stages: {comp.attribution.message()}")
        lines += [f"metadata {line}" for line in self.metadata] or ["metadata unchanged"]
        if not self.new.complete:
            lines.append(f"keeps {self.new.coverage()} (bounded by [golden] raw_samples, max_raw_mb), predictions and hashes of all")
        return lines

    def _numeric_scope(self) -> str:
        """Where the old golden kept a subset of the raw outputs: what its max abs change rests on."""
        assert self.old is not None and self.comparison is not None
        if self.old.complete:
            return ""
        return f" (on the old golden's {self.old.coverage()} and bit-identical samples; a lower bound elsewhere)"


def review(suite: Suite, measured: RunOutputs, store: GoldenStore) -> list[GoldenChange]:
    """Per measured runtime: the golden it would write and how it differs from the stored one."""
    task = make_task(suite.task)
    changes = []
    for name, inference in measured.inferences.items():
        new = golden_from(measured, inference, task, suite.golden)
        old = store.load(name) if store.exists(name) else None
        comparison = None
        if old is not None and set(old.ids) >= set(measured.ids):
            comparison = compare_to_golden(measured, inference, old, task, store.update_hint(name), suite)
        identity = []
        if old is not None:
            for section, key in IDENTITY_KEYS:
                before, after = old.metadata.get(section, {}).get(key), new.metadata.get(section, {}).get(key)
                if before != after:
                    identity.append(f"{section}.{key}: {before} -> {after}")
        metadata = metadata_changes(comparable(old.metadata), comparable(new.metadata)) if old else []
        changes.append(GoldenChange(name, new, old, comparison, metadata, identity))
    return changes


def blocked(changes: list[GoldenChange]) -> list[str]:
    """Identity changes that stop an update without --force."""
    return [f"{c.runtime}: {line}" for c in changes for line in c.identity]


def write(changes: list[GoldenChange], store: GoldenStore) -> None:
    """All goldens of one update under the store's lock (each file atomic)."""
    with store.lock():
        for change in changes:
            store.write(change.new)
