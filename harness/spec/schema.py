"""The schema of suite files, checked by pydantic when a suite loads and
published as JSON Schema (`harness schema`) for editors.

Every key is typed strictly (`resize_size = "72"` and `exif = "no"` are
errors, not a traceback later or a silent `true`), ranges are checked, names
that refer to a registry (decoders, resizers, colour paths, runtimes, ...)
list the allowed values, and an unknown key names the closest valid one.
The registries' names are handed in (`Names`, filled by `harness.spec.suite`
from the registries' owners), so plugins registered later are valid names
and this module imports no registry.
A validation failure becomes one `HarnessError` line naming the file, the
table, the key, the value and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, model_validator

from exporters.nms_graph import NMS_PLACES
from exporters.spec import EXPORTERS, Fp16OutOfRange
from harness.core.errors import HarnessError
from harness.data.intake import IntakePolicy

INT8_CALIBRATIONS = ("minmax", "entropy", "percentile")
DATA_SOURCES = ("manifest", "image_folder", "coco", "yolo")
EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Names:
    """The names a suite file may use, by registry: decoders, resizers, colour paths, stack modes, runtimes, and each
    task's post-processing keys with their types."""

    decoder: Iterable[str]
    resize: Iterable[str]
    colour: Iterable[str]
    resize_mode: Iterable[str]
    order: Iterable[str]
    rounding: Iterable[str]
    layout: Iterable[str]
    runtime: Iterable[str]
    postprocess: Mapping[str, Mapping[str, type]]  # task -> key -> type

    def of(self, registry: str) -> list[str]:
        if registry == "int8_calibration":
            return sorted(INT8_CALIBRATIONS)
        if registry == "exporter":
            return sorted(EXPORTERS)
        if registry == "nms_place":
            return sorted(NMS_PLACES)
        return sorted(self.postprocess if registry == "task" else getattr(self, registry))


NAMES_KEY = "x-names"  # JSON Schema placeholder of a registry's names, filled in by `suite_json_schema`


def _names(info: ValidationInfo) -> Names:
    if not isinstance(info.context, dict) or not isinstance(info.context.get("names"), Names):
        raise TypeError("validate suites through validate_suite(data, origin, names)")
    return info.context["names"]


def one_of(registry: str, extra: tuple[str, ...] = ()) -> Any:
    """A string that must name an entry of a registry; the JSON Schema lists the entries as an enum."""

    def check(value: str, info: ValidationInfo) -> str:
        allowed = sorted({*_names(info).of(registry), *extra})
        if value not in allowed:
            raise ValueError(f"unknown {registry} '{value}'{did_you_mean(value, allowed)}: choose one of {allowed}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", NAMES_KEY: [registry, *extra]})]


Decoder = one_of("decoder")
ResizeMode = one_of("resize_mode")
Order = one_of("order")
Rounding = one_of("rounding")
Layout = one_of("layout")
Calibration = one_of("int8_calibration")
Exporter = one_of("exporter")
NmsPlace = one_of("nms_place")
TaskName = one_of("task")
Resizer = one_of("resize")
Colour = one_of("colour")
Runtime = one_of("runtime")
RuntimeOrAll = one_of("runtime", extra=("all",))
Number = Annotated[float, Field(ge=0)]
Triple = Annotated[list[float], Field(min_length=3, max_length=3)]


class Table(BaseModel):
    """A TOML table: strict types, no unknown keys (the closest valid key is named)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    hint = did_you_mean(key, cls.model_fields)
                    raise ValueError(f"unknown key '{key}'{hint}; allowed: {', '.join(cls.model_fields)}")
        return data

    def given(self) -> dict[str, Any]:
        """The keys the file set (not the defaults), lists as tuples."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump(exclude_unset=True).items()}


class ModelTable(Table):
    """The model: a PyTorch builder with its weights, or a ready ONNX file (then the reference is an ONNX runtime)."""

    builder: str | None = Field(None, description="registry name (e.g. demo-resnet) or package.module:function")
    weights: str | None = Field(None, description="safetensors or state-dict file, relative to the suite file")
    onnx: str | None = Field(None, description="instead of builder and weights: a ready ONNX file, relative to the suite file")
    kwargs: dict[str, Any] = {}
    input_name: str | None = Field(None, description="default: 'input' for a builder, the file's only input for an ONNX file")
    output_names: Annotated[list[str], Field(min_length=1, description="default for an ONNX file: the file's outputs")] | None = None
    ragged_outputs: list[str] = Field(
        [], description="outputs without a batch axis whose rows depend on the image ([K, ...]: a batch-1 model's detections)"
    )
    ragged_rows: Annotated[int, Field(ge=1, description="the rows each ragged output is NaN-padded to, with its count")] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelTable:
        if bool(self.ragged_outputs) != (self.ragged_rows is not None):
            raise ValueError("'ragged_outputs' and 'ragged_rows' go together: the outputs and the rows they are padded to")
        if self.onnx is not None:
            given = [key for key in ("builder", "weights") if getattr(self, key) is not None] + (["kwargs"] if self.kwargs else [])
            if given:
                raise ValueError(f"'onnx' replaces builder, weights and kwargs: remove {', '.join(given)}")
            return self
        missing = [key for key in ("builder", "weights", "output_names") if getattr(self, key) is None]
        if missing:
            raise ValueError(f"needs {' and '.join(repr(k) for k in missing)} (or 'onnx' = a ready ONNX file)")
        return self


PerSplit = str | dict[str, str]


class DataTable(Table):
    manifest: str | None = Field(None, description="JSON manifest, relative to the suite file")
    image_folder: str | None = Field(None, description="instead of a manifest: one sub-folder per class (torchvision ImageFolder)")
    coco: PerSplit | None = Field(None, description="instead: a COCO instances file (the split judged), or a table split -> file")
    images: PerSplit | None = Field(None, description="with coco: the folder of its file_names, or a table split -> folder")
    yolo: str | None = Field(None, description="instead: an Ultralytics data.yaml (path, an image folder per split key, names)")
    split: str = "eval"
    calibration_split: str | None = None
    max_pixels: Annotated[int, Field(ge=1, description="larger images are refused, for every decoder")] = IntakePolicy.max_pixels
    min_side: Annotated[int, Field(ge=1, description="images with a shorter side are refused")] = IntakePolicy.min_side

    @model_validator(mode="after")
    def _one_source(self) -> DataTable:
        if sum(getattr(self, key) is not None for key in DATA_SOURCES) != 1:
            raise ValueError(f"needs one of {', '.join(repr(k) for k in DATA_SOURCES)}")
        if (self.coco is None) != (self.images is None):
            raise ValueError("'coco' and 'images' go together: the instances file and the folder its file_names are in")
        for key in ("coco", "images"):
            value = getattr(self, key)
            missing = [s for s in self.splits if isinstance(value, dict) and s not in value]
            if missing:
                raise ValueError(f"{key} has no split '{missing[0]}': give {key} = {{{', '.join(f'{s} = ...' for s in self.splits)}}}")
        if isinstance(self.coco, str) and self.calibration_split:
            raise ValueError(
                f"a COCO file is one split: give coco = {{{self.split} = ..., {self.calibration_split} = ...}} for calibration_split"
            )
        return self

    @property
    def splits(self) -> list[str]:
        """The splits the suite reads: the one judged and the calibration split."""
        return [self.split, *([self.calibration_split] if self.calibration_split else [])]

    def per_split(self, key: str) -> dict[str, str]:
        """`coco` or `images` as split -> path (one path given serves every split)."""
        value = getattr(self, key)
        return {s: value if isinstance(value, str) else value[s] for s in self.splits} if value is not None else {}


class StackTable(Table):
    """Pre-processing keys; in [stacks.<name>] each one overrides the reference [stack]."""

    decoder: Decoder | None = None
    exif: bool | None = None
    colour: Colour | None = None
    resize: Resizer | None = None
    resize_size: Annotated[int, Field(ge=1)] | None = None
    resize_mode: ResizeMode | None = None
    crop: Annotated[int, Field(ge=0, description="0: no crop")] | None = None
    order: Order | None = None
    rounding: Rounding | None = None
    mean: Triple | None = None
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)] | None = None
    layout: Layout | None = None
    max_size: Annotated[int, Field(ge=1, description="keep-ratio: longer-side limit and canvas size")] | None = None
    pad_value: Annotated[int, Field(ge=0, le=255, description="letterbox / keep-ratio padding, before normalisation")] | None = None
    size_divisor: (
        Annotated[int, Field(ge=0, description="letterbox / keep-ratio: 0, one canvas; N, each image's own size, a multiple of N")] | None
    ) = None
    size_fit: (
        Annotated[Literal["pad", "resize"], Field(description="keep-ratio size_divisor: pad up to the multiple, or resize to the nearest")]
        | None
    ) = None


class ExportTable(Table):
    exporter: Annotated[
        Exporter, Field(description="dynamo (torch.export) | torchscript (tracing) | auto (dynamo, falling back to torchscript)")
    ] = "dynamo"
    opset: Annotated[int, Field(ge=7)] = 18
    atol: Annotated[float, Field(gt=0)] = 1e-4
    parity_samples: Annotated[int, Field(ge=1)] = 32
    fp16_op_block_list: list[str] = []
    fp16_keep_fp32: Annotated[list[str], Field(description="layers (PyTorch module names) kept in FP32 in the FP16 model")] = []
    fp16_out_of_range: Annotated[
        Fp16OutOfRange,
        Field(description="values beyond FP16's range (FP16 range audit): keep their layers in FP32, fail, or only report them"),
    ] = "keep-fp32"
    int8_keep_fp32: Annotated[list[str], Field(description="layers kept in float in the Q/DQ INT8 model")] = []
    int8_calibration: Calibration = "minmax"
    int8_per_channel: bool = True
    int8_reduce_range: Annotated[
        bool,
        Field(
            description="7-bit weights: x86 CPUs without VNNI sum 8-bit products in saturating 16-bit pairs, which "
            "full-range weights overflow (ONNX Runtime's and OpenVINO's documented workaround)"
        ),
    ] = True
    trt_workspace_mb: Annotated[int, Field(ge=1)] = 1024
    nms: Annotated[
        NmsPlace,
        Field(
            description="detection: python (the task's NMS on the raw outputs) | graph (decode + NonMaxSuppression appended to "
            "the exported graph, run by each runtime; the PyTorch reference runs torchvision's batched_nms)"
        ),
    ] = "python"
    trt_batch: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3, description="min, opt, max batch")] = [
        1,
        32,
        64,
    ]

    @model_validator(mode="after")
    def _ordered_batch(self) -> ExportTable:
        low, opt, high = self.trt_batch
        if not low <= opt <= high:
            raise ValueError(f"trt_batch {self.trt_batch} must be [min, opt, max] with min <= opt <= max")
        return self


class OutputToleranceTable(Table):
    """[tolerance.<precision>.outputs.<output>]: one output's own numeric limits."""

    max_abs: Number | None = None
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None


class ToleranceTable(Table):
    max_abs: Number | None = None
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    outputs: dict[str, OutputToleranceTable] | None = None
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    max_flips: Annotated[int, Field(ge=0)] | None = None
    max_metric_delta: Number | None = None
    max_negative_flip_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    min_mean_matched_iou: Annotated[float, Field(ge=0, le=1)] | None = None
    max_layer_rel_l2: Annotated[float, Field(gt=0)] | None = None


class GoldenTable(Table):
    dir: str | None = None
    raw_samples: (
        Annotated[int, Field(ge=0, description="samples whose exact raw outputs a golden keeps (default: all that fit)")] | None
    ) = None
    max_raw_mb: Annotated[float, Field(gt=0, description="at most this many MB of raw outputs per golden (uncompressed)")] = 16.0


class RunTable(Table):
    reference: Runtime | None = Field(None, description="default: torch-fp32 for a PyTorch model, ort-fp32 for an ONNX file")
    runtimes: list[RuntimeOrAll] | None = Field(None, description="default: the reference and ort-fp32")
    batch_size: Annotated[int, Field(ge=1)] = 32
    xfail: dict[Runtime, str] = {}  # runtime -> why its checks are expected to fail (the pytest plugin marks them xfail)


class SuiteFile(Table):
    """A suite file: which model, which data, which reference stack, which tolerances."""

    name: str | None = None
    plugins: Annotated[list[str], Field(description="modules imported before the suite is read: they register tasks, decoders, ...")] = []
    task: TaskName = "classification"
    description: str = ""
    model: ModelTable
    data: DataTable
    stack: StackTable
    stacks: dict[str, StackTable] = {}
    postprocess: dict[str, Any] = {}
    export: ExportTable = ExportTable()
    tolerance: dict[str, ToleranceTable] = {}
    golden: GoldenTable = GoldenTable()
    run: RunTable = RunTable()

    @model_validator(mode="after")
    def _task_keys(self, info: ValidationInfo) -> SuiteFile:
        allowed = _names(info).postprocess[self.task]
        for key, value in self.postprocess.items():
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                raise ValueError(f"[postprocess] has unknown key '{key}'{hint}: {self.task} takes {sorted(allowed)}")
            if type(value) is not allowed[key]:
                expected = EXPECTED.get(f"{allowed[key].__name__}_type", allowed[key].__name__)
                raise ValueError(f"[postprocess] {key} = {value!r}: expected {expected}")
        if "reference" in self.stacks:
            raise ValueError("[stacks.reference]: 'reference' is the name of [stack]; give the named stack another name")
        return self


def validate_suite(data: dict[str, Any], origin: str, names: Names) -> SuiteFile:
    """The parsed TOML of a suite file, validated against the registries' `names`; the first problem is one
    HarnessError line."""
    try:
        return SuiteFile.model_validate(data, context={"names": names})
    except ValidationError as exc:
        raise HarnessError(f"{origin}: {describe_error(exc.errors()[0])}", "see `harness schema` or harness/suites/demo.toml") from exc


def describe_error(error: Any) -> str:
    """One pydantic error as '[stack] resize_size = '72': expected an integer'."""
    loc: list[str] = []
    for part in error["loc"]:  # list positions stay with their key: runtimes[1]
        if isinstance(part, int) and loc:
            loc[-1] += f"[{part}]"
        else:
            loc.append(str(part))
    value = error.get("input")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"[{'.'.join(loc[:-1])}] needs '{loc[-1]}'" if len(loc) > 1 else f"missing [{loc[0]}] table"
    if isinstance(value, dict) or not loc:  # a check of a whole table
        return f"[{'.'.join(loc)}] {message}" if loc else message
    where = f"[{'.'.join(loc[:-1])}] {loc[-1]}" if len(loc) > 1 else loc[0]
    return f"{where} = {value!r}: {_expected(error, message)}"


def _expected(error: Any, message: str) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in EXPECTED:
        return f"expected {EXPECTED[kind]}"
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"expected a value {bounds[kind]} {limit}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} items"
    return message


def _fill_names(node: Any, names: Names) -> Any:
    """The schema with each registry placeholder replaced by the registry's names as an enum."""
    if isinstance(node, list):
        return [_fill_names(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    if NAMES_KEY in node:
        registry, *extra = node[NAMES_KEY]
        node = {k: v for k, v in node.items() if k != NAMES_KEY} | {"enum": sorted({*names.of(registry), *extra})}
    return {key: _fill_names(value, names) for key, value in node.items()}


def suite_json_schema(names: Names) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of suite files, for editors and CI linting."""
    schema = _fill_names(SuiteFile.model_json_schema(), names)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sysnoise-harness suite file"
    return schema
