"""Ready ONNX models on ONNX's test-data layout.

`DIR/test_data_set_N/input_K.pb` (a serialized TensorProto, as ONNX's backend
tests store them) with optional `output_K.pb` as the expected outputs.
`input_K.npy` / `output_K.npy` and `inputs.npz` / `outputs.npz` (keys = tensor
names) work too, and DIR may itself be one test-data set.  Without expected
outputs the first runtime is the baseline for the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from harness.core.environment import environment
from harness.core.errors import HarnessError
from harness.judge.compare import output_stats
from harness.judge.verdict import SCHEMA_VERSION
from harness.report.tables import markdown_table, render_table
from runtimes import get_runtime

_TENSOR_FILE = re.compile(r"^(input|output)_(\d+)\.(pb|npy)$")


@dataclass(frozen=True)
class TestDataSet:
    name: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


def _read_tensor(path: Path) -> tuple[str | None, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return None, np.load(path, allow_pickle=False)
        import onnx
        from onnx import numpy_helper

        proto = onnx.TensorProto()
        proto.ParseFromString(path.read_bytes())
        return proto.name or None, numpy_helper.to_array(proto)
    except Exception as exc:
        raise HarnessError(
            f"{path}: not a readable tensor file ({exc})",
            "write it with onnx.numpy_helper.from_array(...).SerializeToString() or numpy.save",
        ) from exc


def _collect(folder: Path, kind: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Tensors of one kind ('input' or 'output') in a test-data set, by tensor name."""
    found: dict[str, np.ndarray] = {}
    npz = folder / f"{kind}s.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as data:
                found.update({key: data[key] for key in data.files})
        except Exception as exc:
            raise HarnessError(f"{npz}: not a readable npz file ({exc})", "write it with numpy.savez(path, name=array)") from exc
    files = sorted((int(m.group(2)), p) for p in folder.iterdir() if (m := _TENSOR_FILE.match(p.name)) and m.group(1) == kind)
    for index, path in files:
        stored_name, array = _read_tensor(path)
        if stored_name in names:
            found[stored_name] = array
        elif index < len(names):
            found[names[index]] = array
        else:
            raise HarnessError(
                f"{path}: index {index} but the model has {len(names)} {kind}s {list(names)}", "rename the file or set the tensor name"
            )
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise HarnessError(
            f"{folder}: {kind} tensors {unknown} are not {kind}s of the model {list(names)}", "name them after the model's tensors"
        )
    return found


def test_folders(directory: Path) -> list[Path]:
    """The test-data sets of `directory` in number order (`directory` itself when it holds one set)."""
    if not directory.is_dir():
        raise HarnessError(f"inputs folder not found: {directory}", "pass a folder holding test_data_set_N/ or input_K.pb files")
    folders = sorted((p for p in directory.glob("test_data_set_*") if p.is_dir()), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    return folders or [directory]


def has_expected(folder: Path) -> bool:
    return (folder / "outputs.npz").is_file() or any((m := _TENSOR_FILE.match(p.name)) and m.group(1) == "output" for p in folder.iterdir())


def load_test_set(folder: Path, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> TestDataSet:
    inputs = _collect(folder, "input", input_names)
    if not inputs:
        raise HarnessError(f"{folder}: no input_K.pb, input_K.npy or inputs.npz files", "see `harness run --help` for the layout")
    missing = sorted(set(input_names) - set(inputs))
    if missing:
        raise HarnessError(f"{folder}: missing model inputs {missing}", "add an input file for each model input")
    return TestDataSet(folder.name, inputs, _collect(folder, "output", output_names))


@dataclass(frozen=True)
class TensorCheck:
    test_set: str
    runtime: str
    output: str
    against: str
    max_abs: float
    max_rel: float
    mismatched: int
    total: int

    @property
    def passed(self) -> bool:
        return self.mismatched == 0

    def row(self) -> list[str]:
        verdict = "PASS" if self.passed else f"FAIL: {self.mismatched}/{self.total} elements outside tolerance"
        return [self.test_set, self.runtime, self.output, self.against, f"{self.max_abs:.3e}", f"{self.max_rel:.3e}", verdict]


@dataclass
class TestDataReport:
    model: Path
    rtol: float
    atol: float
    checks: list[TensorCheck] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    HEADERS = ("set", "runtime", "output", "vs", "max abs", "max rel", "verdict")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def describe(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "onnx-testdata",
            "created": self.created,
            "model": str(self.model),
            "rtol": self.rtol,
            "atol": self.atol,
            "environment": environment(),
            "checks": [{**c.__dict__, "passed": c.passed} for c in self.checks],
            "passed": self.passed,
        }

    def render(self, console: Console) -> None:
        render_table(console, f"{self.model.name}: rtol {self.rtol:g}, atol {self.atol:g}", self.HEADERS, [c.row() for c in self.checks])
        console.print("[green]all checks passed[/green]" if self.passed else "[red]some checks failed[/red]")

    def to_markdown(self) -> str:
        title = f"# {self.model.name}: {'PASS' if self.passed else 'FAIL'}"
        return (
            "\n".join(
                [
                    title,
                    "",
                    f"rtol {self.rtol:g}, atol {self.atol:g}, {self.created}.",
                    "",
                    *markdown_table(self.HEADERS, [c.row() for c in self.checks]),
                ]
            )
            + "\n"
        )


def _check(
    test_set: str, runtime: str, output: str, against: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float
) -> TensorCheck:
    if got.shape != want.shape:
        return TensorCheck(
            test_set, runtime, output, against, float("inf"), float("inf"), max(got.size, want.size), max(got.size, want.size)
        )
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    stats = output_stats(got64.reshape(1, -1), want64.reshape(1, -1))
    outside = np.abs(got64 - want64) > atol + rtol * np.abs(want64)
    return TensorCheck(test_set, runtime, output, against, stats.max_abs, stats.max_rel, int(outside.sum()), int(want.size))


def run_test_data(model: Path, directory: Path, runtimes: list[str], rtol: float, atol: float, cache: ArtifactCache) -> TestDataReport:
    import onnx

    if not model.is_file():
        raise HarnessError(f"ONNX model not found: {model}", "pass an existing .onnx file to --onnx")
    try:
        onnx.checker.check_model(str(model))
    except Exception as exc:
        raise HarnessError(f"{model}: not a valid ONNX model ({str(exc).splitlines()[0]})", "re-export the model") from exc
    specs = [get_runtime(name) for name in runtimes]
    artifacts = ModelArtifacts(cache, onnx_file=model)
    folders = test_folders(directory)
    if len(runtimes) < 2 and not all(has_expected(f) for f in folders):
        raise HarnessError(
            f"{directory}: no output_K files to compare with and only one runtime", "add output_K.pb files or a second --runtime"
        )
    sessions = {spec.name: spec.open(artifacts) for spec in specs}
    report = TestDataReport(model, rtol, atol)
    for folder in folders:  # one set in memory at a time
        test_set = load_test_set(folder, artifacts.input_names, artifacts.output_names)
        outputs = {name: session.run(test_set.inputs) for name, session in sessions.items()}
        against, baseline = ("expected", test_set.expected) if test_set.expected else (runtimes[0], outputs[runtimes[0]])
        for runtime, got in outputs.items():
            if against == runtime:
                continue
            for output, want in baseline.items():
                report.checks.append(_check(test_set.name, runtime, output, against, got[output], want, rtol, atol))
    return report
