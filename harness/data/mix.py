"""Mix training (the SysNoise study's Algorithm 1): every training sample goes through a stack whose decoder, resize
method and optionally colour path are drawn at random from named sets, so that training sees the implementations a
deployment will use.

A `MixAxis` is one drawn part of the stack: named choices, each the stack keys it sets (`MixAxis.of("resize",
[...])` for registry names; `harness.analysis.mitigate.mix_axes` builds them from a suite's matrix axes).
`MixTransform` is the torchvision-style callable (encoded bytes -> the stack's tensor); `MixDataset` wraps a
dataset of (bytes, label) pairs and draws per (seed, epoch, index), so the draw of a sample is the same with any
number of DataLoader workers.  For a fixed draw the tensor is exactly the stack's `decode_and_preprocess` with the
drawn keys.  A choice that cannot run here (a decoder whose library is not installed, or that needs a GPU) is left
out of its axis, with a note in `MixTransform.notes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.core.errors import HarnessError
from harness.data.colour import COLOUR_PATHS
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.data.resizers import RESIZERS
from harness.data.stack import StackSpec, decode_and_preprocess

Overrides = tuple[tuple[str, Any], ...]  # stack keys a choice sets
REGISTRIES: dict[str, dict[str, Any]] = {"decoder": DECODERS, "resize": RESIZERS, "colour": COLOUR_PATHS}


@dataclass(frozen=True)
class MixAxis:
    """One part of the stack drawn per sample: choice name -> the stack keys it sets (() = the reference)."""

    name: str
    choices: tuple[tuple[str, Overrides], ...]

    @classmethod
    def of(cls, key: str, names: Sequence[str]) -> MixAxis:
        """Registry names for stack key `key` (decoder, resize, colour); an unknown name is an error."""
        registry = REGISTRIES.get(key)
        if registry is None:
            raise HarnessError(f"mix axis '{key}' is not a registry", f"mix axes: {', '.join(REGISTRIES)}")
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise HarnessError(f"unknown {key} {', '.join(unknown)} in a mix axis", f"{key}s: {', '.join(registry)}")
        return cls(key, tuple((n, ((key, n),)) for n in dict.fromkeys(names)))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.choices]


class MixTransform:
    """Encoded bytes -> float32 tensor of `stack` with each axis drawn: `draw` (seeded by seed, epoch, index) and
    `apply` for a fixed draw; calling the transform draws from its own generator (seeded by `seed`)."""

    def __init__(self, stack: StackSpec, axes: Sequence[MixAxis] = (), seed: int = 0) -> None:
        self.stack = stack
        self.notes: list[str] = []
        kept = []
        for axis in axes:
            runnable = []
            for name, overrides in axis.choices:
                reason = decoder_unavailable(replace(stack, **dict(overrides)).decoder)
                if reason:
                    self.notes.append(f"mix {axis.name}: {name} left out: {reason}")
                else:
                    runnable.append((name, overrides))
            if runnable:
                kept.append(replace(axis, choices=tuple(runnable)))
        self.axes: tuple[MixAxis, ...] = tuple(kept)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._stacks: dict[tuple[str, ...], StackSpec] = {}

    def draw(self, seed: int, epoch: int, index: int) -> dict[str, str]:
        """The choice of every axis for sample `index` of `epoch`: uniform, a function of (seed, epoch, index) only."""
        return self._draw(np.random.default_rng([seed, epoch, index]))

    def _draw(self, rng: np.random.Generator) -> dict[str, str]:
        return {axis.name: axis.choices[int(rng.integers(len(axis.choices)))][0] for axis in self.axes}

    def stack_for(self, draw: dict[str, str]) -> StackSpec:
        """The reference stack with the drawn choices' keys set."""
        key = tuple(draw[axis.name] for axis in self.axes)
        if key not in self._stacks:
            overrides: dict[str, Any] = {}
            for axis in self.axes:
                overrides |= dict(dict(axis.choices)[draw[axis.name]])
            name = "mix:" + ",".join(key) if key else self.stack.name
            self._stacks[key] = replace(self.stack, name=name, **overrides)
        return self._stacks[key]

    def apply(self, data: bytes, draw: dict[str, str]) -> torch.Tensor:
        return torch.from_numpy(decode_and_preprocess(data, self.stack_for(draw)))

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.apply(data, self._draw(self._rng))

    def describe(self) -> dict[str, Any]:
        return {"reference_stack": self.stack.name, "axes": {a.name: a.names for a in self.axes}, "notes": self.notes}


class MixDataset(Dataset[tuple[torch.Tensor, int]]):
    """(bytes, label) pairs -> (tensor, label), each sample through its own draw of `transform`'s axes.  The draw
    depends on (seed, epoch, index) only: call `set_epoch` before each epoch's DataLoader iterator is made (workers
    copy the dataset when it starts), and the same draws come with 0 or any number of workers."""

    def __init__(self, source: Sequence[tuple[bytes, int]], transform: MixTransform, seed: int = 0) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def draw(self, index: int) -> dict[str, str]:
        return self.transform.draw(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = self.source[index]
        return self.transform.apply(data, self.draw(index)), int(label)
