"""Suite files against their schema: strict types, ranges, registry names with the allowed values,
the closest valid key for a typo, and the published JSON Schema checked with a maintained validator."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from harness.core.errors import HarnessError
from harness.data.stack import StackSpec
from harness.spec.schema import suite_json_schema, validate_suite
from harness.spec.suite import bundled_suites, load_suite, suite_names
from tests.conftest import DEMO_TOML, CliResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MINIMAL: dict[str, Any] = {
    "model": {"builder": "demo-resnet", "weights": "w.safetensors", "output_names": ["logits"]},
    "data": {"manifest": "m.json"},
    "stack": {},
}


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(HarnessError) as info:
        validate_suite(data, "suite.toml", suite_names())
    return str(info.value)


@pytest.mark.parametrize(
    ("stack", "message"),
    [
        ({"decoder": "libfoo"}, "[stack] decoder = 'libfoo': unknown decoder 'libfoo'"),
        ({"resize": "pillow-bilinaer"}, "unknown resize 'pillow-bilinaer' (did you mean 'pillow-bilinear'?): choose one of ["),
        ({"mean": [1, 2]}, "[stack] mean = [1, 2]: expected at least 3 items"),
        ({"std": [0.2, 0.0, 0.2]}, "[stack] std[1] = 0.0: expected a value > 0"),
        ({"bogus": 1}, "[stack] unknown key 'bogus'; allowed: decoder, exif"),
        ({"exif": 1}, "[stack] exif = 1: expected true or false"),
        ({"resize_size": 72.5}, "[stack] resize_size = 72.5: expected an integer"),
        ({"layout": "chwn"}, "unknown layout 'chwn'"),
    ],
)
def test_stack_keys_are_typed_and_named(stack: dict[str, Any], message: str) -> None:
    assert message in _error(MINIMAL | {"stack": stack})


def test_missing_keys_and_tables_are_named() -> None:
    assert "[model] needs 'builder'" in _error(MINIMAL | {"model": {"weights": "w", "output_names": ["y"]}})
    assert "missing [data] table" in _error({k: v for k, v in MINIMAL.items() if k != "data"})
    assert "[stacks.reference]" in _error(MINIMAL | {"stacks": {"reference": {}}})
    assert "[postprocess] has unknown key 'label_ofset' (did you mean 'label_offset'?)" in _error(
        MINIMAL | {"postprocess": {"label_ofset": 1}}
    )


def test_valid_tables_keep_only_what_the_file_set() -> None:
    spec = validate_suite(
        MINIMAL | {"stack": {"crop": 0, "mean": [0, 0, 0]}, "tolerance": {"fp16": {"max_flips": 3}}}, "suite.toml", suite_names()
    )
    assert spec.stack.given() == {"crop": 0, "mean": (0, 0, 0)}
    assert spec.tolerance["fp16"].given() == {"max_flips": 3}
    assert spec.export.trt_batch == [1, 32, 64] and spec.run.reference is None  # the default follows the model (torch-fp32 here)
    assert StackSpec(**spec.stack.given()).crop == 0


def test_published_schema_validates_suite_files(harness_cli: Callable[..., CliResult]) -> None:
    result = harness_cli("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert schema == json.loads(json.dumps(suite_json_schema(suite_names())))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    demo = tomllib.loads(DEMO_TOML.read_text())
    assert list(validator.iter_errors(demo)) == []
    demo["stack"]["resize"] = "magic"
    demo["stack"]["resize_size"] = "72"
    assert {tuple(e.absolute_path) for e in validator.iter_errors(demo)} == {("stack", "resize"), ("stack", "resize_size")}


def test_bundled_suites_load() -> None:
    for name in bundled_suites():
        assert load_suite(name).stack.name == "reference"
