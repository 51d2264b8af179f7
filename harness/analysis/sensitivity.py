"""Per-layer sensitivity and precision fallback.

- Precision sensitivity: the model at the runtime's precision with one layer kept in FP32 (a recipe step,
  `ModelArtifacts.derive(keep_fp32=...)`), for every layer: the task metric and the outputs against the
  reference, ranked by how much error is left (the layer whose keeping removes the most error first).
- Fallback: layers kept one by one in that order until the suite's tolerance passes.
- Noise injection (the layer-wise robustness analysis of the Walking Noise paper): additive
  (`y + s * std(y) * e`) and multiplicative (`y * (1 + s * e)`) Gaussian noise at one layer's output of the
  PyTorch model, at several levels `s`, with a fixed seed per layer, kind and level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from exporters.graph import DATA_MOVEMENT_OPS, initializer_bytes, node_layers
from harness.core.environment import environment
from harness.core.errors import HarnessError
from harness.judge.compare import Baseline, Comparison, compare
from harness.judge.verdict import compare_to_reference
from harness.report.tables import markdown_table
from harness.run.outputs import Inference
from harness.run.prepared import SuiteRun
from runtimes import get_runtime

NOISE_KINDS = ("additive", "multiplicative")
TRIAL_HEADERS = ("rank", "kept in fp32", "metric", "delta", "max abs", "mean abs", "agree", "flips", "size MB", "verdict")
LABELLED_LAYERS = 8  # noise.png names this many layers per panel, by the metric they cost; the rest are grey


def candidate_layers(model: onnx.ModelProto) -> list[str]:
    """Layers that compute something (not only reshape or copy data), in topological order."""
    layers = node_layers(model)
    return list(dict.fromkeys(layers[n.name] for n in model.graph.node if n.op_type not in DATA_MOVEMENT_OPS))


@dataclass
class Trial:
    """The model at the runtime's precision with `kept` layers in FP32, against the reference."""

    kept: tuple[str, ...]
    comparison: Comparison
    size_bytes: int

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def error_left(self) -> tuple[bool, int, float]:
        """Sort key: failing first, then flips, then mean abs error of the outputs."""
        return (not self.passed, len(self.comparison.flips), self.comparison.worst.mean_abs)

    def row(self, rank: str) -> list[str]:
        c = self.comparison
        verdict = "PASS" if self.passed else "FAIL: " + ", ".join(k.name for k in c.checks if not k.passed)
        numbers = (c.metric, c.metric_delta, c.worst.max_abs, c.worst.mean_abs, c.top1_agreement)
        metric, delta, max_abs, mean_abs, agree = (f"{v:{f}}" for v, f in zip(numbers, (".4f", "+.4f", ".3g", ".3g", ".4f"), strict=True))
        kept = ", ".join(self.kept) or "(none)"
        return [rank, kept, metric, delta, max_abs, mean_abs, agree, str(len(c.flips)), f"{self.size_bytes / 1e6:.3f}", verdict]

    def describe(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "kept": list(self.kept),
            "passed": self.passed,
            "metric": c.metric,
            "metric_delta": c.metric_delta,
            "max_abs": c.worst.max_abs,
            "mean_abs": c.worst.mean_abs,
            "agreement": c.top1_agreement,
            "flips": len(c.flips),
            "size_bytes": self.size_bytes,
        }


@dataclass
class Sensitivity:
    runtime: str
    precision: str
    reference: str
    samples: int
    baseline: Trial  # nothing kept beyond the suite's own keep list
    layers: list[Trial] = field(default_factory=list)  # ranked: most sensitive first

    def ranking(self) -> list[str]:
        return [t.kept[-1] for t in self.layers]

    def rows(self) -> list[list[str]]:
        return [self.baseline.row("-")] + [t.row(str(i + 1)) for i, t in enumerate(self.layers)]

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "reference": self.reference,
            "samples": self.samples,
            "baseline": self.baseline.describe(),
            "layers": [t.describe() for t in self.layers],
        }


class Trials:
    """Runs the suite's model at one runtime's precision with chosen layers kept in FP32."""

    def __init__(self, run: SuiteRun, runtime: str, batch_size: int) -> None:
        self.run, self.runtime, self.batch_size = run, runtime, batch_size
        self.spec = get_runtime(runtime)
        if self.spec.precision not in ("fp16", "int8"):
            raise HarnessError(f"runtime '{runtime}' runs {self.spec.precision}: no layer to keep in FP32", "use an fp16 or int8 runtime")
        self.spec.require_available()
        self.reference = run.infer(run.suite.run.reference, batch_size)
        self.base_keep = run.artifacts.keep_fp32.get(self.spec.precision, ())

    def layers(self) -> list[str]:
        model = onnx.load(str(self.run.artifacts.onnx_path("fp32")), load_external_data=False)
        return [layer for layer in candidate_layers(model) if layer not in self.base_keep]

    def trial(self, kept: tuple[str, ...]) -> Trial:
        artifacts = self.run.artifacts.derive(keep_fp32={self.spec.precision: (*self.base_keep, *kept)})
        inference = self.run.infer(self.runtime, self.batch_size, artifacts=artifacts)
        run = self.run
        comparison = compare_to_reference(run.suite, run.inputs.ids, run.inputs.labels, inference, self.reference, run.task)
        return Trial(kept, comparison, initializer_bytes(artifacts.onnx_path(self.spec.precision)))

    def sensitivity(self, baseline: Trial | None = None) -> Sensitivity:
        """Every candidate layer kept in FP32 alone, ranked by the error left (`baseline`: the trial keeping none,
        when already run)."""
        baseline = baseline or self.trial(())
        ranked = sorted((self.trial((layer,)) for layer in self.layers()), key=Trial.error_left)
        return Sensitivity(self.runtime, self.spec.precision, self.run.suite.run.reference, len(self.run.inputs), baseline, ranked)

    def fallback(self, ranking: list[str], max_layers: int | None = None) -> list[Trial]:
        """Keep layers one by one in `ranking` order until the suite's tolerance passes (or `max_layers` are kept)."""
        steps: list[Trial] = []
        for count in range(1, min(len(ranking), max_layers or len(ranking)) + 1):
            steps.append(self.trial(tuple(ranking[:count])))
            if steps[-1].passed:
                break
        return steps


def write_sensitivity(
    report_dir: Path, suite: str, sensitivity: Sensitivity | None, fallback: list[Trial], noise: Noise | None
) -> list[Path]:
    """sensitivity.json, sensitivity.md (and noise.png with noise injection) under `report_dir`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"suite": suite, "environment": environment()}
    lines = [f"# Layer sensitivity: suite {suite}", ""]
    if sensitivity:
        data["precision"] = sensitivity.describe()
        lines += [f"## {sensitivity.runtime}: one layer kept in FP32 at a time ({sensitivity.samples} samples)", ""]
        lines += [*markdown_table(TRIAL_HEADERS, sensitivity.rows()), ""]
    if fallback:
        data["fallback"] = [t.describe() for t in fallback]
        lines += ["## Fallback: layers kept in sensitivity order until the tolerance passes", ""]
        lines += [*markdown_table(TRIAL_HEADERS, [t.row(str(i + 1)) for i, t in enumerate(fallback)]), ""]
    paths = [report_dir / "sensitivity.json", report_dir / "sensitivity.md"]
    if noise:
        data["noise"] = noise.describe()
        lines += [f"## Noise injection at each layer's output (torch, {noise.samples} samples, metric {noise.metric_name})", ""]
        lines += [*markdown_table(noise.headers(), noise.rows()), ""]
        paths.append(noise.plot(report_dir / "noise.png"))
    paths[0].write_text(json.dumps(data, indent=1, default=str) + "\n")
    paths[1].write_text("\n".join(lines))
    return paths


# -- noise injection -----------------------------------------------------------------------------


@dataclass
class Noise:
    metric_name: str
    samples: int
    reference_metric: float
    levels: tuple[float, ...]
    metric: dict[str, dict[str, list[float]]]  # kind -> layer -> metric per level
    agreement: dict[str, dict[str, list[float]]]

    def headers(self) -> tuple[str, ...]:
        return ("layer", *(f"{kind[:4]}. {level:g}" for kind in NOISE_KINDS for level in self.levels))

    def rows(self) -> list[list[str]]:
        layers = list(self.metric[NOISE_KINDS[0]])
        return [[layer, *(f"{v:.4f}" for kind in NOISE_KINDS for v in self.metric[kind][layer])] for layer in layers]

    def describe(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "reference_metric": self.reference_metric, "metric": self.metric, "agreement": self.agreement}

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(NOISE_KINDS), figsize=(12, 4.5), sharey=True)
        colours = plt.get_cmap("tab10").colors
        for ax, kind in zip(axes, NOISE_KINDS, strict=True):
            drop = {layer: self.reference_metric - min(values) for layer, values in self.metric[kind].items()}
            telling = [layer for layer in sorted(drop, key=lambda layer: -drop[layer]) if drop[layer] > 0][:LABELLED_LAYERS]
            for layer, values in self.metric[kind].items():
                points = ([0.0, *self.levels], [self.reference_metric, *values])
                if layer in telling:
                    rank = telling.index(layer)
                    ax.plot(*points, marker="o", markersize=3, color=colours[rank % 10], label=f"{layer} (-{100 * drop[layer]:.1f})")
                else:
                    ax.plot(*points, color="0.75", linewidth=0.8, zorder=0)
            ax.set_title(f"{kind} Gaussian noise at one layer's output")
            ax.set_xlabel("noise level s")
            if telling:  # the layers that matter, named; the rest grey
                ax.legend(fontsize=6, title=f"most sensitive ({self.metric_name} drop, points); others grey", title_fontsize=6)
            else:
                ax.text(0.5, 0.5, f"no layer moves {self.metric_name}", transform=ax.transAxes, ha="center", color="0.4")
        axes[0].set_ylabel(self.metric_name)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path


@contextmanager
def forward_hooks(hooks: list[tuple[Any, Callable[..., Any]]]) -> Iterator[None]:
    """Each (module, hook) registered as a forward hook for the duration of the block; a copy of a module made
    inside it (a torch session's `.half()` or CUDA copy) carries the hook too."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _noise_at(module: Any, kind: str, level: float, seed: int) -> Iterator[None]:
    import torch

    generator = torch.Generator().manual_seed(seed)

    def hook(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
        if kind == "additive":
            return output + level * output.std() * noise
        return output * (1 + level * noise)

    with forward_hooks([(module, hook)]):
        yield


def noise_injection(run: SuiteRun, levels: tuple[float, ...], batch_size: int, reference: Inference) -> Noise:
    """Metric and agreement of the PyTorch model with noise at one module's output, for every module that
    owns parameters (the layers `--keep-fp32` names), each kind and level; `reference`: the clean run."""
    runtime = reference.runtime
    model = run.artifacts.torch_model()
    modules = dict(model.named_modules())
    fp32 = onnx.load(str(run.artifacts.onnx_path("fp32")), load_external_data=False)
    layers = [layer for layer in candidate_layers(fp32) if layer in modules and any(True for _ in modules[layer].parameters(recurse=False))]
    reference_metric = run.task.metric(reference.predictions, run.inputs.labels)
    metric: dict[str, dict[str, list[float]]] = {kind: {} for kind in NOISE_KINDS}
    agreement: dict[str, dict[str, list[float]]] = {kind: {} for kind in NOISE_KINDS}
    for index, layer in enumerate(layers):
        for k, kind in enumerate(NOISE_KINDS):
            for j, level in enumerate(levels):
                with _noise_at(modules[layer], kind, level, seed=10_000 * index + 100 * k + j):
                    noisy = run.infer(runtime, batch_size)
                metric[kind].setdefault(layer, []).append(run.task.metric(noisy.predictions, run.inputs.labels))
                agreed = compare(runtime, Baseline("noise"), run.inputs.ids, run.inputs.labels, noisy, reference, run.task)
                agreement[kind].setdefault(layer, []).append(agreed.top1_agreement)
    return Noise(run.task.metric_name, len(run.inputs), reference_metric, levels, metric, agreement)
