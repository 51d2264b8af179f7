"""Mix training: seeded draws over every named implementation, tensors identical to the stack's, the mitigation
script on a tiny configuration."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from harness.analysis.matrix import AXES, CATASTROPHIC
from harness.analysis.mitigate import mix_axes
from harness.core.errors import HarnessError
from harness.data.decoders import decoder_unavailable
from harness.data.mix import MixAxis, MixDataset, MixTransform
from harness.data.stack import StackSpec, decode_and_preprocess
from harness.spec.suite import Suite

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
DRAWS = 3000


@pytest.fixture(scope="module")
def mix(demo_suite: Suite) -> MixTransform:
    return MixTransform(demo_suite.stack, mix_axes(demo_suite, ("decoder", "resize", "colour")), seed=7)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [path.read_bytes() for path in sorted((ROOT / "harness" / "suites" / "demo" / "data" / "eval").glob("*.jpg"))[:2]]


def matrix_stack(suite: Suite, draw: dict[str, str]) -> StackSpec:
    """The reference stack with each drawn name's matrix variant applied, as the matrix builds it."""
    stack = suite.stack
    for axis, name in draw.items():
        stack = next((v.stack_for(stack) for v in AXES[axis](suite) if v.name == name), stack)  # the reference: no variant
    return stack


def test_the_mix_axes_are_the_matrix_axes_with_the_reference(demo_suite: Suite, mix: MixTransform) -> None:
    unavailable = 0
    for axis in mix.axes:
        variants = [v for v in AXES[axis.name](demo_suite) if (axis.name, v.name) not in CATASTROPHIC]
        runnable = [v.name for v in variants if not decoder_unavailable(v.stack_for(demo_suite.stack).decoder)]
        assert axis.names == [getattr(demo_suite.stack, axis.name), *runnable]
        unavailable += len(variants) - len(runnable)
    assert "bgr" not in mix.axes[2].names  # a configuration bug, not a deployment choice
    assert len(mix.notes) == unavailable and all("left out" in note for note in mix.notes)  # nvjpeg without a GPU


def test_every_named_implementation_is_drawn_near_its_share(mix: MixTransform) -> None:
    counts = {axis.name: Counter[str]() for axis in mix.axes}
    for index in range(DRAWS):
        for axis, name in mix.draw(seed=3, epoch=index % 3, index=index).items():
            counts[axis][name] += 1
    for axis in mix.axes:
        share = DRAWS / len(axis.names)
        assert set(counts[axis.name]) == set(axis.names)
        assert all(0.7 * share < counts[axis.name][name] < 1.3 * share for name in axis.names), (axis.name, counts[axis.name])


def test_the_draw_depends_on_seed_epoch_and_index_only(mix: MixTransform, demo_suite: Suite) -> None:
    fresh = MixTransform(demo_suite.stack, mix.axes, seed=99)
    draws = [mix.draw(1, 0, i) for i in range(64)]
    assert draws == [fresh.draw(1, 0, i) for i in range(64)]
    assert draws != [mix.draw(1, 1, i) for i in range(64)] and draws != [mix.draw(2, 0, i) for i in range(64)]


def test_a_fixed_draw_gives_the_stack_tensor(mix: MixTransform, demo_suite: Suite, images: list[bytes]) -> None:
    decoder, resize, colour = (axis.names for axis in mix.axes)
    draws = [{"decoder": d, "resize": r, "colour": c} for d, r, c in zip(decoder, resize[::2], colour * 3, strict=False)]
    tensors = []
    for draw in draws:
        stack = matrix_stack(demo_suite, draw)
        for data in images:
            got = mix.apply(data, draw)
            assert got.dtype == torch.float32 and np.array_equal(got.numpy(), decode_and_preprocess(data, stack)), draw
        tensors.append(got)
    assert not all(torch.equal(tensors[0], t) for t in tensors)  # the draw changes the tensor


def test_the_dataset_draws_the_same_with_workers(mix: MixTransform, images: list[bytes]) -> None:
    source = [(d, k) for k, d in enumerate(images * 4)]
    data = MixDataset(source, mix, seed=5)
    data.set_epoch(2)
    alone = [x for x, _ in DataLoader(data, batch_size=4)]
    pooled = [x for x, _ in DataLoader(data, batch_size=4, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(alone, pooled, strict=True))
    x, label = data[3]
    assert label == 3 and torch.equal(x, mix.apply(source[3][0], mix.draw(5, 2, 3)))


def test_an_unknown_name_is_a_one_line_error() -> None:
    with pytest.raises(HarnessError, match="unknown resize pillow-magic in a mix axis"):
        MixAxis.of("resize", ["pillow-bilinear", "pillow-magic"])
    with pytest.raises(HarnessError, match="mix axis 'weather' is not a registry"):
        MixAxis.of("weather", ["rain"])


def test_mitigate_on_a_tiny_configuration_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mitigate

    args = ["--train", "32", "--epochs", "1", "--batch", "16", "--steps", "1", "--limit", "4", "--axes", "decoder,resize"]
    assert mitigate.main([*args, "--report-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "reference: std" in out and "mix: std" in out and "clean top1" in out
    data = json.loads((tmp_path / "mitigate.json").read_text())
    assert data["kind"] == "mitigation" and data["samples"] == 4 and set(data["clean"]) == {"reference", "mix"}
    for model in ("reference", "mix"):
        assert {"decoder", "resize", "combined"} <= set(data["spread"][model])
        resize = data["spread"][model]["resize"]
        assert resize["variants"] == len(data["mix"]["axes"]["resize"]) - 1 and resize["std"] >= 0
    assert data["training"]["steps"] == 1 and (tmp_path / "mix.safetensors").exists()
    markdown = (tmp_path / "mitigate.md").read_text()
    assert "| resize |" in markdown and "| clean top1 |" in markdown
    assert (tmp_path / "mitigate.png").read_bytes()[:4] == b"\x89PNG"
