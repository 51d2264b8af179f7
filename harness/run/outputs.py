"""What a run measured, before it is judged: sample ids, labels, input stage
hashes and every runtime's raw outputs.

The one on-disk result format: a work unit's result (`harness.run.plan`), a
shard's `outputs.npz` beside its report, and a whole run's are the same file,
so a run is reduced from its units, and `harness merge` reduces shards,
by concatenation (`concat`), then judged once: the report equals an
unsplit run's.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError
from harness.core.files import atomic_write, npz_bytes
from harness.core.hashing import digest, sample_digests

FILENAME = "outputs.npz"
ROWS_SUFFIX = "#rows"  # a ragged output's per-sample row count is stored as the output `<name>#rows`
SHAPE_SUFFIX = "#shape"  # a per-image output's own shape (no batch axis) is stored as the output `<name>#shape`


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two outputs where NaN is padding (ragged rows): padding against padding is no difference, padding
    against a value an infinite one (a row that one side has and the other has not)."""
    diff = np.abs(a - b)
    gap_a, gap_b = np.isnan(a), np.isnan(b)
    if gap_a.any() or gap_b.any():
        diff = np.where(gap_a & gap_b, 0.0, np.where(gap_a | gap_b, np.inf, diff))
    return diff


def pad_ragged(outputs: dict[str, np.ndarray], ragged: tuple[str, ...], rows: int) -> dict[str, np.ndarray]:
    """One image's outputs (a batch-1 model) with the ragged ones, whose first axis is data-dependent ([K, ...], no
    batch axis), as [1, rows, ...] NaN-padded rows and their count `<name>#rows` [1]: the one result format keeps
    fixed shapes, so shards, merges, stage hashes and goldens stay bit-identical whatever samples a run holds."""
    padded = dict(outputs)
    for name in ragged:
        value = np.asarray(outputs[name])
        if value.ndim == 0 or len(value) > rows:
            raise HarnessError(
                f"ragged output '{name}' has {value.shape[0] if value.ndim else 'no'} rows, more than [model] ragged_rows = {rows}",
                "raise [model] ragged_rows to the most rows one image can give",
            )
        row = np.full((1, rows, *value.shape[1:]), np.nan, dtype=np.float32)
        row[0, : len(value)] = value
        padded[name] = row
        padded[name + ROWS_SUFFIX] = np.array([len(value)], dtype=np.int64)
    return padded


def pad_sized(outputs: dict[str, np.ndarray], bounds: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """One image's outputs (fed alone at its own size: a per-image stack) with those whose shape follows the input
    size NaN-padded to their shape at the stack's largest input (`bounds`), and their own shape `<name>#shape`
    [1, ndim - 1]: fixed shapes for the one result format, as `pad_ragged`."""
    padded = dict(outputs)
    for name, bound in bounds.items():
        value = np.asarray(outputs[name])
        if value.ndim != len(bound) or any(have > most for have, most in zip(value.shape, bound, strict=True)):
            raise HarnessError(
                f"output '{name}' is {list(value.shape)}, beyond its {list(bound)} at the stack's largest input",
                "the output must grow with the input size (a fully convolutional head), or fix the input size",
            )
        dtype = value.dtype if np.issubdtype(value.dtype, np.floating) else np.dtype(np.float32)
        row = np.full(bound, np.nan, dtype=dtype)
        row[tuple(slice(0, side) for side in value.shape)] = value
        padded[name] = row
        padded[name + SHAPE_SUFFIX] = np.array([value.shape[1:]], dtype=np.int64)
    return padded


def unpadded_groups(outputs: dict[str, np.ndarray], sizes: np.ndarray) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The samples' rows grouped by their input sizes (`sizes`, a row each) and the shapes of their per-image
    outputs (`pad_sized`; 128 x 160 and 160 x 128 inputs give a head as many locations), each group's outputs cut
    back to those shapes (the `#shape` entries dropped); one group of every row when no output is per-image."""
    sized = [name[: -len(SHAPE_SUFFIX)] for name in outputs if name.endswith(SHAPE_SUFFIX)]
    count = len(next(iter(outputs.values()))) if outputs else 0
    if not sized:
        return [(np.arange(count), outputs)]
    keys = np.concatenate([sizes[:count], *(outputs[name + SHAPE_SUFFIX] for name in sized)], axis=1)
    _, group_of = np.unique(keys, axis=0, return_inverse=True)
    groups = []
    for group in range(group_of.max() + 1):
        rows = np.flatnonzero(group_of.reshape(-1) == group)
        cut = {name: value[rows] for name, value in outputs.items() if not name.endswith(SHAPE_SUFFIX)}
        for name in sized:
            shape = outputs[name + SHAPE_SUFFIX][rows[0]]
            cut[name] = cut[name][(slice(None), *(slice(0, int(side)) for side in shape))]
        groups.append((rows, cut))
    return groups


@dataclass(frozen=True)
class Inference:
    """Raw outputs of one runtime on one input set, and what it ran on."""

    runtime: str
    outputs: dict[str, np.ndarray]
    predictions: np.ndarray
    seconds: float
    session: dict[str, str]
    artifacts: dict[str, Any]  # provenance of the files this runtime consumed

    @cached_property
    def stages(self) -> dict[str, tuple[str, ...]]:
        """Per-sample hashes of the last two stages."""
        return {"outputs": sample_digests(self.outputs), "predictions": tuple(digest(p) for p in self.predictions)}


@dataclass(frozen=True)
class Determinism:
    """`--repeat N`: are N runs of a runtime on the same inputs bit-identical, and if not, how far apart."""

    repeats: int
    bit_identical: bool
    max_abs_spread: float
    prediction_changes: int  # samples whose prediction differs in some repeat

    def describe(self) -> dict[str, Any]:
        return self.__dict__.copy()


def determinism(runs: list[Inference]) -> Determinism:
    first = runs[0]
    spread = max(
        (float(np.max(difference(r.outputs[n], first.outputs[n]), initial=0.0)) for r in runs[1:] for n in first.outputs), default=0.0
    )
    identical = all(np.array_equal(r.outputs[n], first.outputs[n], equal_nan=True) for r in runs[1:] for n in first.outputs)
    changed = np.zeros(len(first.predictions), dtype=bool)
    for r in runs[1:]:
        changed |= _changed_rows(r.predictions, first.predictions)
    return Determinism(len(runs), identical, spread, int(changed.sum()))


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per sample: do two predictions differ (labels, NaN-padded box lists, masks alike; NaN equals NaN)?"""
    x, y = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    return ~np.all((x == y) | (np.isnan(x) & np.isnan(y)), axis=1)


@dataclass
class RunOutputs:
    suite: str
    ids: tuple[str, ...]
    labels: np.ndarray
    stages: dict[str, tuple[str, ...]]  # input stages: encoded, decoded, tensor
    inferences: dict[str, Inference]  # by runtime, the reference first
    context: dict[str, Any]
    requested: tuple[str, ...] = ()  # the runtimes asked for (judged against their goldens); the reference may be extra
    shard: tuple[int, int] = (1, 1)
    determinism: dict[str, Determinism] = field(default_factory=dict)
    intake: dict[str, int] = field(default_factory=dict)  # samples converted by an image intake rule, per rule

    def metadata(self, runtime: str) -> dict[str, Any]:
        """What one runtime's numbers were measured with: the run's context, the artifacts it consumed, its session."""
        inference = self.inferences[runtime]
        return {**self.context, "artifacts": inference.artifacts, "session": inference.session}

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"ids": np.array(self.ids), "labels": self.labels}
        arrays |= {f"stage/{k}": np.array(v) for k, v in self.stages.items()}
        meta: dict[str, Any] = {
            "suite": self.suite,
            "context": self.context,
            "shard": list(self.shard),
            "requested": list(self.requested),
            "intake": self.intake,
            "runtimes": {},
        }
        for name, inf in self.inferences.items():
            arrays |= {f"out/{name}/{k}": v for k, v in inf.outputs.items()} | {f"pred/{name}": inf.predictions}
            meta["runtimes"][name] = {
                "seconds": inf.seconds,
                "session": inf.session,
                "artifacts": inf.artifacts,
                "determinism": self.determinism[name].describe() if name in self.determinism else None,
            }
        arrays["meta"] = np.array(json.dumps(meta, default=str))
        return npz_bytes(arrays)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / FILENAME, self.to_bytes())
        return folder / FILENAME

    @classmethod
    def load(cls, path: Path) -> RunOutputs:
        file = path / FILENAME if path.is_dir() else path
        try:
            blob = file.read_bytes()
        except OSError as exc:
            raise HarnessError(f"{file}: not a run's {FILENAME} ({exc})", "pass report folders written by `harness run`") from exc
        return cls.from_bytes(blob, str(file))

    @classmethod
    def from_bytes(cls, blob: bytes, source: str) -> RunOutputs:
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, KeyError) as exc:
            raise HarnessError(f"{source}: not a run's {FILENAME} ({exc})", "pass report folders written by `harness run`") from exc
        inferences, det = {}, {}
        for name, info in meta["runtimes"].items():
            prefix = f"out/{name}/"
            outputs = {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}
            inferences[name] = Inference(name, outputs, data[f"pred/{name}"], info["seconds"], info["session"], info["artifacts"])
            if info.get("determinism"):
                det[name] = Determinism(**info["determinism"])
        return cls(
            suite=meta["suite"],
            ids=tuple(str(i) for i in data["ids"]),
            labels=data["labels"],
            stages={k[len("stage/") :]: tuple(str(h) for h in v) for k, v in data.items() if k.startswith("stage/")},
            inferences=inferences,
            context=meta["context"],
            requested=tuple(meta["requested"]),
            shard=(int(meta["shard"][0]), int(meta["shard"][1])),
            determinism=det,
            intake={str(k): int(v) for k, v in meta.get("intake", {}).items()},
        )


def merge(parts: list[RunOutputs]) -> RunOutputs:
    """Concatenate shards 1..n of one run, in shard order."""
    if not parts:
        raise HarnessError("nothing to merge", "pass the report folders of every shard")
    parts = sorted(parts, key=lambda p: p.shard[0])
    count = parts[0].shard[1]
    if [p.shard for p in parts] != [(i, count) for i in range(1, count + 1)]:
        raise HarnessError(
            f"shards {[f'{i}/{n}' for i, n in (p.shard for p in parts)]} are not 1..{count} of {count}", "pass every shard exactly once"
        )
    for part in parts[1:]:
        if part.suite != parts[0].suite or list(part.inferences) != list(parts[0].inferences):
            raise HarnessError("shards come from different suites or runtime lists", "merge shards of one `harness run` command only")
    return concat(parts, (1, 1))


def concat(parts: list[RunOutputs], shard: tuple[int, int]) -> RunOutputs:
    """Consecutive sample ranges of one run (same suite and runtimes) as one result."""
    first = parts[0]
    if len(parts) == 1:
        return dataclasses.replace(first, shard=shard)

    def join(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays)

    inferences = {}
    for name, inf in first.inferences.items():
        members = [p.inferences[name] for p in parts]
        inferences[name] = Inference(
            name,
            {k: join([m.outputs[k] for m in members]) for k in inf.outputs},
            join([m.predictions for m in members]),
            sum(m.seconds for m in members),
            inf.session,
            inf.artifacts,
        )
    return RunOutputs(
        suite=first.suite,
        ids=tuple(i for p in parts for i in p.ids),
        labels=join([p.labels for p in parts]),
        stages={k: tuple(h for p in parts for h in p.stages[k]) for k in first.stages},
        inferences=inferences,
        context=first.context,
        requested=first.requested,
        shard=shard,
        intake=dict(sum((Counter(p.intake) for p in parts), Counter())),
        determinism={
            name: Determinism(
                d.repeats,
                all(p.determinism[name].bit_identical for p in parts),
                max(p.determinism[name].max_abs_spread for p in parts),
                sum(p.determinism[name].prediction_changes for p in parts),
            )
            for name, d in first.determinism.items()
        },
    )


def side_by_side(parts: list[RunOutputs], order: tuple[str, ...]) -> RunOutputs:
    """Results of other runtimes on the same samples (units of one range run on different hardware) as one,
    runtimes in `order`."""
    first = parts[0]
    for part in parts[1:]:
        if part.ids != first.ids:
            raise HarnessError("results of one sample range hold different samples", "plan the run again: its units do not match")
    inferences = {name: inf for p in parts for name, inf in p.inferences.items()}
    artifacts = {label: info for p in parts for label, info in p.context.get("artifacts", {}).items()}
    return dataclasses.replace(
        first,
        inferences={name: inferences[name] for name in order if name in inferences},
        determinism={name: d for p in parts for name, d in p.determinism.items()},
        context=first.context | {"artifacts": artifacts},
    )
