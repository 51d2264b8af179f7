"""Golden store: the recorded outputs of each runtime on a suite.

`golden/<suite>/<runtime>/outputs.npz` is a run's result file with the one
runtime (`harness.run.outputs.RunOutputs`: sample ids, labels, raw outputs,
predictions, per-sample stage hashes, `harness.judge.attribution`), the format work units
and shards are written in; `golden.json` beside it holds metrics, metadata (model and
dataset hashes, stack, library versions, hardware) and the sha256 of the npz,
so a corrupt or hand-edited golden is caught on load.  Each file is written
to a temp name and renamed, npz first and json last: a reader sees the old
golden or the new one, never half of one.  Only `harness golden update`
writes here.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError
from harness.core.files import atomic_write
from harness.data.stack import StackSpec
from harness.run.outputs import Inference, RunOutputs
from harness.spec.suite import Suite

SCHEMA_VERSION = 2  # 1: an npz layout of its own (ids, predictions, output/*, stage/*)
LOCK_FILE = ".lock"
RESULT_STAGES = ("outputs", "predictions")  # stage hashes recomputed from the stored outputs and predictions


@dataclass(frozen=True)
class Golden:
    runtime: str
    ids: tuple[str, ...]
    labels: np.ndarray
    outputs: dict[str, np.ndarray]
    predictions: np.ndarray
    metrics: dict[str, float]
    metadata: dict[str, Any]
    stages: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def select(self, ids: tuple[str, ...], update_hint: str) -> Golden:
        """The golden restricted to `ids`, in that order."""
        index = {sample_id: i for i, sample_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise HarnessError(
                f"golden of {self.runtime} lacks {len(missing)} of this run's samples (first: {missing[0]})",
                f"the dataset changed: review, then run `{update_hint}`",
            )
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        return dataclasses.replace(
            self,
            ids=ids,
            labels=self.labels[rows],
            outputs={name: value[rows] for name, value in self.outputs.items()},
            predictions=self.predictions[rows],
            stages={name: tuple(hashes[r] for r in rows) for name, hashes in self.stages.items()},
        )


class GoldenStore:
    """Goldens of one suite, one folder per runtime."""

    def __init__(self, root: Path, suite: str, stack: str | None = None) -> None:
        self.root = root
        self.suite = suite  # how the command line names the suite (`Suite.command_name`)
        self.stack = stack  # a named stack's goldens (`golden_store`); None: the reference stack's

    def update_hint(self, *runtimes: str) -> str:
        stack = f"--stack {self.stack} " if self.stack else ""
        return f"harness golden update --suite {self.suite} {stack}" + " ".join(f"--runtime {runtime}" for runtime in runtimes)

    def load_all(self, runtimes: Iterable[str]) -> dict[str, Golden]:
        """The goldens of `runtimes`; those missing are named together, with the command that records them all."""
        runtimes = list(runtimes)
        missing = [runtime for runtime in runtimes if not self.exists(runtime)]
        if len(missing) > 1:
            raise HarnessError(
                f"no goldens for runtimes {', '.join(missing)} in {self.root}",
                f"record them with `{self.update_hint(*missing)}`, or run with --no-golden to compare with the reference only",
            )
        return {runtime: self.load(runtime) for runtime in runtimes}

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the store: two concurrent updates never interleave their files."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise HarnessError(f"{path} is locked by another golden update", "wait for it to finish, then run again") from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def folder(self, runtime: str) -> Path:
        return self.root / runtime

    def exists(self, runtime: str) -> bool:
        return (self.folder(runtime) / "golden.json").is_file()

    def load(self, runtime: str) -> Golden:
        folder = self.folder(runtime)
        meta_path, npz_path = folder / "golden.json", folder / "outputs.npz"
        if not meta_path.is_file() or not npz_path.is_file():
            raise HarnessError(
                f"no golden for runtime '{runtime}' in {folder}",
                f"record one with `{self.update_hint(runtime)}`, or run with --no-golden to compare with the reference only",
            )
        try:
            meta = json.loads(meta_path.read_text())
            expected_sha = meta["outputs_sha256"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise HarnessError(
                f"{meta_path}: corrupt golden metadata ({exc})", f"restore it from git or re-record with `{self.update_hint(runtime)}`"
            ) from exc
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise HarnessError(
                f"{meta_path}: golden schema {meta.get('schema_version')}, this harness reads schema {SCHEMA_VERSION}",
                f"re-record it with `{self.update_hint(runtime)}` (review the diff it prints first)",
            )
        blob = npz_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != expected_sha:
            raise HarnessError(
                f"{npz_path}: checksum differs from golden.json (corrupt or edited by hand)",
                f"restore it from git or re-record with `{self.update_hint(runtime)}`",
            )
        recorded = RunOutputs.from_bytes(blob, str(npz_path))
        inference = recorded.inferences[runtime]
        return Golden(
            runtime,
            recorded.ids,
            recorded.labels,
            inference.outputs,
            inference.predictions,
            meta.get("metrics", {}),
            meta.get("metadata", {}),
            recorded.stages | inference.stages,
        )

    def write(self, golden: Golden) -> Path:
        folder = self.folder(golden.runtime)
        folder.mkdir(parents=True, exist_ok=True)
        metadata = golden.metadata
        inference = Inference(golden.runtime, golden.outputs, golden.predictions, 0.0, metadata.get("session", {}), {})
        recorded = RunOutputs(
            suite=self.suite,
            ids=golden.ids,
            labels=golden.labels,
            stages={k: v for k, v in golden.stages.items() if k not in RESULT_STAGES},
            inferences={golden.runtime: inference},
            context={},  # what it was measured with lives in golden.json, beside the checksum
        )
        blob = recorded.to_bytes()
        meta = {
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite,
            "runtime": golden.runtime,
            "samples": len(golden.ids),
            "metrics": golden.metrics,
            "metadata": golden.metadata,
            "outputs_sha256": hashlib.sha256(blob).hexdigest(),
        }
        atomic_write(folder / "outputs.npz", blob)
        atomic_write(folder / "golden.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        return folder


def golden_store(suite: Suite, stack: StackSpec | None = None, root: Path | None = None) -> GoldenStore:
    """The goldens of `suite`'s runs through `stack` (default: its reference stack) under `root` (default: the
    suite's golden folder): a named stack's live in `stacks/<name>` there, never beside the reference stack's."""
    base = root or suite.golden_dir
    if stack is None or stack == suite.stack:
        return GoldenStore(base, suite.command_name)
    return GoldenStore(base / "stacks" / stack.name, suite.command_name, stack.name)
