"""Suite files: which model, which data, which reference stack, which tolerances.

A suite is a TOML file; paths inside it are relative to the file.  The
bundled demo is `harness/suites/demo.toml`; users point `--suite` at their own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.dataset import sha256_file
from harness.errors import HarnessError
from harness.intake import IntakePolicy
from harness.stack import StackSpec, stack_from
from harness.tolerance import Tolerance, merge_profiles

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUNDLED_DIR = Path(__file__).resolve().parent / "suites"


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
    fp16_keep_fp32: tuple[str, ...] = ()  # layers (PyTorch module names) kept in FP32 in the FP16 model
    int8_keep_fp32: tuple[str, ...] = ()  # layers kept in float in the Q/DQ model (`harness export --keep-fp32 auto` finds them)
    int8_calibration: str = "minmax"
    int8_per_channel: bool = True
    trt_workspace_mb: int = 1024
    trt_batch: tuple[int, int, int] = (1, 32, 64)

    def keep_for(self, precision: str) -> tuple[str, ...]:
        return {"fp16": self.fp16_keep_fp32, "int8": self.int8_keep_fp32}.get(precision, ())


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    task: str
    model: ModelSpec
    manifest: Path
    split: str
    calibration_split: str | None
    intake: IntakePolicy
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
    xfail: dict[str, str] = field(default_factory=dict)  # runtime -> why its checks are expected to fail (pytest plugin)
    source: dict[str, Any] | None = None  # the mapping of a suite built without a file (`suite_from_mapping`)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base: Path | None = None) -> Suite:
        """A suite without a TOML file: the same keys and schema; relative paths against `base` (default: the
        working directory)."""
        return suite_from_mapping(data, base or Path.cwd())

    def sha256(self) -> str:
        """What the suite says, hashed: its file, or its mapping."""
        text = json.dumps(self.source, sort_keys=True) if self.source is not None else None
        return hashlib.sha256(text.encode()).hexdigest() if text is not None else sha256_file(self.path)

    def definition(self) -> str:
        """How another process finds the suite again: its file's path, or its mapping and base as JSON."""
        if self.source is None:
            return str(self.path)
        return json.dumps({"mapping": self.source, "base": str(self.path.parent), "name": self.path.stem}, sort_keys=True)

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


def suite_from_definition(definition: str) -> Suite:
    """The inverse of `Suite.definition`."""
    if definition.startswith("{"):
        data = json.loads(definition)
        return _suite(data["mapping"], Path(data["base"]) / f"{data['name']}.toml", data["mapping"])
    return load_suite(definition)


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


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a suite file (`harness.schema`); every problem is one HarnessError line."""
    path = resolve_suite_path(name_or_path).resolve()
    origin = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{origin}: malformed suite file: {exc}", "fix the TOML syntax") from exc
    return _suite(data, path, None)


def suite_from_mapping(data: dict[str, Any], base: Path) -> Suite:
    """A suite from the mapping a suite file would hold (the same schema), relative paths against `base`."""
    name = data.get("name") if isinstance(data.get("name"), str) else "suite"
    source = json.loads(json.dumps(data, default=str))  # plain data: what work units carry to other processes
    return _suite(source, base.resolve() / f"{name}.toml", source)


def _suite(data: dict[str, Any], path: Path, source: dict[str, Any] | None) -> Suite:
    from harness.schema import validate_suite  # pydantic builds its models on import: only commands that read a suite pay

    origin = str(path) if source is None else f"suite '{path.stem}' (from a mapping)"
    spec = validate_suite(data, origin)
    base = path.parent
    reference_stack = stack_from("reference", spec.stack.given(), origin)
    stacks = {name: stack_from(name, table.given(), origin, base=reference_stack) for name, table in spec.stacks.items()}
    return Suite(
        name=spec.name or path.stem,
        path=path,
        task=spec.task,
        model=ModelSpec(
            builder=spec.model.builder,
            weights=base / spec.model.weights,
            kwargs=dict(spec.model.kwargs),
            input_name=spec.model.input_name,
            output_names=tuple(spec.model.output_names),
        ),
        manifest=base / spec.data.manifest,
        split=spec.data.split,
        calibration_split=spec.data.calibration_split,
        intake=IntakePolicy(spec.data.max_pixels, spec.data.min_side),
        stack=reference_stack,
        stacks=stacks,
        postprocess=dict(spec.postprocess),
        export=ExportSpec(**spec.export.given()),
        tolerances=merge_profiles({precision: table.given() for precision, table in spec.tolerance.items()}),
        golden_dir=(base / (spec.golden.dir or f"golden/{path.stem}")).resolve(),
        reference_runtime=spec.run.reference,
        default_runtimes=tuple(spec.run.runtimes),
        batch_size=spec.run.batch_size,
        description=spec.description,
        xfail=dict(spec.run.xfail),
        source=source,
    )
