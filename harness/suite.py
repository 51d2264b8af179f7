"""Suite files: which model, which data, which reference stack, which tolerances.

A suite is a TOML file; paths inside it are relative to the file.  The
bundled demo is `harness/suites/demo.toml`; users point `--suite` at their own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.stack import StackSpec, parse_stack
from harness.tasks import POSTPROCESS_KEYS
from harness.tolerance import Tolerance, parse_profiles

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUNDLED_DIR = Path(__file__).resolve().parent / "suites"
TOP_LEVEL_KEYS = {"name", "task", "description", "model", "data", "stack", "stacks", "postprocess", "export", "tolerance", "golden", "run"}


@dataclass(frozen=True)
class ModelSpec:
    builder: str
    weights: Path
    kwargs: dict[str, Any]
    input_name: str
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class ExportSpec:
    """How the model becomes files: ONNX export, precision variants, engines."""

    opset: int = 18
    atol: float = 1e-4
    parity_samples: int = 32
    fp16_op_block_list: tuple[str, ...] = ()
    int8_calibration: str = "minmax"
    int8_per_channel: bool = True
    trt_workspace_mb: int = 1024
    trt_batch: tuple[int, int, int] = (1, 32, 64)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    task: str
    model: ModelSpec
    manifest: Path
    split: str
    calibration_split: str | None
    stack: StackSpec
    stacks: dict[str, StackSpec]  # named alternatives, each overriding keys of the reference stack
    postprocess: dict[str, Any]  # task flags, e.g. classification label_offset
    export: ExportSpec
    tolerances: dict[str, Tolerance]
    golden_dir: Path
    reference_runtime: str
    default_runtimes: tuple[str, ...]
    batch_size: int
    description: str = ""

    def stack_named(self, name: str) -> StackSpec:
        if name == self.stack.name:
            return self.stack
        if name not in self.stacks:
            raise HarnessError(
                f"{self.path}: no stack named '{name}'", f"declare [stacks.{name}] in the suite; known: {', '.join(self.stack_names)}"
            )
        return self.stacks[name]

    @property
    def stack_names(self) -> list[str]:
        return [self.stack.name, *self.stacks]

    def tolerance_for(self, precision: str) -> Tolerance:
        return self.tolerances.get(precision, self.tolerances["fp32"])


def bundled_suites() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.toml"))


def resolve_suite_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise HarnessError(f"suite file not found: {path}", "pass an existing .toml file or a bundled suite name")
        return path
    bundled = BUNDLED_DIR / f"{name_or_path}.toml"
    if not bundled.is_file():
        raise HarnessError(f"unknown suite '{name_or_path}'", f"bundled suites: {', '.join(bundled_suites())}; or pass a .toml path")
    return bundled


def _table(data: dict[str, Any], key: str, origin: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        raise HarnessError(f"{origin}: missing or invalid [{key}] table", "see harness/suites/demo.toml for the format")
    return value


def _require(table: dict[str, Any], key: str, section: str, origin: str, kind: type | tuple[type, ...]) -> Any:
    if key not in table:
        raise HarnessError(f"{origin}: [{section}] needs '{key}'", "see harness/suites/demo.toml for the format")
    value = table[key]
    if not isinstance(value, kind):
        raise HarnessError(f"{origin}: [{section}] {key} has the wrong type ({type(value).__name__})")
    return value


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a suite; every problem is one HarnessError line."""
    path = resolve_suite_path(name_or_path).resolve()
    origin = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{origin}: malformed suite file: {exc}", "fix the TOML syntax") from exc
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise HarnessError(f"{origin}: unknown top-level keys {unknown}", f"allowed: {sorted(TOP_LEVEL_KEYS)}")
    base = path.parent
    task = data.get("task", "classification")
    if task not in POSTPROCESS_KEYS:
        raise HarnessError(f"{origin}: unknown task '{task}'", f"choose one of {list(POSTPROCESS_KEYS)}")

    model = _table(data, "model", origin)
    outputs = _require(model, "output_names", "model", origin, list)
    model_spec = ModelSpec(
        builder=_require(model, "builder", "model", origin, str),
        weights=base / _require(model, "weights", "model", origin, str),
        kwargs=dict(model.get("kwargs", {})),
        input_name=model.get("input_name", "input"),
        output_names=tuple(str(o) for o in outputs),
    )
    data_table = _table(data, "data", origin)
    export = _table(data, "export", origin, required=False)
    run = _table(data, "run", origin, required=False)
    golden = _table(data, "golden", origin, required=False)
    try:
        export_spec = ExportSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in export.items()})
    except TypeError as exc:
        raise HarnessError(f"{origin}: invalid [export] table: {exc}", f"allowed keys: {sorted(ExportSpec.__dataclass_fields__)}") from exc
    if len(export_spec.trt_batch) != 3 or not 1 <= export_spec.trt_batch[0] <= export_spec.trt_batch[1] <= export_spec.trt_batch[2]:
        raise HarnessError(f"{origin}: [export] trt_batch must be [min, opt, max] with 1 <= min <= opt <= max")
    reference_stack = parse_stack("reference", _table(data, "stack", origin), origin)
    stacks = {}
    for stack_name, table in _table(data, "stacks", origin, required=False).items():
        if not isinstance(table, dict) or stack_name == reference_stack.name:
            raise HarnessError(f"{origin}: [stacks.{stack_name}] must be a table with a name other than 'reference'")
        stacks[stack_name] = parse_stack(stack_name, table, origin, base=reference_stack)
    postprocess = _table(data, "postprocess", origin, required=False)
    allowed = POSTPROCESS_KEYS[task]
    for key, value in postprocess.items():
        if key not in allowed or not isinstance(value, allowed[key]) or isinstance(value, bool):
            raise HarnessError(f"{origin}: [postprocess] {key} = {value!r} is not allowed", f"{task} takes {sorted(allowed)} (integers)")
    return Suite(
        name=data.get("name", path.stem),
        path=path,
        task=task,
        model=model_spec,
        manifest=base / _require(data_table, "manifest", "data", origin, str),
        split=data_table.get("split", "eval"),
        calibration_split=data_table.get("calibration_split"),
        stack=reference_stack,
        stacks=stacks,
        postprocess=dict(postprocess),
        export=export_spec,
        tolerances=parse_profiles(_table(data, "tolerance", origin, required=False), origin),
        golden_dir=(base / golden.get("dir", f"golden/{path.stem}")).resolve(),
        reference_runtime=run.get("reference", "torch-fp32"),
        default_runtimes=tuple(run.get("runtimes", ["torch-fp32", "ort-fp32"])),
        batch_size=int(run.get("batch_size", 32)),
        description=data.get("description", ""),
    )
