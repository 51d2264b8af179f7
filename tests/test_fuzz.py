"""Fuzzing with hypothesis: the suite parser, the manifest reader, the ONNX test-data reader and every
decoder get random and mutated real inputs; the only outcomes allowed are a result or the clean
`HarnessError` (exit 2 through the CLI).  A fixed seed keeps CI reproducible and under a minute;
`HARNESS_FUZZ=deep` runs 20x the examples."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from harness.analysis.onnx_testdata import load_test_set
from harness.core.errors import HarnessError
from harness.data.dataset import load_dataset
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.data.feed import DEFAULT_POLICY, decode_sample
from harness.data.stack import StackSpec
from harness.spec.schema import validate_suite
from harness.spec.suite import BUNDLED_DIR, load_suite, suite_names
from tests.conftest import DEMO_TOML

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = 20 * 60 if os.environ.get("HARNESS_FUZZ") == "deep" else 60
settings.register_profile(
    "harness", max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
settings.load_profile("harness")

DEMO_DATA = BUNDLED_DIR / "demo" / "data"
JPEG = (DEMO_DATA / "eval" / "0003.jpg").read_bytes()
SAMPLE = load_dataset(DEMO_DATA / "manifest.json", "eval").samples[3]
DECODER_NAMES = sorted(d for d in DECODERS if not decoder_unavailable(d))
LEAVES = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=12)
TREES = st.recursive(LEAVES, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4))


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """Real bytes with a few bytes overwritten, maybe a slice deleted, maybe truncated."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        blob = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            start = draw(st.integers(0, len(blob) - 1))
            del blob[start : start + draw(st.integers(1, 64))]
        return bytes(blob[: draw(st.integers(1, max(len(blob), 1)))])

    return mutate()


def _demo_tree() -> dict[str, Any]:
    return tomllib.loads(DEMO_TOML.read_text())


def _replace_leaf(tree: Any, path: list[int], value: Any) -> Any:
    """`tree` with the leaf reached by following `path` (indices modulo each level's size) set to `value`."""
    if not path or not isinstance(tree, dict | list) or not tree:
        return value
    if isinstance(tree, dict):
        key = sorted(tree)[path[0] % len(tree)]
        return {**tree, key: _replace_leaf(tree[key], path[1:], value)}
    index = path[0] % len(tree)
    return [*tree[:index], _replace_leaf(tree[index], path[1:], value), *tree[index + 1 :]]


@given(TREES)
def test_suite_schema_on_random_trees(tree: Any) -> None:
    with contextlib.suppress(HarnessError):
        validate_suite(tree if isinstance(tree, dict) else {"model": tree}, "fuzz.toml", suite_names())


@given(st.lists(st.integers(0, 50), min_size=1, max_size=4), LEAVES | TREES)
def test_suite_schema_on_the_demo_with_one_value_replaced(path: list[int], value: Any) -> None:
    with contextlib.suppress(HarnessError):
        validate_suite(_replace_leaf(_demo_tree(), path, value), "fuzz.toml", suite_names())


@given(mutations(DEMO_TOML.read_bytes()))
def test_suite_files_with_mutated_bytes(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "suite.toml"
        path.write_bytes(text)
        with contextlib.suppress(HarnessError):
            load_suite(str(path))


@given(TREES | mutations((DEMO_DATA / "manifest.json").read_bytes()[:4000]))
def test_manifest_reader(content: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.json"
        manifest.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        with contextlib.suppress(HarnessError):
            load_dataset(manifest, "eval")


TENSOR = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "x").SerializeToString()


@given(st.binary(max_size=200) | mutations(TENSOR))
def test_onnx_test_data_reader(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "input_0.pb").write_bytes(blob)
        with contextlib.suppress(HarnessError):
            assert set(load_test_set(Path(folder), ("x",), ("y",)).inputs) == {"x"}


@given(st.sampled_from(DECODER_NAMES), st.binary(max_size=300) | mutations(JPEG))
@settings(max_examples=EXAMPLES * 3)
def test_decoders_on_random_and_mutated_images(decoder: str, blob: bytes) -> None:
    try:
        pixels, _ = decode_sample(SAMPLE, StackSpec(decoder=decoder), blob, DEFAULT_POLICY)
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    except HarnessError:
        pass
