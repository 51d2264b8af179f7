"""Which layer? The first intermediate tensor where a runtime leaves its precision's tolerance.

Marking every tensor as an output changes the engine under test (TensorRT fuses and picks kernels
around outputs; a Q/DQ model loses the pairs it was quantized with), so a few tensors are exposed at a
time, bisecting over the FP32 graph's topological order: a survey of evenly spaced probes, then the
interval before the first probe beyond tolerance is probed again until it holds no unprobed tensor, and
likewise the interval that adds the most error. Quantized tensors are read after their DequantizeLinear,
so the quantized engine stays quantized. Memory is bounded by `samples x per_round` tensors.

The reference is an ONNX-based runtime (ONNX Runtime FP32 by default) on the same FP32 graph: its
tensors are the ones the runtime under test is compared with, name for name; the FP32 graph itself is
parity-checked against PyTorch when it is exported.

A PyTorch runtime (torch-fp16, torch-bf16, torch-cuda-*) runs no ONNX graph: its module outputs, read by
forward hooks, are compared with those of a PyTorch reference (torch-fp32 by default), module name for module
name, with the same bisection, table, JSON and plot. Hooks only read, so nothing is fused differently.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporters.graph import Probe, probes
from harness.analysis.sensitivity import forward_hooks
from harness.core.environment import environment
from harness.core.errors import HarnessError
from harness.data.feed import first_samples
from harness.report.tables import markdown_table
from harness.run.prepared import SuiteRun
from harness.run.sessions import feed_session, open_session, run_session
from runtimes import RuntimeSpec, Session, get_runtime
from runtimes.base import TensorInfo
from runtimes.precision import judged_precision

ONNX_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
ONNX_REFERENCE = "ort-fp32"
TORCH_BACKEND, TORCH_REFERENCE = "torch", "torch-fp32"
PROBED = "probe:"  # prefix of the module outputs a torch session returns beside the model's own
HEADERS = ("#", "layer", "tensor", "op", "max abs", "rel L2", "cosine", "growth", "")


@dataclass(frozen=True)
class TensorError:
    probe: Probe
    max_abs: float
    rel_l2: float
    cosine: float

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.rel_l2))

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.probe) | {"max_abs": self.max_abs, "rel_l2": self.rel_l2, "cosine": self.cosine}


def tensor_error(probe: Probe, got: np.ndarray, want: np.ndarray) -> TensorError:
    """Max abs, relative L2 and cosine over all samples of one tensor (inf / nan where the runtime overflowed); NaN on
    both sides is padding (a per-image stack's tensors padded to the largest size) and is left out."""
    a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    padding = np.isnan(a) & np.isnan(b)
    if padding.any():
        a, b = a[~padding], b[~padding]
    if not np.all(np.isfinite(a)):
        return TensorError(probe, float("inf"), float("inf"), float("nan"))
    diff = a - b
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    rel = float(np.linalg.norm(diff)) / norm_b if norm_b > 0 else (0.0 if norm_a == 0 else float("inf"))
    cosine = float(a @ b) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float(norm_a == norm_b)
    return TensorError(probe, float(np.max(np.abs(diff))) if diff.size else 0.0, rel, cosine)


@dataclass
class Localization:
    """The probed tensors of one runtime against the reference, and what they say."""

    runtime: str
    against: str
    precision: str  # the profile judging it (lowest of requested and executed)
    tolerance: float
    samples: int
    total_probes: int
    session: dict[str, str]
    recipe: list[str]
    measured: dict[int, TensorError] = field(default_factory=dict)
    rounds: list[list[int]] = field(default_factory=list)
    # per round: max abs change of the model's own outputs that exposing its tensors caused (a broken fusion)
    disturbance: list[float] = field(default_factory=list)

    def ordered(self) -> list[TensorError]:
        return [self.measured[i] for i in sorted(self.measured)]

    def growth(self) -> dict[int, float]:
        """Factor by which each probed tensor's relative L2 error exceeds that of the probed tensor before it (a
        ratio, so a layer that rescales its output, e.g. centres the logits, is not taken for one adding error);
        the first is measured against 1% of the tolerance."""
        added, previous = {}, self.tolerance / 100
        for error in self.ordered():
            added[error.probe.index] = error.rel_l2 / max(previous, 1e-12) if error.finite else float("inf")
            previous = error.rel_l2 if error.finite else previous
        return added

    @property
    def first_divergent(self) -> TensorError | None:
        return next((e for e in self.ordered() if not e.rel_l2 <= self.tolerance), None)

    @property
    def worst(self) -> TensorError | None:
        """The probed tensor that adds the most error (the first overflow, where there is one)."""
        growth = self.growth()
        if not growth:
            return None
        index = max(growth, key=lambda i: (growth[i], -i))
        return self.measured[index]

    def unprobed_between(self, low: int, high: int) -> list[int]:
        return [i for i in range(low + 1, high) if i not in self.measured]

    def previous_probed(self, index: int) -> int:
        return max((i for i in self.measured if i < index), default=-1)

    def summary(self) -> str:
        first, worst = self.first_divergent, self.worst
        where = (
            f"first beyond rel L2 {self.tolerance:g}: {first.probe.layer} ({first.probe.tensor})"
            if first
            else f"no tensor beyond rel L2 {self.tolerance:g}"
        )
        adds = f"; adds most error: {worst.probe.layer} ({worst.probe.tensor})" if worst else ""
        return f"{self.runtime} vs {self.against} [{self.precision}]: {where}{adds}"

    def notes(self) -> list[str]:
        """Rounds whose exposed tensors changed the model's own outputs: the engine fused differently around them."""
        return [
            f"exposing {', '.join(self.measured[i].probe.tensor for i in indices)} changed {self.runtime}'s outputs by up to "
            f"{change:.3g} (max abs): a fusion around them was broken, so their errors describe a slightly different engine"
            for indices, change in zip(self.rounds, self.disturbance, strict=True)
            if change > 0
        ]

    def rows(self) -> list[list[str]]:
        growth = self.growth()
        first, worst = self.first_divergent, self.worst
        rows = []
        for error in self.ordered():
            p = error.probe
            mark = "first divergent" if first and p.index == first.probe.index else ""
            if worst and p.index == worst.probe.index:
                mark = f"{mark}, adds most" if mark else "adds most"
            rows.append(
                [str(p.index), p.layer, p.tensor, p.op, f"{error.max_abs:.3g}", f"{error.rel_l2:.3g}", f"{error.cosine:.6f}",
                 f"x{growth[p.index]:.3g}", mark]
            )  # fmt: skip
        return rows

    def describe(self) -> dict[str, Any]:
        first, worst, growth = self.first_divergent, self.worst, self.growth()
        return {
            "runtime": self.runtime,
            "against": self.against,
            "precision": self.precision,
            "max_layer_rel_l2": self.tolerance,
            "samples": self.samples,
            "probes_total": self.total_probes,
            "probes_measured": len(self.measured),
            "rounds": self.rounds,
            "session": self.session,
            "recipe": self.recipe,
            "first_divergent": first.describe() if first else None,
            "adds_most_error": worst.describe() if worst else None,
            "disturbance": self.disturbance,
            "notes": self.notes(),
            "tensors": [e.describe() | {"growth": growth[e.probe.index]} for e in self.ordered()],
        }


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference of two output arrays, 0 where they are identical (non-finite values in the same places)."""
    if np.array_equal(a, b, equal_nan=True):
        return 0.0
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)) if np.array_equal(finite, np.isfinite(b)) else float("inf")


def _onnx_based(name: str, role: str) -> RuntimeSpec:
    spec = get_runtime(name)
    if spec.backend not in ONNX_BACKENDS:
        raise HarnessError(
            f"{role} '{name}' runs no ONNX graph, so its intermediate tensors have no names to compare",
            "use an ONNX-based runtime (ort-*, ov-*, trt-*); the reference defaults to ort-fp32 on the exported FP32 graph",
        )
    spec.require_available()
    return spec


def _torch_reference(name: str, runtime: str) -> RuntimeSpec:
    spec = get_runtime(name)
    if spec.backend != TORCH_BACKEND:
        raise HarnessError(
            f"--against '{name}' is no PyTorch runtime, so it has no module outputs to compare with {runtime}'s",
            f"use a PyTorch runtime; the reference of torch runtimes defaults to {TORCH_REFERENCE}",
        )
    spec.require_available()
    return spec


class Bisection(ABC):
    """Probes one runtime's intermediate tensors against the reference's, a few per session: a survey, then
    bisection before the first divergent tensor and before the one adding the most error."""

    def __init__(self, run: SuiteRun, spec: RuntimeSpec, reference: RuntimeSpec, samples: int, per_round: int, batch_size: int) -> None:
        if per_round < 1:
            raise HarnessError(f"--per-round {per_round}: must be at least 1", "e.g. --per-round 4")
        self.run, self.batch_size, self.per_round = run, batch_size, per_round
        self.spec, self.reference = spec, reference
        self.inputs = first_samples(run.inputs, samples)
        self.probes = self._probes()
        if not self.probes:
            raise HarnessError(f"the model of suite {run.suite.name} has no intermediate tensor to probe", "is it one node?")
        self._reference_values: dict[str, np.ndarray] = {}
        self._unmarked = run_session(self.spec, run.artifacts, self.inputs, batch_size, lambda: None)[0]

    @abstractmethod
    def _probes(self) -> list[Probe]:
        """The tensors that can be compared, in the order the model computes them."""

    @abstractmethod
    def _values(self, spec: RuntimeSpec, tensors: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
        """The probed tensors and the model's own outputs of one session of `spec` exposing `tensors`, and what it ran."""

    @abstractmethod
    def recipe(self) -> list[str]:
        """What the runtime under test runs, in words."""

    def measure(self, result: Localization, indices: list[int]) -> None:
        indices = [i for i in dict.fromkeys(indices) if i not in result.measured]
        if not indices:
            return
        tensors = tuple(self.probes[i].tensor for i in indices)
        got, own, result.session = self._values(self.spec, tensors)
        result.disturbance.append(max(_changed(own[n], self._unmarked[n]) for n in own))
        wanted = [t for t in tensors if t not in self._reference_values]
        if wanted:
            self._reference_values |= self._values(self.reference, tuple(wanted))[0]
        for index, tensor in zip(indices, tensors, strict=True):
            result.measured[index] = tensor_error(self.probes[index], got[tensor], self._reference_values[tensor])
        result.rounds.append(indices)

    def spread(self, low: int, high: int) -> list[int]:
        """Up to `per_round` unprobed indices evenly spread over (low, high], `high` included."""
        candidates = list(range(low + 1, high + 1))
        if len(candidates) <= self.per_round:
            return candidates
        picks = np.linspace(0, len(candidates) - 1, self.per_round).round().astype(int)
        return [candidates[i] for i in picks]

    def localize(self) -> Localization:
        suite, spec = self.run.suite, self.spec
        result = Localization(spec.name, self.reference.name, spec.precision, 0.0, len(self.inputs), len(self.probes), {}, self.recipe())
        last = len(self.probes) - 1
        self.measure(result, self.spread(-1, last))  # survey
        result.precision = judged_precision(spec.precision, result.session.get("executed", spec.precision))
        result.tolerance = suite.tolerances.for_precision(result.precision).max_layer_rel_l2
        self._refine(result, lambda: result.first_divergent)
        self._refine(result, lambda: result.worst)
        return result

    def _refine(self, result: Localization, target: Callable[[], TensorError | None]) -> None:
        """Probe the interval before `target()` until no unprobed tensor is left in it (bisection)."""
        while (found := target()) is not None:
            high = found.probe.index
            low = result.previous_probed(high)
            if not result.unprobed_between(low, high):
                return
            self.measure(result, [i for i in self.spread(low, high - 1) if i not in result.measured])


class Localizer(Bisection):
    """An ONNX-based runtime's intermediate tensors, exposed as graph outputs, against the same tensors of an
    ONNX-based reference on the FP32 graph."""

    def _probes(self) -> list[Probe]:
        fp32 = onnx.load(str(self.run.artifacts.onnx_path("fp32")), load_external_data=False)
        graph = onnx.load(str(self.run.artifacts.onnx_path(self.spec.precision))).graph
        computed = {name for node in graph.node for name in node.output}
        return [p for p in probes(fp32) if p.tensor in computed]  # a fused-away tensor cannot be compared

    def _values(self, spec: RuntimeSpec, tensors: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
        artifacts = self.run.artifacts.derive(mark=tensors)
        outputs, _seconds, session = run_session(spec, artifacts, self.inputs, self.batch_size, lambda: None)
        marked = artifacts.marked_outputs(spec.precision)
        own = {name: outputs[name] for name in self._unmarked}
        return {t: outputs[marked[t]] for t in tensors}, own, session

    def recipe(self) -> list[str]:
        return self.run.artifacts.recipe(self.spec.precision)


@dataclass(frozen=True)
class _Site:
    """Where a probed module output comes from: the module, its call within one forward, the tensor among its outputs."""

    module: str
    call: int
    position: int


def _output_tensors(output: Any) -> list[Any]:
    import torch

    items = output if isinstance(output, (tuple, list)) else (output,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


class _Exposing:
    """A torch session whose batches also return the module outputs its hooks captured (as `PROBED + tensor`), so
    the samples are ordered and the padding rows dropped as for the model's own outputs."""

    def __init__(self, session: Session, captured: dict[str, np.ndarray], calls: Counter[str]) -> None:
        self._session, self._captured, self._calls = session, captured, calls

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._calls.clear()
        outputs = self._session.run(feeds)
        exposed = {PROBED + tensor: value for tensor, value in self._captured.items()}
        self._captured.clear()
        return outputs | exposed

    def describe(self) -> dict[str, str]:
        return self._session.describe()

    def inputs(self) -> list[TensorInfo]:
        return self._session.inputs()

    def outputs(self) -> list[TensorInfo]:
        return self._session.outputs()

    def close(self) -> None:
        self._session.close()


class TorchLocalizer(Bisection):
    """A PyTorch runtime's module outputs, read by forward hooks, against those of a PyTorch reference (torch-fp32):
    every module but the whole model, in the order its forward returns, once per call (`relu#2`: its second call in
    one forward); an output that is the very tensor another module returned (a container's, an in-place op's,
    an Identity's) adds nothing and is not probed."""

    def _probes(self) -> list[Probe]:
        import torch

        model = self.run.artifacts.torch_model()
        found: list[tuple[str, int, int, str]] = []  # module, call, position, class
        first = torch.from_numpy(self.inputs.first_batch(1))
        seen: dict[int, Any] = {id(first): first}  # id -> tensor already returned (kept alive, so ids stay unique)
        calls: Counter[str] = Counter()

        def hook_for(name: str) -> Callable[..., None]:
            def hook(module: Any, _args: Any, output: Any) -> None:
                for position, tensor in enumerate(_output_tensors(output)):
                    if id(tensor) not in seen:
                        seen[id(tensor)] = tensor
                        found.append((name, calls[name], position, type(module).__name__))
                calls[name] += 1

            return hook

        with forward_hooks([(module, hook_for(name)) for name, module in model.named_modules() if name]), torch.inference_mode():
            model(first)
        positions = Counter((name, call) for name, call, _, _ in found)
        self._sites: dict[str, _Site] = {}
        result = []
        for name, call, position, kind in found:
            tensor = name + (f"#{call + 1}" if call else "") + (f"[{position}]" if positions[(name, call)] > 1 or position else "")
            self._sites[tensor] = _Site(name, call, position)
            result.append(Probe(len(result), tensor, name, kind))
        return result

    def _values(self, spec: RuntimeSpec, tensors: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
        import torch

        modules = dict(self.run.artifacts.torch_model().named_modules())
        wanted: dict[str, dict[tuple[int, int], str]] = {}  # module -> (call, position) -> tensor
        for tensor in tensors:
            site = self._sites[tensor]
            wanted.setdefault(site.module, {})[(site.call, site.position)] = tensor
        captured: dict[str, np.ndarray] = {}
        calls: Counter[str] = Counter()

        def hook_for(name: str) -> Callable[..., None]:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                for position, value in enumerate(_output_tensors(output)):
                    tensor = wanted[name].get((calls[name], position))
                    if tensor:  # a copy: an in-place op later in the forward must not change it
                        captured[tensor] = value.detach().to("cpu", torch.float32, copy=True).numpy()
                calls[name] += 1

            return hook

        with forward_hooks([(modules[name], hook_for(name)) for name in wanted]):
            opened = open_session(spec, self.run.artifacts)
            try:
                session = _Exposing(opened.session, captured, calls)
                outputs, _seconds = feed_session(session, opened.input_name, self.inputs, self.batch_size, lambda: None)
            finally:
                opened.session.close()
        own = {name: outputs[name] for name in self._unmarked}
        return {t: outputs[PROBED + t] for t in tensors}, own, opened.describe

    def recipe(self) -> list[str]:
        return [f"pytorch({self.run.suite.model.builder})", f"{self.spec.precision} on {self.spec.device}"]


def localizer(run: SuiteRun, runtime: str, against: str | None, samples: int, per_round: int, batch_size: int) -> Bisection:
    """The bisection for `runtime`: module outputs for a PyTorch runtime (against torch-fp32 unless told), graph
    tensors for an ONNX-based one (against ort-fp32 unless told)."""
    spec = get_runtime(runtime)
    if spec.backend == TORCH_BACKEND:
        spec.require_available()
        return TorchLocalizer(run, spec, _torch_reference(against or TORCH_REFERENCE, runtime), samples, per_round, batch_size)
    reference = _onnx_based(against or ONNX_REFERENCE, "--against")
    return Localizer(run, _onnx_based(runtime, "runtime"), reference, samples, per_round, batch_size)


def localize(run: SuiteRun, runtimes: list[str], against: str | None, samples: int, per_round: int, batch_size: int) -> list[Localization]:
    return [localizer(run, name, against, samples, per_round, batch_size).localize() for name in runtimes]


def plot(results: list[Localization], path: Path) -> Path:
    """Relative L2 error along depth, one line per runtime, its tolerance dashed, the first divergent tensor circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(11, 4.5))
    ceiling = 10.0
    for result in results:
        errors = result.ordered()
        xs = [e.probe.index for e in errors]
        ys = [min(max(e.rel_l2, 1e-9), ceiling) if e.finite else ceiling for e in errors]
        (line,) = axes.plot(xs, ys, marker="o", markersize=3, label=f"{result.runtime} vs {result.against}")
        axes.axhline(result.tolerance, color=line.get_color(), linestyle="--", linewidth=0.8)
        first = result.first_divergent
        if first:
            y = min(first.rel_l2, ceiling) if first.finite else ceiling
            axes.plot([first.probe.index], [y], marker="o", markersize=11, fillstyle="none", color=line.get_color())
            axes.annotate(first.probe.layer, (first.probe.index, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    labels = {e.probe.index: e.probe.layer for result in results for e in result.ordered()}
    axes.set_xticks(sorted(labels), [labels[i] for i in sorted(labels)], rotation=70, fontsize=6)
    axes.set_yscale("log")
    axes.set_ylabel("relative L2 error vs reference (non-finite at the top)")
    axes.set_title("error along depth (dashed: the precision's max_layer_rel_l2)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(results: list[Localization], run: SuiteRun, report_dir: Path) -> list[Path]:
    """localize.json, localize.md and localize.png under `report_dir`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    data = {"suite": run.suite.name, "environment": environment(), "runtimes": [r.describe() for r in results]}
    lines = [f"# Localization: suite {run.suite.name}", ""]
    for result in results:
        lines += [f"## {result.summary()}", "", f"recipe: {' -> '.join(result.recipe)}; {result.samples} samples; "
                  f"{len(result.measured)}/{result.total_probes} tensors probed in {len(result.rounds)} rounds", ""]  # fmt: skip
        lines += [*markdown_table(HEADERS, result.rows()), "", *(f"- note: {n}" for n in result.notes()), ""]
    paths = [report_dir / "localize.json", report_dir / "localize.md"]
    paths[0].write_text(json.dumps(data, indent=1, default=str) + "\n")
    paths[1].write_text("\n".join(lines))
    return [*paths, plot(results, report_dir / "localize.png")]
