"""Model builders a user writes: a module beside the suite file, weights that do not fit, a module that is not there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision

from harness.core.errors import HarnessError
from harness.spec.suite import load_suite

MODULE = """
import torchvision


def tiny_resnet(num_classes: int = 3):
    return torchvision.models.resnet18(num_classes=num_classes)
"""


@pytest.fixture
def own_suite(make_suite: Callable[..., Path], tmp_path: Path) -> Callable[[int], Path]:
    """A suite whose builder is `mymodels_<test>:tiny_resnet` from a module beside it, weights for `classes`."""
    module = f"mymodels_{tmp_path.name.replace('-', '_')}"  # one module name per test: sys.modules keeps imports
    (tmp_path / f"{module}.py").write_text(MODULE)

    def write(classes: int) -> Path:
        weights = tmp_path / f"resnet18-{classes}.pt"
        torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), weights)
        return make_suite(
            {
                'builder = "demo-resnet"': f'builder = "{module}:tiny_resnet"',
                'weights = "': f'weights = "{weights}" # "',
                "num_classes = 12": "num_classes = 3",
            }
        )

    return write


def test_a_builder_module_beside_the_suite_is_importable(own_suite: Callable[[int], Path]) -> None:
    model = load_suite(str(own_suite(3))).model.build()
    assert model.fc.out_features == 3 and not model.training


def test_weights_that_do_not_fit_name_the_keys_and_both_shapes(own_suite: Callable[[int], Path]) -> None:
    suite = load_suite(str(own_suite(10)))
    with pytest.raises(HarnessError) as caught:
        suite.model.build()
    message = str(caught.value)
    assert "2 shape differs: fc.weight [10, 512] in the weights vs [3, 512] in the model, fc.bias [10] in the weights vs [3]" in message
    assert "\n" not in message


def test_a_missing_builder_module_says_where_it_was_looked_for(make_suite: Callable[..., Path], tmp_path: Path) -> None:
    suite = load_suite(str(make_suite({'builder = "demo-resnet"': 'builder = "nowhere_to_be_found:build"'})))
    where = rf"No module named 'nowhere_to_be_found'.*put nowhere_to_be_found.py beside the suite \({tmp_path}\)"
    with pytest.raises(HarnessError, match=where):
        suite.model.build()


FAINT = '''
from harness.demo.models import DemoResNet


class Faint(DemoResNet):
    """The demo classifier with its logits scaled to ~1e-12: every error check passes whatever a runtime does."""

    def forward(self, x):
        return super().forward(x) * 1e-12


def faint(num_classes: int = 12):
    return Faint(num_classes=num_classes)
'''


def test_a_reference_too_faint_to_fail_any_check_is_noted(make_suite: Callable[..., Path], tmp_path: Path) -> None:
    from harness import api

    (tmp_path / "faint_models.py").write_text(FAINT)
    suite = make_suite({'builder = "demo-resnet"': 'builder = "faint_models:faint"'})
    report = api.check(str(suite), ["ort-fp32"], limit=32, golden=False)
    assert any("torch-fp32's output logits is at most" in note and "pass trivially" in note for note in report.notes), report.notes
    assert repr(report).startswith("<RunReport demo: PASS, 2 runtimes on 32 samples")
    summary = report.summary().splitlines()
    assert summary[0] == "demo: PASS (top1, 32 samples, reference stack)"
    assert summary[2].startswith("  ort-fp32 vs reference:torch-fp32: ") and summary[2].endswith("0 flips, PASS")


def test_a_builder_registered_from_python_is_found_by_name(make_suite: Callable[..., Path]) -> None:
    from harness.demo.models import DemoResNet
    from harness.spec.models import MODEL_BUILDERS, register_model

    @register_model("registered-demo")
    def build(num_classes: int = 12) -> torch.nn.Module:
        return DemoResNet(num_classes=num_classes)

    try:
        suite = load_suite(str(make_suite({'builder = "demo-resnet"': 'builder = "registered-demo"'})))
        assert isinstance(suite.model.build(), DemoResNet)
    finally:
        del MODEL_BUILDERS["registered-demo"]
