"""ONNX graph rewrites (model-inference variants) against what PyTorch computes with the same setting."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters.cache import ArtifactCache
from exporters.onnx_export import export_onnx
from exporters.rewrites import MODEL_VARIANTS, VariantNotApplicable, patch_torch, rewrite_onnx
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite


def _export(model: nn.Module, size: int, path: Path) -> np.ndarray:
    x = np.random.default_rng(size).standard_normal((2, 3, size, size)).astype(np.float32)
    export_onnx(model.eval(), x, path, "x", ("y",), 18, {})
    return x


def _onnx_dims(path: Path) -> list[int]:
    return [d.dim_value for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim[1:]]


@pytest.mark.parametrize("size", [31, 32, 33])
@pytest.mark.parametrize(("variant", "module"), [("maxpool-ceil", nn.MaxPool2d(3, 2, 1)), ("maxpool-ceil", nn.MaxPool2d(2, 2))])
def test_ceil_mode_rewrite_matches_pytorch_shapes_and_values(variant: str, module: nn.Module, size: int, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), module)
    x = _export(model, size, tmp_path / "m.onnx")
    info = rewrite_onnx(tmp_path / "m.onnx", tmp_path / "r.onnx", MODEL_VARIANTS[variant])
    assert info["rewritten_nodes"]
    patched = copy.deepcopy(model)
    assert patch_torch(patched, MODEL_VARIANTS[variant])
    with torch.inference_mode():
        expected = patched(torch.from_numpy(x)).numpy()
        floor = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(tmp_path / "r.onnx")).run(None, {"x": x})[0]
    assert got.shape == expected.shape
    assert _onnx_dims(tmp_path / "r.onnx") == list(expected.shape[1:])  # re-inferred static shapes, as PyTorch's
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if size % 2 == 0 and module.kernel_size == 3:
        assert expected.shape[-1] == floor.shape[-1] + 1  # ceil mode really adds a row and a column here


@pytest.mark.parametrize(("variant", "mode"), [("upsample-linear", "nearest"), ("upsample-nearest", "bilinear")])
def test_upsample_rewrites_match_pytorch(variant: str, mode: str, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2, mode=mode))
    x = _export(model, 20, tmp_path / "m.onnx")
    rewrite_onnx(tmp_path / "m.onnx", tmp_path / "r.onnx", MODEL_VARIANTS[variant])
    patched = copy.deepcopy(model)
    patch_torch(patched, MODEL_VARIANTS[variant])
    with torch.inference_mode():
        expected, original = patched(torch.from_numpy(x)).numpy(), model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(tmp_path / "r.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - original).max() > 0.01  # the rewrite changed the computation


def test_rewrite_that_matches_nothing_says_so(tmp_path: Path) -> None:
    _export(nn.Sequential(nn.Conv2d(3, 4, 3)), 16, tmp_path / "m.onnx")
    with pytest.raises(VariantNotApplicable, match="changes nothing"):
        rewrite_onnx(tmp_path / "m.onnx", tmp_path / "r.onnx", MODEL_VARIANTS["maxpool-ceil"])
    assert not (tmp_path / "r.onnx").exists()


def test_demo_maxpool_ceil_variant_runs_on_onnxruntime_like_patched_pytorch(demo_suite: Suite, cache: ArtifactCache) -> None:
    run = SuiteRun(demo_suite, cache, limit=48)
    onnx_variant = run.infer("ort-fp32", 16, variant="maxpool-ceil")
    torch_variant = run.infer("torch-fp32", 16, variant="maxpool-ceil")
    base = run.infer("ort-fp32", 16)
    assert "onnx:fp32+maxpool-ceil" in onnx_variant.artifacts
    assert np.abs(onnx_variant.outputs["logits"] - torch_variant.outputs["logits"]).max() < 1e-4
    assert np.abs(onnx_variant.outputs["logits"] - base.outputs["logits"]).max() > 0.1
    assert any("[model variant 'maxpool-ceil' rewrite]" in line for line in run.artifacts_for("maxpool-ceil").log)
