"""torch -> ONNX export of the demo model: checker, parity, provenance, dynamic batch, cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite, load_suite


@pytest.fixture(scope="session")
def demo_run(demo_suite: Suite, cache: ArtifactCache) -> SuiteRun:
    return SuiteRun(demo_suite, cache, limit=64)


def test_export_passes_checker_and_parity(demo_run: SuiteRun) -> None:
    path = demo_run.artifacts.export_fp32()
    onnx.checker.check_model(str(path), full_check=True)
    assert demo_run.artifacts.parity and all(p.ok for p in demo_run.artifacts.parity)
    assert all(p.max_abs < 1e-4 for p in demo_run.artifacts.parity)
    assert any(line.startswith("[✓] logits") for line in demo_run.artifacts.log)


def test_export_records_provenance(demo_run: SuiteRun) -> None:
    model = onnx.load(str(demo_run.artifacts.export_fp32()))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["harness.weights_sha256"] == demo_run.artifacts.weights_sha256
    assert meta["harness.torch"] == torch.__version__
    assert meta["harness.onnx"] == onnx.__version__
    assert model.opset_import[0].version >= 17


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_exported_batch_axis_is_dynamic(demo_run: SuiteRun, batch: int) -> None:
    session = ort.InferenceSession(str(demo_run.artifacts.export_fp32()), providers=["CPUExecutionProvider"])
    x = demo_run.inputs.tensors[:batch]
    (logits,) = session.run(None, {"images": x})
    with torch.inference_mode():
        expected = demo_run.artifacts.torch_model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_second_export_reuses_the_cache(demo_suite: Suite, demo_run: SuiteRun, cache: ArtifactCache) -> None:
    first = demo_run.artifacts.export_fp32()
    before = cache.entries()  # the session's cache: other tests may have added other artifacts
    again = ModelArtifacts(
        cache,
        model=demo_suite.model,
        export=demo_suite.export,
        input_hw=demo_suite.stack.input_hw,
        parity_inputs=lambda: demo_run.inputs.tensors[:8],
    )
    assert again.export_fp32() == first
    assert again.log[0].startswith("cached")
    assert cache.entries() == before and first.parent in [folder for _, folder, _ in before]


def test_parity_failure_is_a_clear_error(make_suite: Callable[..., Path], cache: ArtifactCache) -> None:
    suite = load_suite(str(make_suite({"atol = 1e-4": "atol = 1e-12"})))
    run = SuiteRun(suite, cache, limit=16)
    with pytest.raises(HarnessError, match=r"export parity failed .*\[x\] logits"):
        run.artifacts.export_fp32()


def test_export_cli_prints_parity_lines(harness_cli: Callable[..., object]) -> None:
    result = harness_cli("export", "--suite", "demo")
    assert result.code == 0, result.err
    assert "[✓] logits: max abs diff" in result.out and "onnx fp32: " in result.out


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_an_export_is_byte_identical_wherever_the_project_lives(tmp_path: Path, exporter: str) -> None:
    """The same model source in two folders exports to the same bytes, by either exporter: no absolute path (stack
    traces of the checkout or the environment) reaches the file, and the name scopes that label layers stay (the
    torch.export-based exporter writes them)."""
    import hashlib
    import importlib.util
    import shutil

    from exporters.graph import SCOPE_KEY
    from exporters.onnx_export import export_onnx

    source = Path(__file__).resolve().parent.parent / "harness" / "demo" / "models.py"
    example = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    digests, paths = [], []
    for folder in (tmp_path / "a", tmp_path / "b" / "elsewhere"):
        folder.mkdir(parents=True)
        shutil.copy(source, folder / "models.py")
        spec = importlib.util.spec_from_file_location("relocated_demo_models", folder / "models.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        model = module.build_demo_resnet(num_classes=4).eval()
        out = folder / "model.onnx"
        export_onnx(model, example, out, "images", ("logits",), 18, {}, exporter)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        paths.append(str(folder))
    assert digests[0] == digests[1]
    data = (tmp_path / "a" / "model.onnx").read_bytes()
    assert all(p.encode() not in data for p in (*paths, str(Path(torch.__file__).parent)))
    nodes = onnx.load(str(tmp_path / "a" / "model.onnx")).graph.node
    assert any(p.key == SCOPE_KEY for node in nodes for p in node.metadata_props) == (exporter == "dynamo")
