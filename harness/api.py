"""Conformance checks from Python: what `harness run` does, for users' own code and test suites.

    from harness import api

    suite = api.load_suite("path/to/suite.toml")       # or api.Suite.from_mapping({...}, base=folder)
    report = api.check(suite, runtimes=["ort-int8"], limit=64)
    api.assert_conformant(suite, runtimes=["ort-int8"])  # ConformanceError: each failed check, and why
    api.check_model(model, torch.randn(4, 3, 64, 64), runtimes=["ort-fp32", "ov-fp32"]).assert_passed()

Importing this module imports no torch and no runtime library; each is imported by the step that uses it.
A script that checks 1,000 samples or more starts decode processes: guard it with `if __name__ == "__main__":`
(Python's rule for spawned processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.cache import ArtifactCache, default_cache_dir
from harness.core.errors import HarnessError
from harness.data.stack import StackSpec
from harness.judge.compare import Check
from harness.judge.golden import GoldenStore, golden_store
from harness.judge.review import GoldenChange, blocked, review
from harness.judge.review import write as write_goldens
from harness.judge.verdict import RunReport, run_suite
from harness.run.execute import measure
from harness.run.executors import Execution
from harness.run.plan import DEFAULT_CHUNK, RunRequest
from harness.run.sessions import Tracker, no_tracking, validate_runtimes
from harness.spec.suite import Suite, load_suite
from runtimes import RuntimeSpec, get_runtime

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ConformanceError",
    "ModelCheck",
    "Suite",
    "assert_conformant",
    "check",
    "check_model",
    "commit_goldens",
    "load_suite",
    "record_goldens",
    "resolve_runtimes",
    "review_goldens",
]


class ConformanceError(AssertionError):
    """Checks failed: `failures` holds (runtime, baseline, check) for each, the message says value, limit and why."""

    def __init__(self, title: str, failures: list[tuple[str, str, Check]], notes: Sequence[str] = ()) -> None:
        self.failures = failures
        lines = [f"{title}: {len(failures)} check(s) failed"]
        lines += [f"  {runtime} vs {against}: {c.name} = {c.value:.6g}, limit {c.op} {c.limit:.6g}" for runtime, against, c in failures]
        lines += [f"  {note}" for note in notes]
        super().__init__("\n".join(lines))


def resolve_runtimes(names: Sequence[str]) -> list[RuntimeSpec]:
    """Runtime names resolved once, at the boundary: unknown ones fail here with the list of known ones."""
    return [get_runtime(name) for name in dict.fromkeys(names)]


def check(
    suite: Suite | str,
    runtimes: Sequence[str] | None = None,
    stack: str | StackSpec | None = None,
    limit: int | None = None,
    golden: bool | Sequence[str] = True,
    *,
    batch_size: int | None = None,
    golden_dir: Path | None = None,
    cache_dir: Path | None = None,
    shard: tuple[int, int] = (1, 1),
    repeat: int = 1,
    chunk: int = DEFAULT_CHUNK,
    execution: Execution | None = None,
    track: Tracker = no_tracking,
) -> RunReport:
    """Run `runtimes` (default: the suite's) on identical inputs and judge them against the reference runtime and,
    with `golden` (True, or the runtimes to compare so), their goldens.  The report's `measured` holds the raw outputs."""
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    specs = resolve_runtimes(runtimes or suite.run.runtimes)
    stack_spec = suite.stack_named(stack) if isinstance(stack, str) else stack
    store = golden_store(suite, stack_spec, golden_dir) if golden else None  # a named stack's goldens are its own
    cache = ArtifactCache(cache_dir or default_cache_dir())
    names = [spec.name for spec in specs]
    compared = None if isinstance(golden, bool) else [spec.name for spec in resolve_runtimes(golden)]
    request = RunRequest(tuple(names), batch_size or suite.run.batch_size, limit, shard, repeat, stack_spec, chunk)
    report, measured = run_suite(suite, request, cache, store, execution, track, compared)
    report.measured = measured
    return report


def failures(report: RunReport) -> list[tuple[str, str, Check]]:
    """Every failed check of a report: (runtime, baseline, check)."""
    return [(r.runtime, str(c.against), check) for r in report.results for c in r.comparisons for check in c.checks if not check.passed]


def assert_conformant(suite: Suite | str, runtimes: Sequence[str] | None = None, **options: Any) -> RunReport:
    """`check`, raising `ConformanceError` (the failed checks, with the stage attribution of golden comparisons)."""
    report = check(suite, runtimes, **options)
    if not report.passed:
        attributions = [
            f"{r.runtime} vs golden: {c.attribution.message()}"
            for r in report.results
            for c in r.comparisons
            if c.attribution and not c.passed
        ]
        raise ConformanceError(f"suite {report.suite}", failures(report), attributions)
    return report


def review_goldens(
    suite: Suite | str,
    runtimes: Sequence[str] | None = None,
    *,
    stack: str | StackSpec | None = None,
    batch_size: int | None = None,
    golden_dir: Path | None = None,
    cache_dir: Path | None = None,
    track: Tracker = no_tracking,
) -> tuple[GoldenStore, list[GoldenChange]]:
    """Measure the runtimes on the whole split through `stack` (default: the reference stack): what recording their
    goldens would change (nothing is written)."""
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    names = tuple(spec.name for spec in resolve_runtimes(runtimes or suite.run.runtimes))
    validate_runtimes(list(names))
    stack_spec = suite.stack_named(stack) if isinstance(stack, str) else stack
    store = golden_store(suite, stack_spec, golden_dir)
    cache = ArtifactCache(cache_dir or default_cache_dir())
    request = RunRequest(names, batch_size or suite.run.batch_size, stack=stack_spec, reference=False)
    measured = measure(suite, request, cache, track=track)
    return store, review(suite, measured, store)


def record_goldens(suite: Suite | str, runtimes: Sequence[str] | None = None, *, force: bool = False, **options: Any) -> list[GoldenChange]:
    """`review_goldens`, then `commit_goldens`: returns what changed."""
    store, changes = review_goldens(suite, runtimes, **options)
    return commit_goldens(store, changes, force)


def commit_goldens(store: GoldenStore, changes: list[GoldenChange], force: bool = False) -> list[GoldenChange]:
    """Write reviewed goldens atomically under the store's lock; refused when the model weights or the dataset
    differ from the goldens', unless `force`."""
    identity = blocked(changes)
    if identity and not force:
        raise HarnessError(
            f"refusing to update goldens: {'; '.join(identity)}",
            "a different model or dataset needs a deliberate decision: review the diff above, then re-run with --force",
        )
    write_goldens(changes, store)
    return changes


@dataclass
class ModelCheck:
    """`check_model`: each runtime's outputs against PyTorch's on the given inputs."""

    stats: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # runtime -> output -> max_abs, cosine
    checks: dict[str, list[Check]] = field(default_factory=dict)  # runtime -> its checks

    @property
    def passed(self) -> bool:
        return all(c.passed for checks in self.checks.values() for c in checks)

    def assert_passed(self) -> ModelCheck:
        failed = [(runtime, "torch", c) for runtime, checks in self.checks.items() for c in checks if not c.passed]
        if failed:
            raise ConformanceError("model", failed)
        return self


def check_model(
    model: nn.Module,
    example_inputs: Any,
    runtimes: Sequence[str] = ("ort-fp32",),
    tolerance: dict[str, float] | None = None,
    *,
    opset: int = 18,
    cache_dir: Path | None = None,
) -> ModelCheck:
    """Export `model` to ONNX (dynamic batch axis) and compare every runtime's outputs with PyTorch's on
    `example_inputs` (one tensor or array with a batch axis): the check written by hand with `torch.onnx.export`,
    a session and `np.testing.assert_allclose`.  `tolerance`: `max_abs` (default 1e-4), `min_cosine` (0.9999)."""
    import torch

    from exporters.artifacts import ModelArtifacts
    from exporters.onnx_export import export_onnx

    limits = {"max_abs": 1e-4, "min_cosine": 0.9999} | (tolerance or {})
    unknown = sorted(set(limits) - {"max_abs", "min_cosine"})
    if unknown:
        raise HarnessError(f"unknown tolerance keys {unknown}", "use max_abs and min_cosine")
    specs = resolve_runtimes(runtimes)
    array = np.ascontiguousarray(example_inputs.detach().cpu().numpy() if isinstance(example_inputs, torch.Tensor) else example_inputs)
    model = model.eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(array))
    wanted = [t.detach().cpu().numpy() for t in (expected if isinstance(expected, tuple | list) else [expected])]
    output_names = tuple(f"output_{i}" for i in range(len(wanted)))
    cache = ArtifactCache(cache_dir or default_cache_dir())
    key = {"artifact": "check-model", "model": repr(model), "state_sha256": _state_hash(model), "opset": opset}
    key |= {"torch": torch.__version__, "input": [list(array.shape[1:]), str(array.dtype)]}
    path = cache.get_or_build(
        "check-model", key, "model.onnx", lambda out: export_onnx(model, array, out, "input", output_names, opset, {})
    )
    artifacts = ModelArtifacts(cache, onnx_file=path)
    result = ModelCheck()
    for spec in specs:
        session = spec.open(artifacts)
        try:
            got = session.run({"input": array})
        finally:
            session.close()
        result.checks[spec.name] = []
        for name, want in zip(output_names, wanted, strict=True):
            a, b = got[name].astype(np.float64).ravel(), want.astype(np.float64).ravel()
            max_abs = float(np.max(np.abs(a - b), initial=0.0))
            norms = float(np.linalg.norm(a) * np.linalg.norm(b))
            cosine = float(a @ b / norms) if norms else float(np.array_equal(a, b))
            result.stats.setdefault(spec.name, {})[name] = {"max_abs": max_abs, "cosine": cosine}
            result.checks[spec.name] += [
                Check(f"{name}.max_abs", max_abs, limits["max_abs"], "<="),
                Check(f"{name}.min_cosine", cosine, limits["min_cosine"], ">="),
            ]
    return result


def _state_hash(model: nn.Module) -> str:
    """The weights, hashed: the export is cached under them."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
