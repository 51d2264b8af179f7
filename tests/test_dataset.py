"""The bundled demo dataset is what the suite promises: real, varied JPEGs,
reproducible from the generator script."""

from __future__ import annotations

import hashlib
import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import get_sampling

from harness.data.dataset import load_dataset, read_sample
from harness.spec.suite import Suite

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import demo_images  # noqa: E402
import make_demo_data  # noqa: E402


def test_demo_splits_and_labels(demo_suite: Suite) -> None:
    evaluation = load_dataset(demo_suite.data.manifest, "eval")
    calibration = load_dataset(demo_suite.data.manifest, "calib")
    assert len(evaluation.samples) == 500 and len(calibration.samples) == 100
    assert len(evaluation.classes) >= 10
    assert set(Counter(s.label for s in evaluation.samples)) == set(range(len(evaluation.classes)))
    assert not {s.id for s in evaluation.samples} & {s.id for s in calibration.samples}
    size = sum(s.path.stat().st_size for s in evaluation.samples + calibration.samples)
    assert size < 8e6


def test_demo_jpegs_cover_the_encoder_variety(demo_suite: Suite) -> None:
    """Checked on the bytes themselves, not on what the manifest claims."""
    widths, progressive, grayscale, orientations, layouts, qualities = set(), 0, 0, Counter(), Counter(), set()
    for sample in load_dataset(demo_suite.data.manifest, "eval").samples:
        image = Image.open(io.BytesIO(read_sample(sample)))
        assert image.format == "JPEG"
        widths.add(image.width)
        progressive += bool(image.info.get("progressive") or image.info.get("progression"))
        grayscale += image.mode == "L"
        orientations[image.getexif().get(0x0112, 1)] += 1
        if image.mode != "L":
            layouts[get_sampling(image)] += 1
            qualities.add(tuple(image.quantization[0]))  # the luma table: one per quality
    assert min(widths) >= 120 and max(widths) <= 400
    assert progressive >= 50 and grayscale >= 10
    assert {3, 6, 8} <= set(orientations)
    assert set(layouts) == {0, 1, 2}  # chroma subsampling 4:4:4, 4:2:2, 4:2:0
    assert len(qualities) >= 10


def test_generator_reproduces_committed_files(demo_suite: Suite) -> None:
    rng = np.random.default_rng(make_demo_data.SPLIT_SEEDS["eval"])
    samples = load_dataset(demo_suite.data.manifest, "eval").samples
    for index in range(4):
        encoded = demo_images.encode(rng, index % len(demo_images.CLASSES))
        assert hashlib.sha256(encoded.data).hexdigest() == samples[index].sha256
