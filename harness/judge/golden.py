"""Golden store: the recorded outputs of each runtime on a suite, in bounded space.

`golden/<suite>/<runtime>/outputs.npz` keeps, for every sample: its id, label, predictions, a hash after each
stage of the data flow (encoded, decoded, tensor, raw outputs, predictions; `harness.judge.attribution`) and
each output's magnitudes (max |x| and L2 norm); and the exact raw outputs of a subset of the samples
(`raw_subset`: all that fit `[golden] raw_samples` and `max_raw_mb`, chosen by a hash of their ids, so a
sample is in or out whatever run or shard it is compared in).  A YOLO head's 84 x 8400 floats per image stay
out of git for all but a few images; `scripts/bench_golden_size.py` measures it.  `golden.json` beside the
npz holds metrics, metadata (model and dataset hashes, stack, library versions, hardware, the task's
evaluator) and the sha256 of the npz, so a corrupt or hand-edited golden is caught on load.  Each file is
written to a temp name and renamed, npz first and json last: a reader sees the old golden or the new one,
never half of one.  Only `harness golden update` writes here.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError
from harness.core.files import atomic_write, npz_bytes
from harness.core.hashing import digest, sample_digests
from harness.data.stack import StackSpec
from harness.run.outputs import Inference, RunOutputs
from harness.spec.suite import GoldenSpec, Suite

GOLDEN_LEVEL = 6  # deflate level of a golden's outputs.npz (numpy's default): goldens live in git, where size counts
SCHEMA_VERSION = 3  # 1: an npz layout of its own; 2: a run's result file (every raw output); 3: bounded (raw outputs of a subset)
READABLE = (2, 3)  # a schema-2 golden holds every raw output: it loads as a golden whose subset is every sample
LOCK_FILE = ".lock"
MB = 1 << 20


def magnitudes(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per output, per sample: [max |x|, L2 norm] (float64; ragged outputs' NaN padding counts as 0).  What a golden
    keeps of the samples outside its raw subset: |max|a| - max|b|| <= max |a - b| and |‖a‖ - ‖b‖| <= ‖a - b‖ bound a change from below."""
    found = {}
    for name, value in outputs.items():
        rows = np.nan_to_num(value.reshape(len(value), int(np.prod(value.shape[1:]))).astype(np.float64), nan=0.0)  # NaN: padding
        found[name] = np.stack([np.abs(rows).max(axis=1, initial=0.0), np.linalg.norm(rows, axis=1)], axis=1)
    return found


def raw_subset(ids: tuple[str, ...], outputs: dict[str, np.ndarray], spec: GoldenSpec) -> tuple[str, ...]:
    """The samples whose exact raw outputs a golden keeps, in `ids`' order: all when they fit `spec`, else the
    `raw_samples` (at most `max_raw_mb` MB of outputs) whose id hashes lowest, so a sample's membership depends on
    its id and the golden's size only, never on the order, a --limit or a shard of the run compared with it."""
    per_sample = sum(value[0].nbytes for value in outputs.values()) if ids else 0
    count = min(len(ids), int(spec.max_raw_mb * MB // per_sample) if per_sample else len(ids))
    count = min(count, spec.raw_samples) if spec.raw_samples is not None else count
    if count == len(ids):
        return ids
    chosen = set(sorted(ids, key=lambda sample_id: digest(sample_id.encode()))[:count])
    return tuple(sample_id for sample_id in ids if sample_id in chosen)


@dataclass(frozen=True)
class Golden:
    """One runtime's golden.  `outputs` are the exact raw outputs of the `raw_ids` samples (in that order; None:
    every sample's); `stages` and `magnitudes` (see `magnitudes`) cover every sample."""

    runtime: str
    ids: tuple[str, ...]
    labels: np.ndarray
    outputs: dict[str, np.ndarray]
    predictions: np.ndarray
    metrics: dict[str, float]
    metadata: dict[str, Any]
    stages: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    raw_ids: tuple[str, ...] | None = None
    recorded_magnitudes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def raw(self) -> tuple[str, ...]:
        return self.ids if self.raw_ids is None else self.raw_ids

    @property
    def complete(self) -> bool:
        """Does it keep every sample's raw outputs (every comparison is exact)?"""
        return len(self.raw) == len(self.ids)

    @property
    def magnitudes(self) -> dict[str, np.ndarray]:
        """Every sample's output magnitudes: recorded ones, overwritten by the kept raw outputs' own."""
        found = {name: value.copy() for name, value in self.recorded_magnitudes.items()}
        rows = self._rows(self.raw)
        for name, value in magnitudes(self.outputs).items():
            found.setdefault(name, np.zeros((len(self.ids), 2)))[rows] = value
        return found

    def coverage(self) -> str:
        """'raw outputs of 16/300 samples' (or 'of every sample')."""
        return "raw outputs of every sample" if self.complete else f"raw outputs of {len(self.raw)}/{len(self.ids)} samples"

    def _rows(self, ids: tuple[str, ...]) -> np.ndarray:
        index = {sample_id: i for i, sample_id in enumerate(self.ids)}
        return np.array([index[i] for i in ids], dtype=np.int64)

    def bounded(self, spec: GoldenSpec) -> Golden:
        """The golden as stored under `spec`: raw outputs of `raw_subset` only, magnitudes of every sample."""
        keep = raw_subset(self.raw, self.outputs, spec)
        if keep == self.raw:
            return self
        chosen = set(keep)
        rows = np.array([i for i, sample_id in enumerate(self.raw) if sample_id in chosen], dtype=np.int64)
        outputs = {name: value[rows] for name, value in self.outputs.items()}
        return dataclasses.replace(self, outputs=outputs, raw_ids=keep, recorded_magnitudes=self.magnitudes)

    def select(self, ids: tuple[str, ...], update_hint: str) -> Golden:
        """The golden restricted to `ids`, in that order (its raw subset: those of `ids` it keeps)."""
        index = {sample_id: i for i, sample_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise HarnessError(
                f"golden of {self.runtime} lacks {len(missing)} of this run's samples (first: {missing[0]})",
                f"the dataset changed: review, then run `{update_hint}`",
            )
        rows = self._rows(ids)
        raw_index = {sample_id: i for i, sample_id in enumerate(self.raw)}
        raw_ids = tuple(i for i in ids if i in raw_index)
        raw_rows = np.array([raw_index[i] for i in raw_ids], dtype=np.int64)
        return dataclasses.replace(
            self,
            ids=ids,
            labels=self.labels[rows],
            outputs={name: value[raw_rows] for name, value in self.outputs.items()},
            predictions=self.predictions[rows],
            stages={name: tuple(hashes[r] for r in rows) for name, hashes in self.stages.items()},
            raw_ids=raw_ids,
            recorded_magnitudes={name: value[rows] for name, value in self.magnitudes.items()},
        )

    def baseline_for(self, candidate: Inference, update_hint: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw outputs row for row with `candidate`'s samples (the golden selected to its ids), and which rows are
        known: the recorded ones where kept, the candidate's own where its output hash equals the golden's (bit for
        bit the same); elsewhere the candidate's rows stand in and the row is not known."""
        identical = np.array(candidate.stages["outputs"]) == np.array(self.stages.get("outputs", ("",) * len(self.ids)))
        kept = np.isin(np.array(self.ids), np.array(self.raw)) if self.raw else np.zeros(len(self.ids), dtype=bool)
        filled = {}
        for name, recorded in self.outputs.items():
            now = candidate.outputs.get(name)
            if now is None or recorded.shape[1:] != now.shape[1:]:
                found = "has no such output" if now is None else f"has {now.shape[1:]}"
                raise HarnessError(
                    f"golden of {self.runtime}: output {name} has shape {recorded.shape[1:]} per sample, this run {found}",
                    f"the model's outputs changed: review with `harness golden diff`, then re-record with `{update_hint}`",
                )
            filled[name] = now.astype(np.result_type(now, recorded))
            filled[name][kept] = recorded
        return filled, kept | identical


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
        if meta.get("schema_version") not in READABLE:
            raise HarnessError(
                f"{meta_path}: golden schema {meta.get('schema_version')}, this harness reads schemas {', '.join(map(str, READABLE))}",
                f"re-record it with `{self.update_hint(runtime)}` (review the diff it prints first)",
            )
        blob = npz_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != expected_sha:
            raise HarnessError(
                f"{npz_path}: checksum differs from golden.json (corrupt or edited by hand)",
                f"restore it from git or re-record with `{self.update_hint(runtime)}`",
            )
        recorded = _from_run(blob, str(npz_path), runtime) if meta["schema_version"] == 2 else _from_bytes(blob, str(npz_path), runtime)
        return dataclasses.replace(recorded, metrics=meta.get("metrics", {}), metadata=meta.get("metadata", {}))

    def write(self, golden: Golden) -> Path:
        folder = self.folder(golden.runtime)
        folder.mkdir(parents=True, exist_ok=True)
        blob = _to_bytes(golden)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite,
            "runtime": golden.runtime,
            "samples": len(golden.ids),
            "raw_samples": len(golden.raw),
            "metrics": golden.metrics,
            "metadata": golden.metadata,
            "outputs_sha256": hashlib.sha256(blob).hexdigest(),
        }
        atomic_write(folder / "outputs.npz", blob)
        atomic_write(folder / "golden.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        return folder


def _to_bytes(golden: Golden) -> bytes:
    """The npz of schema 3; the hashes of the kept raw outputs and of the predictions are those of the arrays
    written, so a golden edited through this API stays consistent."""
    raw_rows = golden._rows(golden.raw)
    output_hashes = np.array(golden.stages.get("outputs", ("",) * len(golden.ids)), dtype="U16")
    output_hashes[raw_rows] = sample_digests(golden.outputs) if golden.outputs else output_hashes[raw_rows]
    stages = golden.stages | {"outputs": tuple(output_hashes), "predictions": tuple(digest(p) for p in golden.predictions)}
    arrays: dict[str, np.ndarray] = {"ids": np.array(golden.ids), "labels": golden.labels, "predictions": golden.predictions}
    arrays |= {f"stage/{name}": np.array(hashes) for name, hashes in stages.items()}
    arrays |= {"raw/rows": raw_rows} | {f"raw/out/{name}": value for name, value in golden.outputs.items()}
    arrays |= {f"magnitude/{name}": value for name, value in golden.magnitudes.items()}
    return npz_bytes(arrays, GOLDEN_LEVEL)


def _from_bytes(blob: bytes, source: str, runtime: str) -> Golden:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        ids = tuple(str(i) for i in data["ids"])
        raw_ids = tuple(ids[r] for r in data["raw/rows"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise HarnessError(f"{source}: not a golden's outputs.npz ({exc})", "restore it from git or re-record it") from exc

    def prefixed(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}

    stages = {name: tuple(str(h) for h in hashes) for name, hashes in prefixed("stage/").items()}
    return Golden(runtime, ids, data["labels"], prefixed("raw/out/"), data["predictions"], {}, {}, stages, raw_ids, prefixed("magnitude/"))


def _from_run(blob: bytes, source: str, runtime: str) -> Golden:
    """A schema-2 golden (a run's result file with every raw output)."""
    recorded = RunOutputs.from_bytes(blob, source)
    inference = recorded.inferences[runtime]
    stages = recorded.stages | inference.stages
    return Golden(runtime, recorded.ids, recorded.labels, inference.outputs, inference.predictions, {}, {}, stages)


def golden_store(suite: Suite, stack: StackSpec | None = None, root: Path | None = None) -> GoldenStore:
    """The goldens of `suite`'s runs through `stack` (default: its reference stack) under `root` (default: the
    suite's golden folder): a named stack's live in `stacks/<name>` there, never beside the reference stack's."""
    base = root or suite.golden_dir
    if stack is None or stack == suite.stack:
        return GoldenStore(base, suite.command_name)
    return GoldenStore(base / "stacks" / stack.name, suite.command_name, stack.name)
