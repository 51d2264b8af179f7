"""Model artifacts, built lazily (Polygraphy's loader idea).

A runtime asks for what it consumes (`torch_model()`, `onnx_path(precision)`,
`openvino_ir(precision)`, `tensorrt_engine(precision)`) and only then is it
built, through the content-addressed cache: a run on `torch-fp32` alone never
exports, and an artifact already in the cache is reused.  Precision lives in
the files: `model.fp32.onnx`, `model.fp16.onnx`, `model.int8-qdq.onnx`, and
every backend consumes the same file for a precision.  A model variant
(`exporters.rewrites`) rewrites the FP32 ONNX once and patches the PyTorch
model alike; its precision variants derive from the rewritten file.

An artifact is a recipe, a chain of steps each cached under the hash of its
input file and its own settings (so under the hash of the whole chain):
`export-onnx -> [rewrite] -> fp16 (after its range audit) | int8 -> [keep-fp32 layers] -> [nms-graph] -> [mark tensors]
-> [openvino-ir | tensorrt-engine]` (`nms-graph`: `[export] nms = "graph"` appends the decode and NMS,
`exporters.nms_graph`; the PyTorch model gets its twin). `derive(keep_fp32=..., mark=...)` gives
the same model with other steps: "the int8 model with these 6 intermediate
tensors exposed" is an ordinary cached artifact on every backend.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporters.cache import ArtifactCache
from exporters.spec import CalibrationSet, ExportSpec, TorchSource
from harness import __version__
from harness.core.errors import HarnessError, first_line
from harness.core.hashing import sha256_file

if TYPE_CHECKING:  # the libraries behind each step are imported by the step that runs (`harness --help` imports none)
    import numpy as np
    import torch

    from exporters.onnx_export import OutputParity
    from exporters.rewrites import ModelVariant

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILENAMES = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8-qdq.onnx"}
INFO_FILE = "info.json"


def folder_sha256(folder: Path) -> str:
    """One hash over every file of a built artifact (an IR's .xml and .bin, an engine), by name."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


class ModelArtifacts:
    """A PyTorch model (exported with `export` settings for inputs of `input_hw`), or a ready ONNX file, in every
    form a runtime may need."""

    def __init__(
        self,
        cache: ArtifactCache,
        model: TorchSource | None = None,
        onnx_file: Path | None = None,
        export: ExportSpec | None = None,
        input_hw: tuple[int, int] | None = None,
        parity_inputs: Callable[[], np.ndarray] | None = None,
        calibration_inputs: Callable[[], CalibrationSet] | None = None,
        variant: ModelVariant | None = None,
        ragged: tuple[tuple[str, ...], int] = ((), 0),
        image_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
    ) -> None:
        if (model is None) == (onnx_file is None):
            raise ValueError("give either a model or an onnx_file")
        self.cache = cache
        self.model = model
        self._onnx_file = onnx_file
        self._parity_inputs = parity_inputs
        self._calibration_inputs = calibration_inputs
        self.variant = variant
        self.ragged = ragged  # outputs without a batch axis (data-dependent rows) and the rows they are padded to
        self.export = export or ExportSpec()
        self.input_hw = input_hw
        self.image_sizes = image_sizes  # per-image sizes: the (smallest, largest) H x W; the export leaves H and W dynamic
        # recipe steps after the precision conversion (`derive` changes them)
        self.keep_fp32: dict[str, tuple[str, ...]] = {p: self.export.keep_for(p) for p in ("fp16", "int8")}
        self.mark: tuple[str, ...] = ()
        self.log: list[str] = []
        self.parity: list[OutputParity] = []
        self.provenance: dict[str, dict[str, Any]] = {}
        self.accessed: list[str] = []  # labels requested since the caller last cleared it
        self._built: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}  # shared with derived artifacts
        self._file_sha256: dict[Path, str] = {}

    def derive(self, keep_fp32: dict[str, tuple[str, ...]] | None = None, mark: tuple[str, ...] | None = None) -> ModelArtifacts:
        """The same model with other recipe steps: layers kept in FP32 (per precision), tensors exposed as outputs.
        The PyTorch model and the FP32 export are shared; every derived file is cached under its own chain."""
        derived = copy.copy(self)  # cached properties (torch model, fp32 export) live in __dict__ and are shared
        derived.keep_fp32 = dict(self.keep_fp32) | (keep_fp32 or {})
        derived.mark = self.mark if mark is None else tuple(mark)
        derived.log, derived.provenance, derived.accessed = [], dict(self.provenance), []
        return derived

    def recipe(self, precision: str, target: str = "onnx") -> list[str]:
        """The chain of steps that makes this precision's artifact for `target`, in words."""
        steps = ["onnx-fp32" if self.model is None else f"export-onnx({self.model.builder}, opset {self.export.opset})"]
        if self.variant:
            steps.append(f"rewrite({self.variant.name})")
        if precision == "fp16":
            steps.append("fp16")
        elif precision == "int8":
            export = self.export
            flags = [export.int8_calibration] + ["per-channel"] * export.int8_per_channel + ["7-bit weights"] * export.int8_reduce_range
            steps.append(f"int8({', '.join(flags)})")
        if self.keep_fp32.get(precision):
            steps.append(f"keep-fp32({', '.join(self.keep_fp32[precision])})")
        if self.export.graph_nms:
            steps.append(f"nms-graph({self.export.graph_nms.decoder}, K={self.export.graph_nms.max_detections})")
        if self.mark:
            steps.append(f"mark({len(self.mark)} tensors)")
        if target != "onnx":
            steps.append(target)
        return steps

    # -- identity -----------------------------------------------------------------

    @cached_property
    def weights_sha256(self) -> str:
        """The hash of what holds the trained weights: the weights file, or the ready ONNX file."""
        path = self.model.weights if self.model else self._onnx_file
        assert path is not None
        if not path.is_file():
            raise HarnessError(f"weights file not found: {path}", "fix [model] weights in the suite")
        return sha256_file(path)

    @cached_property
    def fixed_batch(self) -> int | None:
        """The batch size a ready ONNX file's input is fixed to (every runtime is then fed at that size); 1 for a model
        with ragged outputs (one image's rows each)."""
        if self.ragged[0]:
            return 1
        return self._onnx_io[2] if self._onnx_file is not None else None

    @cached_property
    def _onnx_io(self) -> tuple[tuple[str, ...], tuple[str, ...], int | None]:
        """A ready file's input names, output names and its first input's fixed batch size (None: dynamic), read once."""
        assert self._onnx_file is not None
        import onnx

        graph = onnx.load(str(self._onnx_file), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        dims = inputs[0].type.tensor_type.shape.dim if inputs else []
        batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        return tuple(i.name for i in inputs), tuple(o.name for o in graph.output), batch

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self.model.input_name,) if self.model else self._onnx_io[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        """What every runtime returns: the model's outputs, or the graph NMS's detections."""
        if self.export.graph_nms:
            from exporters.nms_graph import GRAPH_OUTPUTS

            return GRAPH_OUTPUTS
        return self.model.output_names if self.model else self._onnx_io[1]

    # -- PyTorch ----------------------------------------------------------------------

    @cached_property
    def _torch(self) -> torch.nn.Module:
        """The model as trained (what the FP32 ONNX is exported from)."""
        if self.model is None:
            raise HarnessError("torch runtimes need the PyTorch model of a suite", "with --onnx use onnxruntime/openvino runtimes")
        return self.model.build()

    @cached_property
    def _torch_variant(self) -> torch.nn.Module:
        from exporters.rewrites import VariantNotApplicable, patch_torch

        assert self.variant is not None
        model = copy.deepcopy(self._torch)
        if not patch_torch(model, self.variant):
            raise VariantNotApplicable(
                f"model variant '{self.variant.name}' has no PyTorch module to patch", "run it on ONNX-based runtimes (ort-*, ov-*, trt-*)"
            )
        if self._parity_inputs:  # a layer after the patched ones may expect the old shapes (a Linear after ceil-mode pools)
            import torch

            try:
                with torch.inference_mode():
                    model(torch.from_numpy(self._parity_inputs()[:1]))
            except RuntimeError as exc:
                raise VariantNotApplicable(
                    f"the PyTorch twin of model variant '{self.variant.name}' fails: {first_line(exc)}",
                    "the model's later layers need the shapes the variant changes",
                ) from exc
        return model

    def torch_model(self) -> torch.nn.Module:
        """The PyTorch model, with the model variant applied when there is one, and the graph NMS's twin after it."""
        return self._torch_nms if self.export.graph_nms else self._torch_plain

    @property
    def _torch_plain(self) -> torch.nn.Module:
        return self._torch_variant if self.variant else self._torch

    @cached_property
    def _torch_nms(self) -> torch.nn.Module:
        from exporters.nms_graph import twin

        assert self.export.graph_nms is not None
        return twin(self._torch_plain, self.export.graph_nms)

    # -- cached files -------------------------------------------------------------

    def _sha256(self, path: Path) -> str:
        """Hash of a source file, once per file: cached artifacts never change in place."""
        if path not in self._file_sha256:
            self._file_sha256[path] = sha256_file(path)
        return self._file_sha256[path]

    def _cached(self, label: str, fields: dict[str, Any], filename: str, build: Callable[[Path], dict[str, Any]]) -> Path:
        """Get or build one artifact; its provenance (info.json) is kept in `self.provenance[label]`."""
        key = (label, json.dumps(fields, sort_keys=True, default=str))
        self.accessed.append(label)
        if key in self._built:
            path, self.provenance[label] = self._built[key]
            return path
        built = []

        def build_with_info(out: Path) -> None:
            info = build(out) | {"files_sha256": folder_sha256(out.parent)}  # e.g. an int8 file calibrated on another CPU
            (out.parent / INFO_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
            built.append(out)

        path = self.cache.get_or_build(label.split(":")[0], fields, filename, build_with_info)
        self.log.append(f"{'built' if built else 'cached'} {label}: {path}")
        self.provenance[label] = json.loads((path.parent / INFO_FILE).read_text())
        self._built[key] = (path, self.provenance[label])
        return path

    def onnx_path(self, precision: str) -> Path:
        """This precision's ONNX file after every recipe step (kept layers, exposed tensors)."""
        from exporters.graph import SURGERY_VERSION, mark_outputs

        path = self._precision_onnx(precision)
        if self.export.graph_nms:
            path = self._nms_onnx(path, precision)
        if not self.mark:
            return path
        fields = {
            "artifact": f"onnx-{precision}-marked",
            "source_sha256": self._sha256(path),
            "mark": list(self.mark),
            "surgery": SURGERY_VERSION,
        }
        return self._cached(f"onnx:{precision}+mark", fields, path.name, lambda out: mark_outputs(path, out, self.mark))

    def _nms_onnx(self, source: Path, precision: str) -> Path:
        """`source` with the decode and NMS appended (`exporters.nms_graph`)."""
        import onnx

        from exporters.nms_graph import append_nms

        assert self.export.graph_nms is not None
        nms = self.export.graph_nms
        fields = {"artifact": f"onnx-{precision}-nms", "source_sha256": self._sha256(source), "onnx": onnx.__version__} | nms.describe()
        return self._cached(f"onnx:{precision}+nms", fields, source.name, lambda out: append_nms(source, out, nms))

    def marked_outputs(self, precision: str) -> dict[str, str]:
        """Exposed tensor -> the graph output that carries it (after its DequantizeLinear in a Q/DQ model)."""
        self.onnx_path(precision)
        return dict(self.provenance[f"onnx:{precision}+mark"]["marked"]) if self.mark else {}

    def graph_outputs(self, precision: str) -> tuple[str, ...]:
        """Output names of this precision's ONNX file: the model's, then any exposed tensors."""
        import onnx

        return tuple(o.name for o in onnx.load(str(self.onnx_path(precision)), load_external_data=False).graph.output)

    def _kept_nodes(self, precision: str) -> list[str]:
        import onnx

        from exporters.graph import layer_nodes

        return layer_nodes(onnx.load(str(self.onnx_path("fp32")), load_external_data=False), self.keep_fp32[precision])

    def _precision_onnx(self, precision: str) -> Path:
        if precision == "fp32":
            if self._onnx_file and not self.variant:
                return self._onnx_file
            self.accessed.append(f"onnx:fp32+{self.variant.name}" if self.variant else "onnx:fp32")  # cached_property skips _cached
            return self._variant_onnx if self.variant else self.export_fp32()
        if precision not in PRECISIONS:
            raise HarnessError(f"no ONNX variant for precision '{precision}'", f"precisions: {', '.join(PRECISIONS)}")
        import onnxruntime

        from exporters.int8 import QDQ_OPSET, CalibrationReader, calibration_hash, quantize_int8

        source = self._precision_onnx("fp32")
        fields: dict[str, Any] = {
            "artifact": f"onnx-{precision}",
            "source_sha256": self._sha256(source),
            "onnxruntime": onnxruntime.__version__,
        }
        if precision == "fp16":
            return self._fp16_onnx(source, fields)
        calibration = self.calibration_inputs()
        fields |= {
            "qdq_opset": QDQ_OPSET,
            "method": self.export.int8_calibration,
            "per_channel": self.export.int8_per_channel,
            "reduce_range": self.export.int8_reduce_range,
            "calibration": calibration_hash(calibration),
        }
        reader = CalibrationReader(calibration, self.input_names[0])
        quantized = self._cached(
            "onnx:int8",
            fields,
            ONNX_FILENAMES["int8"],
            lambda out: quantize_int8(source, out, reader, self.export),
        )
        if not self.keep_fp32["int8"]:
            return quantized
        from exporters.graph import SURGERY_VERSION, keep_float

        nodes = self._kept_nodes("int8")
        keep = list(self.keep_fp32["int8"])
        fields = {"artifact": "onnx-int8-keep", "source_sha256": self._sha256(quantized), "keep_fp32": keep, "surgery": SURGERY_VERSION}
        return self._cached(
            "onnx:int8+keep",
            fields,
            ONNX_FILENAMES["int8"],
            lambda out: keep_float(quantized, source, out, nodes) | {"keep_fp32": keep},
        )

    def _fp16_onnx(self, source: Path, fields: dict[str, Any]) -> Path:
        """The FP16 file, after the FP16 range audit (`exporters.fp16_audit`) of `source` on the audit inputs: what it
        finds is kept in FP32, refused or reported, as [export] fp16_out_of_range says; its lines go to the log."""
        from exporters.fp16 import convert_fp16, load_named
        from exporters.fp16_audit import AUDIT_VERSION, audit_fp16, audit_lines
        from harness.core.hashing import digest

        nodes = self._kept_nodes("fp16") if self.keep_fp32["fp16"] else []
        policy = self.export.fp16_out_of_range
        origin, inputs = self._audit_inputs()
        fields |= {
            "op_block_list": list(self.export.fp16_op_block_list),
            "fp16_out_of_range": policy,
            "audit": AUDIT_VERSION,
            "audit_inputs": f"{origin}: {digest(inputs)}" if inputs is not None else None,
        }
        if nodes:
            fields["keep_fp32"] = list(self.keep_fp32["fp16"])

        def build(out: Path) -> dict[str, Any]:
            audit = audit_fp16(load_named(source), inputs, self.input_names[0], origin)
            if policy == "fail" and audit.findings:
                raise audit.failure(source.name)
            kept = audit.kept_nodes if policy == "keep-fp32" else []
            info = convert_fp16(source, out, self.export.fp16_op_block_list, sorted({*nodes, *kept}))
            return info | {"fp16_audit": audit.describe(policy)}

        path = self._cached("onnx:fp16", fields, ONNX_FILENAMES["fp16"], build)
        self.log.extend(line for line in audit_lines(self.provenance["onnx:fp16"]["fp16_audit"]) if line not in self.log)
        return path

    def _audit_inputs(self) -> tuple[str | None, np.ndarray | None]:
        """What the FP16 range audit runs on: the calibration split, else the parity inputs, else nothing."""
        if self._calibration_inputs is not None:
            return "calibration split", self._calibration_inputs().tensors
        if self._parity_inputs is not None:
            return "parity inputs", self._parity_inputs()
        return None, None

    @cached_property
    def _variant_onnx(self) -> Path:
        """The FP32 ONNX with the model variant applied, validated against the patched PyTorch model."""
        import onnx

        from exporters.rewrites import rewrite_onnx

        assert self.variant is not None
        variant, source = self.variant, self._onnx_file or self.export_fp32()
        fields = {"artifact": "onnx-fp32-variant", "variant": variant.name, "source_sha256": self._sha256(source), "onnx": onnx.__version__}
        path = self._cached(f"onnx:fp32+{variant.name}", fields, ONNX_FILENAMES["fp32"], lambda out: rewrite_onnx(source, out, variant))
        if self.model and self._parity_inputs:
            from onnxruntime.capi.onnxruntime_pybind11_state import Fail

            from exporters.rewrites import VariantNotApplicable

            try:
                self._check_parity(path, f"model variant '{variant.name}' rewrite")
            except Fail as exc:  # sizes the export fixed (a Resize to a skip's size) no longer fit the shapes it changes
                raise VariantNotApplicable(
                    f"the rewrite of model variant '{variant.name}' fails in ONNX Runtime: {first_line(exc)}"[:300],
                    "the exported graph fixed shapes the variant changes",
                ) from exc
        return path

    def calibration_inputs(self) -> CalibrationSet:
        if self._calibration_inputs is None:
            raise HarnessError("int8 needs calibration data", "run int8 through a suite whose [data] names a calibration_split")
        return self._calibration_inputs()

    def openvino_ir(self, precision: str) -> Path:
        """IR xml: fp32/fp16 from the FP32 ONNX (fp16 = compressed weights), int8 from the Q/DQ ONNX."""
        import openvino as ov

        from exporters.openvino_ir import convert_ir

        source = self.onnx_path("int8" if precision == "int8" else "fp32")
        compress = precision == "fp16"
        fields = {
            "artifact": f"openvino-{precision}",
            "source_sha256": self._sha256(source),
            "openvino": ov.get_version(),
            "compress": compress,
        }
        return self._cached(f"openvino:{precision}", fields, "model.xml", lambda out: convert_ir(source, out, compress))

    def tensorrt_engine(self, precision: str) -> Path:
        """Serialized engine built from this precision's ONNX for the GPU in use."""
        from exporters.tensorrt_engine import EngineOptions, build_engine, engine_fields

        source = self.onnx_path(precision)
        if self.image_sizes:  # each image alone, at its own size: a profile of batch 1 from the smallest size to the largest
            options = EngineOptions(self.input_names[0], (1, 1, 1), self.export.trt_workspace_mb, self.image_sizes[1], self.image_sizes[0])
        else:
            batch = (self.fixed_batch,) * 3 if self.fixed_batch else self.export.trt_batch  # a file fixed to batch 1: a profile of 1
            options = EngineOptions(self.input_names[0], batch, self.export.trt_workspace_mb, self.input_hw if self._onnx_file else None)
        fields = engine_fields(self._sha256(source), options) | {"artifact": f"tensorrt-{precision}"}
        timing_cache = self.cache.root / "tensorrt" / "timing.cache"
        return self._cached(f"tensorrt:{precision}", fields, "model.engine", lambda out: build_engine(source, out, options, timing_cache))

    def export_fp32(self) -> Path:
        return self._fp32_onnx

    @cached_property
    def _fp32_onnx(self) -> Path:
        """The cached fp32 ONNX file (exported when absent by the `[export] exporter`), parity-checked against PyTorch.

        The exporter that made the file is in its cache key and its provenance. Under `auto` torch.export is tried
        first; when it fails, the TorchScript export is keyed apart from a plain `torchscript` one (it says torch.export
        failed on this model, with this torch), so later runs take it from the cache without trying torch.export again,
        and a `torchscript` export cached for a model torch.export can take is never used."""
        import onnx
        import torch

        from exporters.onnx_export import EXPORT_CALLS, ExportFailed, export_onnx

        assert self.model is not None
        model = self.model
        inputs = self._parity_inputs() if self._parity_inputs else None
        if inputs is None or len(inputs) == 0:
            raise ValueError("export needs parity inputs")
        identity = {  # also the file's metadata (without the exporter: a torch.export file keeps the bytes it had)
            "artifact": "onnx-fp32",
            "builder": model.builder,
            "kwargs": model.kwargs,
            "weights_sha256": self.weights_sha256,
            "input_name": model.input_name,
            "output_names": list(model.output_names),
            "opset": self.export.opset,
            "input_hw": self.input_hw,
            **({"image_sizes": self.image_sizes} if self.image_sizes else {}),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        }
        keyed = {exporter: identity | {"exporter": call} for exporter, call in EXPORT_CALLS.items()}
        fallback = keyed["torchscript"] | {"fallback_from": EXPORT_CALLS["dynamo"]}
        label, filename = "onnx:fp32", ONNX_FILENAMES["fp32"]

        def export(exporter: str, fields: dict[str, Any], **noted: str) -> Path:
            def build(out: Path) -> dict[str, Any]:
                metadata = {f"harness.{k}": str(v) for k, v in identity.items()} | {"harness.version": __version__}
                export_onnx(
                    self._torch,
                    inputs[:2],
                    out,
                    model.input_name,
                    model.output_names,
                    self.export.opset,
                    metadata,
                    exporter,
                    dynamic_hw=self.image_sizes is not None,
                )
                return fields | noted

            return self._cached(label, fields, filename, build)

        if self.export.exporter != "auto":
            path = export(self.export.exporter, keyed[self.export.exporter])
        elif self.cache.find("onnx", keyed["dynamo"], filename) is None and self.cache.find("onnx", fallback, filename):
            path = export("torchscript", fallback)  # torch.export failed on this model before
        else:
            try:
                path = export("dynamo", keyed["dynamo"])
            except ExportFailed as failure:
                try:
                    path = export("torchscript", fallback, dynamo_error=failure.reason)
                except ExportFailed as second:
                    raise HarnessError(
                        f"ONNX export failed with both exporters: torch.export: {failure.reason}; TorchScript: {second.reason}",
                        "the model must be exportable by torch.export or traceable by torch.jit.trace",
                    ) from second
        info = self.provenance[label]
        fell_back = f" ([export] exporter = auto; torch.export failed: {info['dynamo_error']})" if "dynamo_error" in info else ""
        self.log.append(f"exporter: {info['exporter']}{fell_back}")
        self._check_parity(path, "export", self._torch)
        return path

    def _check_parity(self, path: Path, what: str, model: torch.nn.Module | None = None) -> None:
        """`[✓]/[x]` per output of `path` against PyTorch (the variant-patched model unless `model` is given)."""
        from exporters.onnx_export import check_parity

        assert self.model is not None and self._parity_inputs is not None
        self.parity = check_parity(model or self._torch_plain, path, self._parity_inputs(), self.model.input_name, self.export.atol)
        self.log.extend(f"{r.line()} [{what}]" for r in self.parity)
        failed = [r for r in self.parity if not r.ok]
        if failed:
            raise HarnessError(
                f"{what} parity failed for model '{self.model.builder}': " + "; ".join(r.line() for r in failed),
                "the ONNX graph disagrees with PyTorch; raise [export] atol only if the difference is understood",
            )
