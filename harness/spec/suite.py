"""Suite files: which model, which data, which reference stack, which tolerances.

A suite is a TOML file; paths inside it are relative to the file.  The
bundled demo is `harness/suites/demo.toml`; users point `--suite` at their own.
It is parsed once into typed parts, one per table, each owned by the layer
that reads it: `ModelSpec` ([model]), `DataSpec` ([data]), `StackSpec`
([stack], [stacks.*]; `harness.data.stack`), `TaskSpec` (task, [postprocess];
`harness.tasks`), `ExportSpec` ([export]; `exporters.spec`), `Tolerances`
([tolerance.*]), `RunSpec` ([run]), `GoldenSpec` ([golden]).  A function takes the part it reads.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporters.nms_graph import GRAPH_OUTPUTS, GraphNms
from exporters.onnx_file import OnnxSignature, TensorInfo, read_onnx
from exporters.spec import ExportSpec
from harness.core.errors import HarnessError
from harness.core.hashing import sha256_file
from harness.core.plugins import load_installed, load_plugins
from harness.data.colour import COLOUR_PATHS
from harness.data.dataset import Dataset, TargetParser, class_label, class_names, load_dataset
from harness.data.decoders import DECODERS
from harness.data.formats import coco_class_names, load_coco, load_yolo, read_yolo, yolo_class_names
from harness.data.intake import IntakePolicy
from harness.data.resizers import RESIZERS
from harness.data.stack import LAYOUTS, ORDERS, RESIZE_MODES, ROUNDINGS, StackSpec, stack_from
from harness.spec.tolerance import Tolerances, merge_profiles
from harness.tasks import POSTPROCESS_KEYS, TASKS, make_task, register_task
from harness.tasks.base import TaskSpec
from harness.tasks.boxes import locations
from runtimes import RUNTIMES

if TYPE_CHECKING:
    import torch

    from harness.spec.schema import ModelTable, Names, RunTable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "suites"


@dataclass(frozen=True)
class ModelSpec:
    """[model]: the PyTorch model as trained (an `exporters.spec.TorchSource`), or a ready ONNX file (`onnx`; then
    `builder` is None and `weights` is the ONNX file itself: what the model's identity hashes)."""

    builder: str | None
    weights: Path
    kwargs: dict[str, Any]
    input_name: str
    output_names: tuple[str, ...]
    folder: Path  # the suite file's: a `module:function` builder is looked up here first
    onnx: OnnxSignature | None = None
    ragged: tuple[tuple[str, ...], int] = ((), 0)  # outputs with data-dependent rows (no batch axis), padded to this many rows

    def build(self) -> torch.nn.Module:
        from harness.spec.models import build_model  # torch is imported by the commands that build a model

        if self.builder is None:
            raise HarnessError(
                f"{self.weights} is a ready ONNX model: there is no PyTorch model to build", "use ort-*, ov-* or trt-* runtimes"
            )
        return build_model(self.builder, self.weights, self.kwargs, self.folder)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size a ready ONNX file's image input is fixed to, if it is; 1 with ragged outputs."""
        if self.ragged[0]:
            return 1
        declared = next((i for i in self.onnx.inputs if i.name == self.input_name), None) if self.onnx else None
        return declared.dims[0] if declared and declared.dims else None

    def identity(self) -> dict[str, str]:
        """What names the model in reports and goldens (its file's hash is added by whoever hashes it)."""
        return {"builder": self.builder} if self.builder else {"onnx": self.weights.name}


@dataclass(frozen=True)
class DataSpec:
    """[data]: where the samples are listed (a manifest or image folder; COCO files per split with their image
    folders; a YOLO data.yaml), the split judged, the split INT8 calibrates on, what images are accepted."""

    manifest: Path | None  # a JSON manifest, or an image folder (`harness.data.dataset.image_folder`)
    split: str
    calibration_split: str | None
    intake: IntakePolicy
    coco: dict[str, Path] = field(default_factory=dict)  # split -> instances file (`harness.data.formats.load_coco`)
    images: dict[str, Path] = field(default_factory=dict)  # split -> the folder of its COCO file_names
    yolo: Path | None = None  # an Ultralytics data.yaml (`harness.data.formats.load_yolo`)

    def load(self, split: str, target: TargetParser = class_label) -> Dataset:
        """One split's samples, each entry's target parsed by the task (`target`)."""
        if self.yolo is not None:
            return load_yolo(self.yolo, split, target)
        if self.coco:
            return load_coco(self.coco[split], self.images[split], split, target)
        assert self.manifest is not None  # the schema's check: one source
        return load_dataset(self.manifest, split, target)

    @property
    def root(self) -> Path:
        """The folder the judged split's sample ids are relative to."""
        if self.yolo is not None:
            return read_yolo(self.yolo).root
        if self.coco:
            return self.images[self.split]
        assert self.manifest is not None
        return self.manifest if self.manifest.is_dir() else self.manifest.parent

    def class_names(self) -> tuple[str, ...]:
        """The class names in label order, without reading the samples; () when there are none to give."""
        if self.yolo is not None:
            return yolo_class_names(self.yolo)
        if self.coco:
            return coco_class_names(self.coco[self.split])
        assert self.manifest is not None
        return class_names(self.manifest)


@dataclass(frozen=True)
class RunSpec:
    """[run]: the reference runtime, the runtimes run by default, the batch size, expected failures."""

    reference: str
    runtimes: tuple[str, ...]
    batch_size: int
    xfail: dict[str, str] = field(default_factory=dict)  # runtime -> why its checks are expected to fail (pytest plugin)


@dataclass(frozen=True)
class GoldenSpec:
    """[golden]: how much of a run a golden keeps bit for bit (`harness.judge.golden.raw_subset`): exact raw outputs of
    at most `raw_samples` samples (None: every sample) and at most `max_raw_mb` MB of them; predictions, stage hashes
    and per-sample output magnitudes of every sample."""

    raw_samples: int | None = None
    max_raw_mb: float = 16.0


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    task: TaskSpec
    model: ModelSpec
    data: DataSpec
    stack: StackSpec
    stacks: dict[str, StackSpec]  # named alternatives, each overriding keys of the reference stack
    export: ExportSpec
    tolerances: Tolerances
    golden_dir: Path
    run: RunSpec
    description: str = ""
    golden: GoldenSpec = GoldenSpec()
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

    @property
    def command_name(self) -> str:
        """How the command line names this suite: a bundled suite by its name, any other by its file."""
        return self.path.stem if self.path.parent == BUNDLED_DIR else str(self.path)

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


def suite_names() -> Names:
    """The names suite files may use, read from the registries now (plugins registered since are included)."""
    from harness.spec.schema import Names

    return Names(
        decoder=DECODERS,
        resize=RESIZERS,
        colour=COLOUR_PATHS,
        resize_mode=RESIZE_MODES,
        order=ORDERS,
        rounding=ROUNDINGS,
        layout=LAYOUTS,
        runtime=RUNTIMES,
        postprocess=POSTPROCESS_KEYS,
    )


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
    """Read and validate a suite file (`harness.spec.schema`); every problem is one HarnessError line."""
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
    from harness.spec.schema import validate_suite  # pydantic builds its models on import: only commands that read a suite pay

    origin = str(path) if source is None else f"suite '{path.stem}' (from a mapping)"
    _load_plugins(data, path.parent, origin)
    spec = validate_suite(data, origin, suite_names())
    base = path.parent
    reference_stack = stack_from("reference", spec.stack.given(), origin)
    stacks = {name: stack_from(name, table.given(), origin, base=reference_stack) for name, table in spec.stacks.items()}
    model = _model(spec.model, base, reference_stack)
    counted = getattr(TASKS.get(spec.task), "takes_classes", False)  # a task that scores every class, seen or not
    data = DataSpec(
        manifest=base / listing if (listing := spec.data.manifest or spec.data.image_folder) else None,
        split=spec.data.split,
        calibration_split=spec.data.calibration_split,
        intake=IntakePolicy(spec.data.max_pixels, spec.data.min_side),
        coco={split: base / file for split, file in spec.data.per_split("coco").items()},
        images={split: base / folder for split, folder in spec.data.per_split("images").items()},
        yolo=base / spec.data.yolo if spec.data.yolo else None,
    )
    task = TaskSpec(spec.task, model.output_names, dict(spec.postprocess), len(data.class_names()) if counted else 0)
    export = ExportSpec(**spec.export.given())
    if export.nms == "graph":
        task, export = _graph_nms(task, export, reference_stack, origin)
    for precision, table in spec.tolerance.items():
        unknown = [name for name in table.outputs or {} if name not in task.output_names]
        if unknown:
            raise HarnessError(
                f"{origin}: [tolerance.{precision}.outputs.{unknown[0]}]: the model has no output '{unknown[0]}'",
                f"its outputs: {', '.join(task.output_names)}",
            )
    return Suite(
        name=spec.name or path.stem,
        path=path,
        task=task,
        model=model,
        data=data,
        stack=reference_stack,
        stacks=stacks,
        export=export,
        tolerances=Tolerances(merge_profiles({precision: table.given() for precision, table in spec.tolerance.items()})),
        golden_dir=(base / (spec.golden.dir or f"golden/{path.stem}")).resolve(),
        run=_run_spec(spec.run, model, origin),
        description=spec.description,
        golden=GoldenSpec(spec.golden.raw_samples, spec.golden.max_raw_mb),
        source=source,
    )


# [postprocess] keys the graph NMS carries out (`exporters.nms_graph`), and those the `final` decoding after it reads
GRAPH_NMS_KEYS = ("decoder", "strides", "clamp", "decode_plus_one", "score_threshold", "nms_iou", "pre_nms_top_k", "max_detections")
AFTER_GRAPH_KEYS = ("score_threshold", "max_detections", "round_boxes", "clip_minus_one")


def _graph_nms(task: TaskSpec, export: ExportSpec, stack: StackSpec, origin: str) -> tuple[TaskSpec, ExportSpec]:
    """[export] nms = "graph": the decode and NMS [postprocess] describes move into the exported graph (and the PyTorch
    model's twin); the task reads the graph's fixed-K detections with the `final` decoder."""
    if task.name != "detection":
        raise HarnessError(f"{origin}: [export] nms = 'graph' is for detection suites (task is '{task.name}')", "remove [export] nms")
    other = sorted(set(task.postprocess) - {*GRAPH_NMS_KEYS, *AFTER_GRAPH_KEYS})
    if other:
        raise HarnessError(
            f"{origin}: [postprocess] {other[0]} has no counterpart in the graph NMS (per-class NonMaxSuppression over every "
            "class, the decoder's default activation)",
            f"remove {other[0]}, or set [export] nms = 'python'",
        )
    if stack.input_hw is None:
        raise HarnessError(
            f"{origin}: [export] nms = 'graph' needs one input size (the decode's location grid is a constant of the graph)",
            "give [stack] a fixed size (crop, letterbox or direct resize, or keep-ratio with max_size)",
        )
    flags: Any = make_task(task)  # the detection flags with their defaults, checked
    centres, strides = locations(stack.input_hw, tuple(flags.strides))
    graph = GraphNms(
        decoder=flags.decoder,
        inputs=tuple(task.output_names[: 2 if flags.decoder == "fcos" else 1]),
        input_hw=tuple(stack.input_hw),
        strides=tuple(flags.strides),
        clamp=flags.clamp,
        decode_plus_one=flags.decode_plus_one,
        score_threshold=flags.score_threshold,
        iou_threshold=flags.nms_iou,
        pre_nms_top_k=flags.pre_nms_top_k,
        max_detections=flags.max_detections,
        centres=centres,
        location_strides=strides,
    )
    after = {key: value for key, value in task.postprocess.items() if key in AFTER_GRAPH_KEYS}
    return replace(task, output_names=GRAPH_OUTPUTS, postprocess=after | {"decoder": "final"}), replace(export, graph_nms=graph)


def _model(table: ModelTable, base: Path, stack: StackSpec) -> ModelSpec:
    """[model] as a ModelSpec; a ready ONNX file is read now (missing, corrupt, or not fitting the stack: one line)."""
    if table.onnx is None:
        assert table.builder is not None and table.weights is not None and table.output_names is not None  # the schema's check
        names = (table.input_name or "input", tuple(table.output_names))
        return ModelSpec(table.builder, base / table.weights, dict(table.kwargs), *names, folder=base, ragged=_ragged(table, names[1]))
    signature = read_onnx(base / table.onnx)
    if table.input_name is None and len(signature.inputs) != 1:
        raise HarnessError(
            f"{signature.path} has {len(signature.inputs)} inputs ({', '.join(signature.input_names)})",
            "name the image input: [model] input_name",
        )
    input_name = table.input_name or signature.input_names[0]
    declared = next((i for i in signature.inputs if i.name == input_name), None)
    if declared is None:
        raise HarnessError(
            f"[model] input_name = '{input_name}': {signature.path.name} has no such input",
            f"use one of {', '.join(signature.input_names)}",
        )
    _check_input(declared, signature.path, stack)
    outputs = tuple(table.output_names or signature.output_names)
    missing = [name for name in outputs if signature.output(name) is None]
    if missing:
        raise HarnessError(
            f"[model] output_names: {signature.path.name} has no output {', '.join(repr(m) for m in missing)}",
            f"its outputs: {', '.join(signature.output_names)}",
        )
    ragged = _ragged(table, outputs)
    batch = declared.dims[0] if declared.dims else None
    if ragged[0] and batch not in (None, 1):
        raise HarnessError(
            f"[model] ragged_outputs: {signature.path.name} input '{input_name}' takes batches of {batch}",
            "ragged outputs are one image's rows: export the model at batch 1",
        )
    if stack.per_image and batch not in (None, 1):
        raise HarnessError(
            f"[stack] size_divisor: {signature.path.name} input '{input_name}' takes batches of {batch}, "
            "and per-image sizes feed one image at a time",
            "export the model with batch 1 or a dynamic batch, or set size_divisor = 0",
        )
    return ModelSpec(None, signature.path, {}, input_name, outputs, folder=base, onnx=signature, ragged=ragged)


def _ragged(table: ModelTable, outputs: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    unknown = [name for name in table.ragged_outputs if name not in outputs]
    if unknown:
        raise HarnessError(f"[model] ragged_outputs names '{unknown[0]}', not an output", f"the outputs: {', '.join(outputs)}")
    return tuple(table.ragged_outputs), table.ragged_rows or 0


def _check_input(declared: TensorInfo, path: Path, stack: StackSpec) -> None:
    """The stack's tensors must fit the ONNX input's fixed dims (rank 4; channels and H x W where fixed)."""
    if declared.dims is None:
        return
    if len(declared.dims) != 4:
        raise HarnessError(
            f"{path.name} input '{declared.name}' is {declared.shape_text()}: the stack makes image batches [N, C, H, W]",
            "give an ONNX file whose image input has rank 4",
        )
    channels, *hw = declared.dims[1:] if stack.layout == "nchw" else (declared.dims[3], *declared.dims[1:3])
    if channels not in (None, 3):
        raise HarnessError(
            f"{path.name} input '{declared.name}' {declared.shape_text()} takes {channels} channels, the stack makes 3",
            "check [model] input_name and [stack] layout",
        )
    produced = stack.input_hw
    fixed = tuple(hw)
    if None not in fixed and produced is not None and tuple(produced) != fixed:
        raise HarnessError(
            f"{path.name} input '{declared.name}' {declared.shape_text()} takes {fixed[0]}x{fixed[1]}, "
            f"[stack] makes {produced[0]}x{produced[1]}",
            "set [stack] crop (or resize_size with resize_mode direct/letterbox) to the model's size",
        )
    if None not in fixed and produced is None:
        raise HarnessError(
            f"{path.name} input '{declared.name}' {declared.shape_text()} takes a fixed {fixed[0]}x{fixed[1]}, "
            "[stack] makes sizes that follow each image",
            "set [stack] crop, or resize_mode direct/letterbox, to the model's size",
        )


def _run_spec(table: RunTable, model: ModelSpec, origin: str) -> RunSpec:
    """[run] with the defaults of the model's kind; PyTorch runtimes are refused for a ready ONNX file."""
    onnx_model = model.onnx is not None
    reference = table.reference or ("ort-fp32" if onnx_model else "torch-fp32")
    runtimes = tuple(table.runtimes or dict.fromkeys([reference, "ort-fp32"]))
    if onnx_model:
        torch_runtimes = [r for r in (reference, *runtimes) if r != "all" and RUNTIMES[r].backend == "torch"]
        if torch_runtimes:
            raise HarnessError(
                f"{origin}: [run] names {', '.join(dict.fromkeys(torch_runtimes))}, but [model] is a ready ONNX file (no PyTorch model)",
                "use ONNX runtimes (ort-*, ov-*, trt-*); the reference defaults to ort-fp32",
            )
    return RunSpec(reference, runtimes, table.batch_size, dict(table.xfail))


def _load_plugins(data: dict[str, Any], folder: Path, origin: str) -> None:
    """Installed plugins, the suite's `plugins` and a `task = "module:Class"`, imported before the suite is validated
    (what they register is then a valid name in it); the suite's folder is searched first."""
    load_installed()
    plugins = data.get("plugins", [])
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):  # otherwise the schema says what is wrong
        load_plugins(plugins, folder, origin=f"{origin}: plugins")
    task = data.get("task")
    if isinstance(task, str) and ":" in task and task not in TASKS:
        module, _, attr = task.partition(":")
        load_plugins([module], folder, origin=f"{origin}: task")
        factory = getattr(sys.modules[module], attr, None)
        if not isinstance(factory, type) or not isinstance(getattr(factory, "name", None), str):
            raise HarnessError(
                f"{origin}: task = {task!r}: {module} has no task class {attr}", "name a class with a `name` (see README, Plugins)"
            )
        register_task(factory, task)
