"""CUDA paths on real hardware (marked `gpu`: skipped without a CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.cache import ArtifactCache
from harness.data.dataset import load_dataset, read_sample
from harness.data.decoders import DECODERS
from harness.judge.verdict import run_suite
from harness.run.plan import RunRequest
from harness.spec.suite import Suite


@pytest.mark.gpu
def test_torch_cuda_matches_cpu_reference(demo_suite: Suite, cache: ArtifactCache) -> None:
    report = run_suite(demo_suite, RunRequest(("torch-cuda-fp32", "torch-cuda-fp16"), 64, limit=256), cache)[0]
    results = {r.runtime: r for r in report.results}
    fp32 = results["torch-cuda-fp32"].comparisons[0]
    assert fp32.worst.max_abs < 1e-3 and fp32.passed  # TF32 is off: real FP32
    fp16 = results["torch-cuda-fp16"].comparisons[0]
    assert fp16.worst.max_abs < 5e-2 and fp16.top1_agreement >= 0.99
    assert results["torch-cuda-fp16"].session["device"] == "cuda"


@pytest.mark.gpu
def test_nvjpeg_decodes_like_libjpeg_turbo(demo_suite: Suite) -> None:
    """nvJPEG (torchvision.io.decode_jpeg on CUDA) on every kind of demo JPEG: same geometry, close pixels."""
    from tests.test_sysnoise_stacks import _kinds

    for kind, sample in _kinds(load_dataset(demo_suite.data.manifest, "eval").samples).items():
        data = read_sample(sample)
        reference = DECODERS["pillow"](data, True).astype(int)
        pixels = DECODERS["nvjpeg"](data, True)
        assert pixels.shape == reference.shape, kind
        assert np.abs(pixels.astype(int) - reference).mean() < 3, kind
