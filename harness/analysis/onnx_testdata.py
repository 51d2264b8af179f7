"""Ready ONNX models on ONNX's test-data layout.

`DIR/test_data_set_N/input_K.pb` (a serialized TensorProto, as ONNX's backend
tests store them) with optional `output_K.pb` as the expected outputs.
`input_K.npy` / `output_K.npy` and `inputs.npz` / `outputs.npz` (keys = tensor
names) work too, and DIR may itself be one test-data set.  Without expected
outputs the first runtime that opens is the baseline for the others.

A run is reported as a suite run is: the precision each runtime executed, a
note where that is not what its name asks for, each runtime judged by the
tolerance profile of the lowest precision it asked for or executed (unless
`--rtol/--atol` judge every element), and its outputs in the one result
format (`outputs.npz`, one row per test-data set).  int8 is calibrated on a
second folder of the same layout (`--calibration DIR`); `--runtime all` runs
what can run and names what it skipped and why.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from harness.core.environment import environment
from harness.core.errors import HarnessError, first_line
from harness.core.hashing import digest, sha256_file
from harness.judge.compare import output_stats
from harness.judge.verdict import SCHEMA_VERSION, fp16_audit_notes
from harness.report.tables import markdown_table, render_table
from harness.run.outputs import Inference, RunOutputs
from harness.run.sessions import OpenSession, open_session
from harness.spec.tolerance import DEFAULT_PROFILES, Tolerances
from runtimes import RUNTIMES, RuntimeSpec, get_runtime
from runtimes.precision import judged_precision, parse_counts, precision_note

if TYPE_CHECKING:
    import onnx

_TENSOR_FILE = re.compile(r"^(input|output)_(\d+)\.(pb|npy)$")
BASELINE = "ort-fp32"  # first of `--runtime all`: the baseline when the sets hold no expected outputs
NO_TASK = -1  # labels and predictions of outputs.npz: a ready ONNX model has no task


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


@dataclass(frozen=True)
class ModelInput:
    """One input the ONNX graph declares: its name, dims (an int, or a symbolic name / None where dynamic), dtype."""

    name: str
    dims: tuple[int | str | None, ...] | None
    dtype: np.dtype[Any] | None

    def mismatch(self, array: np.ndarray) -> tuple[str, str] | None:
        """Why `array` cannot feed this input, and the fix; None when it fits."""
        if self.dims is not None:
            want = "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"
            wrong = [i for i, d in enumerate(self.dims) if isinstance(d, int) and i < array.ndim and array.shape[i] != d]
            if array.ndim != len(self.dims) or wrong:
                where = (
                    f"rank {array.ndim}"
                    if array.ndim != len(self.dims)
                    else f"axis {wrong[0]}: {array.shape[wrong[0]]} vs {self.dims[wrong[0]]}"
                )
                return (
                    f"input '{self.name}' has shape {list(array.shape)} but the model expects {want} ({where})",
                    f"write the test data in the model's input shape {want}, or pass a model exported with dynamic axes",
                )
        if self.dtype is not None and array.dtype != self.dtype:
            return f"input '{self.name}' is {array.dtype} but the model expects {self.dtype}", f"write the tensor as {self.dtype}"
        return None


def model_inputs(graph: onnx.GraphProto) -> dict[str, ModelInput]:
    """The graph's declared inputs (initializers excluded), by name."""
    from onnx import helper

    initializers = {i.name for i in graph.initializer}
    declared = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else None
        declared[value.name] = ModelInput(value.name, dims if tensor.HasField("shape") else None, dtype)
    return declared


def load_test_set(folder: Path, inputs: dict[str, ModelInput], output_names: tuple[str, ...]) -> TestDataSet:
    """One test-data set, its inputs checked against the model's declared shapes and types."""
    found = _collect(folder, "input", tuple(inputs))
    if not found:
        raise HarnessError(f"{folder}: no input_K.pb, input_K.npy or inputs.npz files", "see `harness run --help` for the layout")
    missing = sorted(set(inputs) - set(found))
    if missing:
        raise HarnessError(f"{folder}: missing model inputs {missing}", "add an input file for each model input")
    for name, array in found.items():
        wrong = inputs[name].mismatch(array)
        if wrong:
            raise HarnessError(f"{folder}: {wrong[0]}", wrong[1])
    return TestDataSet(folder.name, found, _collect(folder, "output", output_names))


@dataclass(frozen=True)
class CalibrationData:
    """int8 calibration inputs from a test-data folder: one row per sample, `set/row` ids (an `exporters` CalibrationSet)."""

    ids: tuple[str, ...]
    tensors: np.ndarray

    def sample(self, row: int) -> np.ndarray:
        return self.tensors[row]


def load_calibration(directory: Path, inputs: dict[str, ModelInput], output_names: tuple[str, ...]) -> CalibrationData:
    """Every set of `directory` (test-data layout) stacked along the batch axis; the model must have one input."""
    if len(inputs) != 1:
        raise HarnessError(
            f"int8 calibration feeds one input, the model has {len(inputs)} {list(inputs)}", "run fp32/fp16 runtimes on this model"
        )
    (name,) = inputs
    sets = [load_test_set(folder, inputs, output_names) for folder in test_folders(directory)]
    if sets[0].inputs[name].ndim == 0:
        raise HarnessError(f"{directory}: calibration input '{name}' is a scalar, not a batch of samples", "write [N, ...] tensors")
    shapes = {s.inputs[name].shape[1:] for s in sets}
    if len(shapes) > 1:
        raise HarnessError(
            f"{directory}: calibration inputs '{name}' differ in shape beyond the batch axis {sorted(shapes)}",
            "give every calibration set the same shape",
        )
    ids = tuple(f"{s.name}/{row}" for s in sets for row in range(len(s.inputs[name])))
    return CalibrationData(ids, np.concatenate([s.inputs[name] for s in sets]))


@dataclass(frozen=True)
class Judging:
    """How a tensor is judged: explicit `rtol`/`atol` bound every element (|got - want| <= atol + rtol |want|, a
    missing one 0); without them a runtime is judged, as in suite runs, by the tolerance profile of the lowest
    precision it asked for or executed (max abs and min cosine: an fp16 request that ran bf16 by bf16's)."""

    rtol: float | None = None
    atol: float | None = None
    profiles: Tolerances = field(default_factory=lambda: Tolerances(DEFAULT_PROFILES))

    @property
    def elementwise(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def rule(self, requested: str, executed: str) -> str:
        if self.elementwise:
            return f"rtol {self.rtol or 0:g}, atol {self.atol or 0:g}"
        return f"{judged_precision(requested, executed)} profile"

    def flat(self, want: np.ndarray) -> str | None:
        """Why the cosine of a tensor against `want` measures only noise (`want` is within the fp32 profile's max abs
        of zero, as a detector's map of a set without objects is), or None."""
        scale = float(np.max(np.abs(want), initial=0.0))
        limit = self.profiles.for_precision("fp32").max_abs
        return f"is at most {scale:.1e}, within max abs {limit:g} of zero: cosine not judged" if scale <= limit else None

    def judge(self, got: np.ndarray, want: np.ndarray, requested: str, executed: str) -> tuple[float, float, float, str | None]:
        """max abs, max rel, cosine, and why the tensor fails (None when it passes)."""
        if got.shape != want.shape:
            return float("inf"), float("inf"), 0.0, f"shape {list(got.shape)} vs {list(want.shape)}"
        got64, want64 = got.astype(np.float64).reshape(1, -1), want.astype(np.float64).reshape(1, -1)
        stats = output_stats(got64, want64)
        if self.elementwise:
            outside = int((np.abs(got64 - want64) > (self.atol or 0) + (self.rtol or 0) * np.abs(want64)).sum())
            why = f"{outside}/{want.size} elements outside {self.rule(requested, executed)}" if outside else None
            return stats.max_abs, stats.max_rel, stats.min_cosine, why
        profile = judged_precision(requested, executed)
        tolerance = self.profiles.for_precision(profile)
        broken = [f"max abs {stats.max_abs:.2e} > {tolerance.max_abs:g}"] if stats.max_abs > tolerance.max_abs else []
        if stats.min_cosine < tolerance.min_cosine and not self.flat(want):
            broken.append(f"cosine {stats.min_cosine:.6f} < {tolerance.min_cosine:g}")
        return stats.max_abs, stats.max_rel, stats.min_cosine, f"{', '.join(broken)} ({profile} profile)" if broken else None

    def loose(self, requested: str, executed: str) -> str | None:
        """A note when the judging profile's tensor limits can hardly fail (int8's: suites gate it on task agreement)."""
        profile = judged_precision(requested, executed)
        tolerance = self.profiles.for_precision(profile)
        if self.elementwise or tolerance.min_cosine > 0:
            return None
        return (
            f"the {profile} profile bounds tensors loosely (max abs {tolerance.max_abs:g}, no cosine limit): suites gate {profile} "
            "on task agreement; pass --atol/--rtol to bound every element"
        )

    def describe(self) -> dict[str, Any]:
        if self.elementwise:
            return {"rtol": self.rtol or 0.0, "atol": self.atol or 0.0}
        return {"profiles": {p: self.profiles.for_precision(p).describe() for p in self.profiles.profiles}}


@dataclass(frozen=True)
class TensorCheck:
    test_set: str
    runtime: str
    executed: str
    output: str
    against: str
    max_abs: float
    max_rel: float
    cosine: float
    failure: str | None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def row(self) -> list[str]:
        verdict = "PASS" if self.passed else f"FAIL: {self.failure}"
        return [
            self.test_set,
            self.runtime,
            self.executed,
            self.output,
            self.against,
            f"{self.max_abs:.3e}",
            f"{self.max_rel:.3e}",
            f"{self.cosine:.6f}",
            verdict,
        ]

    def describe(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}


@dataclass(frozen=True)
class RuntimeRow:
    """A runtime that ran: what it executed and what judged it (nothing judges the baseline)."""

    runtime: str
    executed: str
    judged: str
    seconds: float

    def row(self) -> list[str]:
        return [self.runtime, self.executed, self.judged, f"{self.seconds:.3f}"]


@dataclass(frozen=True)
class Skipped:
    """A runtime that did not run, and why; `failed` when it was named on the command line (one that `all`
    reached and that cannot run here is only listed)."""

    runtime: str
    reason: str
    failed: bool = False

    @staticmethod
    def lines(skipped: list[Skipped]) -> list[str]:
        """One line per reason: `skipped ort-cuda-fp32, ort-cuda-fp16: no CUDA device ...`."""
        grouped: dict[tuple[bool, str], list[str]] = {}
        for s in skipped:
            grouped.setdefault((s.failed, s.reason), []).append(s.runtime)
        return [f"{'failed' if failed else 'skipped'} {', '.join(names)}: {reason}" for (failed, reason), names in grouped.items()]


@dataclass
class TestDataReport:
    model: Path
    judging: Judging
    runtimes: list[RuntimeRow] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    checks: list[TensorCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: RunOutputs | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    HEADERS = ("set", "runtime", "executed", "output", "vs", "max abs", "max rel", "cosine", "verdict")
    RUNTIME_HEADERS = ("runtime", "executed", "judged by", "seconds")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and not any(s.failed for s in self.skipped)

    def describe(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "onnx-testdata",
            "created": self.created,
            "model": str(self.model),
            "judging": self.judging.describe(),
            "environment": environment(),
            "runtimes": [r.__dict__ for r in self.runtimes],
            "skipped": [s.__dict__ for s in self.skipped],
            "notes": self.notes,
            "checks": [c.describe() for c in self.checks],
            "passed": self.passed,
        }

    def _title(self) -> str:
        judged = self.judging.rule("", "") if self.judging.elementwise else "each runtime by its precision's tolerance profile"
        return f"{self.model.name}: {judged}"

    def render(self, console: Console) -> None:
        render_table(console, "runtimes", self.RUNTIME_HEADERS, [r.row() for r in self.runtimes])
        render_table(console, self._title(), self.HEADERS, [c.row() for c in self.checks])
        for line in [*Skipped.lines(self.skipped), *(f"note: {n}" for n in self.notes)]:
            console.print(escape(line), highlight=False)
        console.print("[green]all checks passed[/green]" if self.passed else "[red]some checks failed[/red]")

    def to_markdown(self) -> str:
        lines = [f"# {self.model.name}: {'PASS' if self.passed else 'FAIL'}", "", f"{self._title()}, {self.created}.", ""]
        lines += [*markdown_table(self.RUNTIME_HEADERS, [r.row() for r in self.runtimes]), ""]
        lines += markdown_table(self.HEADERS, [c.row() for c in self.checks])
        for title, items in (("Skipped", Skipped.lines(self.skipped)), ("Notes", self.notes)):
            if items:
                lines += ["", f"## {title}", "", *(f"- {item}" for item in items)]
        return "\n".join(lines) + "\n"


def _why_not(spec: RuntimeSpec, calibrated: bool) -> str | None:
    """Why `spec` cannot run a ready ONNX model here (None when it can)."""
    if spec.backend == "torch":
        return "torch runtimes need the PyTorch model; --onnx has only the ONNX file"
    if spec.precision == "int8" and not calibrated:
        return "int8 needs calibration data: pass --calibration DIR (test-data layout)"
    return spec.unavailable_reason()


def choose_runtimes(requested: tuple[str, ...], calibrated: bool) -> tuple[list[str], list[Skipped]]:
    """The runtimes to run, in order (`all`: every one that can run here, the baseline first), and those `all`
    skipped with the reason; a runtime named on the command line that cannot run is an error."""
    names: list[str] = []
    skipped: list[Skipped] = []
    for name in requested or (BASELINE,):
        if name != "all":
            reason = _why_not(get_runtime(name), calibrated)
            if reason:
                raise HarnessError(f"runtime '{name}' cannot run this ONNX model: {reason}", "choose another --runtime, or --runtime all")
            names.append(name)
            continue
        for spec in sorted(RUNTIMES.values(), key=lambda s: s.name != BASELINE):
            reason = _why_not(spec, calibrated)
            if reason:
                skipped.append(Skipped(spec.name, reason))
            else:
                names.append(spec.name)
    return list(dict.fromkeys(names)), [s for s in skipped if s.runtime not in names]


def _open(names: list[str], requested: tuple[str, ...], artifacts: ModelArtifacts) -> tuple[dict[str, OpenSession], list[Skipped]]:
    """Sessions of the runtimes that open the model; one that does not (an op its backend lacks) is listed with
    the first line of why, and fails the run when it was named."""
    opened: dict[str, OpenSession] = {}
    failed = []
    for name in names:
        try:
            opened[name] = open_session(get_runtime(name), artifacts)
        except Exception as exc:  # a converter's or compiler's own error on this graph too: one line, the run goes on
            failed.append(Skipped(name, f"could not open the model: {_reason(exc)}", name in requested))
    return opened, failed


def _reason(exc: Exception, limit: int = 240) -> str:
    """A library's error in one line: its lines without the assertion sites and headers native code leads with
    (OpenVINO's `Check 'false' failed at ...cpp:151:`, `Summary:`), so the line names the op that failed."""
    text = exc.what if isinstance(exc, HarnessError) else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in lines if not re.match(r"Check '.*' failed at ", line) and not line.endswith(":")] or lines
    joined = " ".join(kept) or type(exc).__name__
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _run(name: str, opened: OpenSession, test_set: TestDataSet) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    try:
        outputs = opened.session.run(test_set.inputs)
    except Exception as exc:
        shapes = ", ".join(f"'{k}' {list(v.shape)} {v.dtype}" for k, v in test_set.inputs.items())
        raise HarnessError(
            f"{name} failed on {test_set.name} (inputs {shapes}): {first_line(exc)}",
            "check that the inputs fit the model (a detector may need sides that are a multiple of 32)",
        ) from exc
    return outputs, time.perf_counter() - start


def _stack(per_set: list[np.ndarray]) -> np.ndarray:
    """One output over the sets, a row per set; sets whose outputs differ in shape are NaN-padded to the largest
    (their own shapes are in the context's `output_shapes`)."""
    if len({a.shape for a in per_set}) == 1:
        return np.stack(per_set)
    if len({a.ndim for a in per_set}) > 1:
        raise HarnessError(f"an output changes rank between test-data sets {[list(a.shape) for a in per_set]}", "check the model")
    shape = tuple(max(dims) for dims in zip(*(a.shape for a in per_set), strict=True))
    stacked = np.full((len(per_set), *shape), np.nan, dtype=np.float32)
    for row, array in enumerate(per_set):
        stacked[(row, *(slice(0, d) for d in array.shape))] = array
    return stacked


def _set_digest(test_set: TestDataSet) -> str:
    return digest(b"".join(digest(test_set.inputs[name]).encode() for name in sorted(test_set.inputs)))


def _measured(
    model: Path,
    directory: Path,
    sets: list[TestDataSet],
    opened: dict[str, OpenSession],
    results: dict[str, list[dict[str, np.ndarray]]],
    seconds: dict[str, float],
    context: dict[str, Any],
) -> RunOutputs:
    """Every runtime's outputs in the one result format: a row per test-data set, no task (labels and predictions -1)."""
    ids = tuple(s.name for s in sets)
    first = results[next(iter(results))]
    return RunOutputs(
        suite=model.stem,
        ids=ids,
        labels=np.full(len(ids), NO_TASK),
        stages={"tensor": tuple(_set_digest(s) for s in sets)},
        inferences={
            name: Inference(
                name,
                {output: _stack([r[output] for r in per_set]) for output in per_set[0]},
                np.full(len(ids), NO_TASK),
                seconds[name],
                opened[name].describe,
                opened[name].used,
            )
            for name, per_set in results.items()
        },
        context={
            "kind": "onnx-testdata",
            "model": {"path": str(model), "sha256": sha256_file(model)},
            "inputs": str(directory),
            "output_shapes": {s.name: {k: list(v.shape) for k, v in first[i].items()} for i, s in enumerate(sets)},
            **context,
            "environment": environment(),
        },
        requested=tuple(results),
    )


def run_test_data(
    model: Path,
    directory: Path,
    runtimes: tuple[str, ...],
    cache: ArtifactCache,
    judging: Judging | None = None,
    calibration: Path | None = None,
) -> TestDataReport:
    """Run `model` on every test-data set of `directory` on `runtimes` ('all' included), judge each runtime
    against the expected outputs (or the first runtime that opened) and keep every output (`report.measured`)."""
    import onnx

    judging = judging or Judging()
    if not model.is_file():
        raise HarnessError(f"ONNX model not found: {model}", "pass an existing .onnx file to --onnx")
    try:
        onnx.checker.check_model(str(model))
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as exc:
        raise HarnessError(
            f"{model}: not a valid ONNX model ({first_line(exc)})", "re-export the model, or check the file is whole"
        ) from exc
    inputs = model_inputs(graph)
    output_names = tuple(o.name for o in graph.output)
    calibration_set = load_calibration(calibration, inputs, output_names) if calibration is not None else None
    names, skipped = choose_runtimes(runtimes, calibration_set is not None)
    folders = test_folders(directory)
    expected = all(has_expected(f) for f in folders)
    sets = [load_test_set(folder, inputs, output_names) for folder in folders]  # every input checked before a model is built
    artifacts = ModelArtifacts(cache, onnx_file=model, calibration_inputs=(lambda: calibration_set) if calibration_set else None)
    opened, failed = _open(names, runtimes, artifacts)
    why = "; ".join(Skipped.lines(failed + skipped))
    if not opened:
        raise HarnessError(f"no runtime can run {model.name} ({why})", "choose a runtime that opens the model")
    if not expected and len(opened) < 2:
        raise HarnessError(
            f"{directory}: no output_K files to compare with and only {next(iter(opened))} runs the model{f' ({why})' if why else ''}",
            "add output_K.pb files or a second --runtime",
        )
    report = TestDataReport(model, judging, skipped=failed + skipped)
    baseline = None if expected else next(iter(opened))
    seconds = dict.fromkeys(opened, 0.0)
    results: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in opened}
    try:
        for test_set in sets:
            for name, session in opened.items():
                outputs, took = _run(name, session, test_set)
                seconds[name] += took
                results[name].append(outputs)
            against, want = ("expected", test_set.expected) if baseline is None else (baseline, results[baseline][-1])
            for name in opened:
                if name == baseline:
                    continue
                requested, executed = get_runtime(name).precision, opened[name].describe.get("executed", "")
                for output, reference in want.items():
                    flat = None if judging.elementwise else judging.flat(reference)
                    if flat:
                        report.notes.append(f"{test_set.name}: {against} {output} {flat} (does the set hold what the model detects?)")
                    stats = judging.judge(results[name][-1][output], reference, requested, executed)
                    report.checks.append(TensorCheck(test_set.name, name, executed, output, against, *stats))
    finally:
        for session in opened.values():
            session.session.close()
    for name, session in opened.items():
        requested, executed = get_runtime(name).precision, session.describe.get("executed", "")
        report.runtimes.append(
            RuntimeRow(name, executed, "baseline" if name == baseline else judging.rule(requested, executed), seconds[name])
        )
        loose = None if name == baseline else judging.loose(requested, executed)
        report.notes += [n for n in (precision_note(name, requested, parse_counts(session.describe.get("compute_ops", ""))), loose) if n]
    report.notes = list(dict.fromkeys(report.notes))  # the loose-profile note once for all runtimes it concerns
    context = {
        "calibration": {"path": str(calibration), "samples": len(calibration_set.ids)} if calibration_set else None,
        "judging": judging.describe(),
    }
    report.measured = _measured(model, directory, sets, opened, results, seconds, context)
    report.notes += [f"{', '.join(names)}: {line}" for line, names in fp16_audit_notes(report.measured).items()]
    return report
