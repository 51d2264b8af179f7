"""Comparison depth on constructed cases with known answers: flips (negative/positive),
per-class deltas, KL, top-5 overlap, relative L2, and the negative-flip-rate gate."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from harness.judge.compare import compare, judge
from harness.spec.tolerance import DEFAULT_PROFILES
from harness.tasks import ClassificationTask
from harness.tasks.classification import softmax_kl

TASK = ClassificationTask(output_names=("logits",))


@dataclass
class Side:
    outputs: dict[str, np.ndarray]
    predictions: np.ndarray


def _side(logits: np.ndarray) -> Side:
    return Side({"logits": logits}, TASK.predictions({"logits": logits}))


def _one_hot(predictions: list[int], classes: int = 8) -> np.ndarray:
    logits = np.zeros((len(predictions), classes), dtype=np.float32)
    logits[np.arange(len(predictions)), predictions] = 5.0
    return logits


def test_flips_per_class_and_rates_on_a_constructed_case() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    base = [0, 0, 0, 5, 1, 1, 1, 1, 2, 7]  # 8/10 right
    cand = [0, 0, 3, 5, 1, 1, 1, 4, 2, 2]  # sample 2 and 7 go wrong, sample 9 goes right, sample 3 stays wrong
    ids = tuple(f"s{i}" for i in range(10))
    comp = compare("rt", "golden", ids, labels, _side(_one_hot(cand)), _side(_one_hot(base)), TASK)
    assert comp.flips == ["s2", "s7", "s9"]
    assert comp.negative_flips == ["s2", "s7"] and comp.positive_flips == ["s9"]
    assert comp.negative_flip_rate == pytest.approx(0.2) and comp.positive_flip_rate == pytest.approx(0.1)
    assert comp.metric == pytest.approx(0.7) and comp.metric_baseline == pytest.approx(0.8)
    deltas = {c.label: round(c.delta, 4) for c in comp.per_class}
    assert deltas == {0: -0.25, 1: -0.25, 2: 0.5}
    assert comp.worst_class is not None and comp.worst_class.label in (0, 1)
    assert comp.top1_agreement == pytest.approx(0.7)


def test_numeric_statistics_by_hand() -> None:
    base = np.array([[3.0, 4.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]], dtype=np.float32)
    cand = base.copy()
    cand[0, 0] = 3.3  # |diff| = 0.3, ||base row 0|| = 5 -> relative L2 0.06
    comp = compare("rt", "golden", ("a", "b"), np.array([1, 0]), _side(cand), _side(base), TASK)
    stats = comp.outputs["logits"]
    assert stats.max_abs == pytest.approx(0.3, rel=1e-5) and stats.max_rel_l2 == pytest.approx(0.06, rel=1e-5)
    assert comp.worst_samples[0] == ("a", pytest.approx(0.3, rel=1e-5))
    assert comp.details["top5_agreement"] == 1.0  # 6 classes, same top-5 set
    assert comp.details["kl_max"] > 0 and comp.details["kl_mean"] == pytest.approx(comp.details["kl_max"] / 2)


def test_kl_matches_its_definition() -> None:
    p_logits, q_logits = np.array([[0.0, 1.0, 2.0]]), np.array([[0.5, 0.5, 2.0]])
    p = np.exp(p_logits) / np.exp(p_logits).sum()
    q = np.exp(q_logits) / np.exp(q_logits).sum()
    assert softmax_kl(q_logits, p_logits)[0] == pytest.approx(float((p * np.log(p / q)).sum()))


def test_negative_flip_rate_gates_on_its_own() -> None:
    labels = np.arange(100) % 8
    base = labels.tolist()
    cand = list(base)
    cand[0] = 1  # one right -> wrong out of 100
    comp = compare("rt", "golden", tuple(map(str, range(100))), labels, _side(_one_hot(cand)), _side(_one_hot(base)), TASK)
    loose = replace(DEFAULT_PROFILES["int8"], max_negative_flip_rate=0.005)
    checks = {c.name: c.passed for c in judge(comp, loose).checks}
    assert checks == {
        "max_abs": True,
        "min_cosine": True,
        "top1_agreement": True,
        "flips": True,
        "negative_flip_rate": False,
        "metric_delta": True,
    }
