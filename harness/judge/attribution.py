"""Stage attribution: which step of the data flow changed a sample.

Every sample is hashed after each stage (encoded bytes, decoded pixels,
pre-processed tensor, raw outputs, predictions) and goldens keep those
hashes.  When a run differs from its golden, the first stage whose hashes
differ is the cause ("decoded pixels differ for 37/500 samples: the decoder
changed; inference identical"); each later stage is blamed only for samples
whose input to that stage was still identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STAGES = ("encoded", "decoded", "tensor", "outputs", "predictions")
LABELS = {
    "encoded": "encoded bytes",
    "decoded": "decoded pixels",
    "tensor": "pre-processed tensors",
    "outputs": "raw outputs",
    "predictions": "predictions",
}
CAUSES = {
    "encoded": "the dataset files changed",
    "decoded": "the decoder changed",
    "tensor": "the pre-processing stack changed",
    "outputs": "inference changed (model, runtime, precision or library)",
    "predictions": "post-processing changed",
}
SHORT = {"encoded": "dataset", "decoded": "decoder", "tensor": "pre-processing", "outputs": "inference", "predictions": "post-processing"}


@dataclass(frozen=True)
class Tolerated:
    """Which samples' raw outputs are within the tolerance profile of the comparison (noise if their bits differ)."""

    within: np.ndarray  # bool per sample
    max_abs: np.ndarray  # per-sample max abs difference
    profile: str  # the profile's name: fp32, fp16, ...
    unmeasured: np.ndarray | None = None  # bool per sample: outside a bounded golden's raw subset (`max_abs` a lower bound)


@dataclass(frozen=True)
class Attribution:
    """Per stage: samples whose hash differs from the golden's, and those newly changed at that stage.

    At the raw-outputs stage, samples whose bits differ but stay within the tolerance profile (with
    identical input tensors) are numeric noise (`noise`), not a change: another CPU's kernels, thread
    count or batch layout moves the last bits.  Samples outside a bounded golden's raw subset whose bits differ
    and whose lower bound of the change is within the profile are `unmeasured`: neither noise nor a change.
    `environment` lists what differs from the golden's environment (libraries, CPU, ISA features, threads,
    batch size, executed precision)."""

    samples: int
    changed: dict[str, int]
    introduced: dict[str, int]
    missing: tuple[str, ...]  # stages the golden did not record
    noise: int = 0
    noise_max_abs: float = 0.0
    profile: str = ""
    environment: tuple[str, ...] = ()
    unmeasured: int = 0
    unmeasured_max_abs: float = 0.0  # the largest lower bound of their max abs change

    @property
    def first(self) -> str | None:
        """The first stage with a real change (numeric noise within tolerance is none)."""
        return next((s for s in STAGES if self.introduced.get(s)), None)

    def _noise_clause(self) -> str:
        within = f"within the {self.profile} tolerance (max abs {self.noise_max_abs:.2e})"
        return f"raw outputs of {self.noise}/{self.samples} samples differ only {within}"

    def _unmeasured_clause(self) -> str:
        return (
            f"raw outputs of {self.unmeasured}/{self.samples} samples outside the golden's raw subset differ in their bits "
            f"(max abs at least {self.unmeasured_max_abs:.2e}, within the {self.profile} tolerance as far as that shows): not measured"
        )

    def _environment_clause(self) -> str:
        if not self.environment:
            return "; the golden's recorded environment is the same"
        return "; the golden's environment differs: " + ", ".join(self.environment)

    def message(self) -> str:
        if self.missing and not self.changed:
            return "the golden has no stage hashes: re-record it to get stage attribution"
        first = self.first
        if first is None:
            if not self.noise and not self.unmeasured:
                return f"all recorded stages identical for {self.samples} samples"
            quiet = [f"{self._noise_clause()}: numeric noise, not blamed on inference"] if self.noise else []
            quiet += [self._unmeasured_clause()] if self.unmeasured else []
            return "inputs identical; " + "; ".join(quiet) + self._environment_clause()
        if first == "outputs" and self.profile:
            head = f"raw outputs differ beyond the {self.profile} tolerance for {self.introduced[first]}/{self.samples} samples"
        else:
            head = f"{LABELS[first]} differ for {self.changed[first]}/{self.samples} samples"
        later = [s for s in STAGES[STAGES.index(first) + 1 :] if s in self.introduced]
        tail = [f"{SHORT[s]} identical" if not self.introduced[s] else f"{SHORT[s]} changed {self.introduced[s]} more" for s in later]
        if self.noise:
            tail.append(f"besides, {self._noise_clause()}")
        if self.unmeasured:
            tail.append(f"besides, {self._unmeasured_clause()}")
        message = f"{head}: {CAUSES[first]}" + "".join(f"; {t}" for t in tail)
        return message + (self._environment_clause() if first == "outputs" or self.noise or self.unmeasured else "")

    def describe(self) -> dict[str, Any]:
        return {
            "first_changed_stage": self.first,
            "changed": self.changed,
            "introduced": self.introduced,
            "missing": list(self.missing),
            "numeric_noise": {"samples": self.noise, "max_abs": self.noise_max_abs, "profile": self.profile},
            "unmeasured": {"samples": self.unmeasured, "max_abs_at_least": self.unmeasured_max_abs},
            "environment_changes": list(self.environment),
            "message": self.message(),
        }


def attribute(
    recorded: dict[str, Sequence[str]],
    now: dict[str, Sequence[str]],
    samples: int,
    tolerated: Tolerated | None = None,
    environment: Sequence[str] = (),
) -> Attribution:
    """Compare per-sample stage hashes (same sample order on both sides); with `tolerated`, raw outputs
    that differ within tolerance on identical inputs count as noise instead of an inference change."""
    changed: dict[str, int] = {}
    introduced: dict[str, int] = {}
    previous: np.ndarray | None = None
    missing = []
    noise, noise_max_abs, unmeasured, unmeasured_max_abs = 0, 0.0, 0, 0.0
    for stage in STAGES:
        if stage not in recorded or stage not in now:
            missing.append(stage)
            previous = None
            continue
        diff = np.array(recorded[stage]) != np.array(now[stage])
        new = diff & ~previous if previous is not None else diff
        if stage == "outputs" and tolerated is not None:
            quiet = new & tolerated.within
            unknown = quiet & tolerated.unmeasured if tolerated.unmeasured is not None else np.zeros_like(quiet)
            noise, noise_max_abs = int((quiet & ~unknown).sum()), float(tolerated.max_abs[quiet & ~unknown].max(initial=0.0))
            unmeasured, unmeasured_max_abs = int(unknown.sum()), float(tolerated.max_abs[unknown].max(initial=0.0))
            new = new & ~quiet
        changed[stage] = int(diff.sum())
        introduced[stage] = int(new.sum())
        previous = diff
    return Attribution(
        samples,
        changed,
        introduced,
        tuple(missing),
        noise,
        noise_max_abs,
        tolerated.profile if tolerated else "",
        tuple(environment),
        unmeasured,
        unmeasured_max_abs,
    )
