"""The Python API: suites from a mapping, check / assert_conformant with typed errors, check_model, and an import
that loads no heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness import api
from harness.core.errors import HarnessError
from harness.spec.suite import BUNDLED_DIR, tomllib


def _demo_mapping() -> dict:
    return tomllib.loads((BUNDLED_DIR / "demo.toml").read_text())


def test_import_loads_no_torch_and_no_runtime() -> None:
    probe = "import sys, harness.api; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'cv2') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_suite_from_a_mapping_is_the_suite_of_its_file() -> None:
    from_file = api.load_suite("demo")
    from_mapping = api.Suite.from_mapping(_demo_mapping(), base=BUNDLED_DIR)
    assert from_mapping.model == from_file.model and from_mapping.stack == from_file.stack
    assert from_mapping.tolerances == from_file.tolerances and from_mapping.golden_dir == from_file.golden_dir
    with pytest.raises(HarnessError, match=r"suite 'demo' \(from a mapping\): .*batch_size"):
        api.Suite.from_mapping(_demo_mapping() | {"run": {"batch_size": 0}}, base=BUNDLED_DIR)


def test_check_reports_and_keeps_the_outputs(cache_dir: Path) -> None:
    report = api.check("demo", ["ort-fp32"], limit=64, golden=False, cache_dir=cache_dir)
    assert report.passed and report.samples == 64 and [r.runtime for r in report.results] == ["torch-fp32", "ort-fp32"]
    assert report.measured is not None and report.measured.inferences["ort-fp32"].outputs["logits"].shape == (64, 12)
    with pytest.raises(HarnessError, match="unknown runtime 'ort-fp33'"):
        api.check("demo", ["ort-fp33"], limit=8, golden=False, cache_dir=cache_dir)


def test_assert_conformant_lists_each_failed_check(cache_dir: Path) -> None:
    mapping = _demo_mapping()
    mapping["tolerance"] = {"int8": {"max_abs": 1e-9}}  # INT8 never comes within 1e-9 of FP32, on any CPU
    suite = api.Suite.from_mapping(mapping, base=BUNDLED_DIR)
    with pytest.raises(api.ConformanceError) as raised:
        api.assert_conformant(suite, ["ort-int8"], limit=32, golden=False, cache_dir=cache_dir)
    (runtime, against, check), *_ = raised.value.failures
    assert (runtime, against, check.name, check.limit) == ("ort-int8", "reference:torch-fp32", "max_abs", 1e-9)
    assert "ort-int8 vs reference:torch-fp32: max_abs = " in str(raised.value) and "limit <= 1e-09" in str(raised.value)
    assert api.assert_conformant(suite, ["ort-fp32"], limit=32, golden=False, cache_dir=cache_dir).passed


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_check_model_exports_and_compares_on_the_given_tensors(cache_dir: Path) -> None:
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    result = api.check_model(Tiny(), example, ["ort-fp32", "ov-fp32"], cache_dir=cache_dir).assert_passed()
    assert set(result.stats) == {"ort-fp32", "ov-fp32"} and result.stats["ort-fp32"]["output_0"]["max_abs"] < 1e-4
    half = api.check_model(Tiny(), example, ["ort-fp16"], {"max_abs": 0.0}, cache_dir=cache_dir)  # fp16 weights always round
    with pytest.raises(api.ConformanceError, match=r"ort-fp16 vs torch: output_0.max_abs = .*, limit <= 0"):
        half.assert_passed()
    with pytest.raises(HarnessError, match="unknown tolerance keys"):
        api.check_model(Tiny(), example, tolerance={"rtol": 1.0})
