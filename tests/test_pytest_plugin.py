"""The pytest plugin, as a user's project sees it (run through `pytester`): a tiny model checked with the public
API, the `conformance` fixture on a suite built from a mapping, tests generated from `--harness-suite` with xfail
from the suite, a deliberate failure, goldens recorded only with `--harness-update-goldens`, and pytest-xdist.
Each inner session is a subprocess: an in-process one would drop onnx and torch from `sys.modules` afterwards,
and their C extensions cannot be imported twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.spec.suite import BUNDLED_DIR

pytest_plugins = ["pytester"]

DEMO = BUNDLED_DIR / "demo"

USER_TEST = f'''
import numpy as np
import pytest
import torch
from torch import nn

from harness import api
from harness.spec.suite import tomllib


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture
def harness_suite(tmp_path_factory):
    mapping = tomllib.loads(open("{BUNDLED_DIR / "demo.toml"}").read())
    mapping["golden"] = {{"dir": str(tmp_path_factory.mktemp("goldens"))}}
    return api.Suite.from_mapping(mapping, base=__import__("pathlib").Path("{BUNDLED_DIR}"))


def test_the_export_matches_pytorch():
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32))
    api.check_model(Net(), example, ["ort-fp32", "ov-fp32"]).assert_passed()


def test_the_suite_conforms_against_the_reference(conformance, harness_suite):
    report = conformance(runtimes=["ort-fp32"], suite=api.Suite.from_mapping(
        tomllib.loads(open("{BUNDLED_DIR / "demo.toml"}").read()), base=__import__("pathlib").Path("{BUNDLED_DIR}")))
    assert report.passed
'''


def _suite_file(folder: Path, extra: str = "") -> Path:
    text = (BUNDLED_DIR / "demo.toml").read_text()
    text = text.replace('weights = "demo/', f'weights = "{DEMO}/').replace('manifest = "demo/data/', f'manifest = "{DEMO}/data/')
    text = text.replace('dir = "../../golden/demo"', f'dir = "{folder / "golden"}"')
    path = folder / "suite.toml"
    # The one deliberate failure: INT8 never comes within 1e-9 of FP32 on any CPU; its other checks are loosened so
    # that how many samples flip on this CPU's int8 kernels cannot change the outcome counts.
    loose = "min_cosine = 0.0\nmin_top1_agreement = 0.0\nmax_flips = 1000\nmax_metric_delta = 1.0\nmax_negative_flip_rate = 1.0\n"
    path.write_text(text.replace("batch_size = 32\n", f"batch_size = 32\n{extra}") + "\n[tolerance.int8]\nmax_abs = 1e-9\n" + loose)
    return path


def test_a_user_project_checks_its_model_and_suite_with_the_api_and_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--harness-limit", "32")
    result.assert_outcomes(passed=2)


def test_generated_tests_name_runtime_and_check_and_fail_in_one_line(pytester: pytest.Pytester) -> None:
    suite = _suite_file(pytester.path, 'xfail = { "ov-int8" = "known: OpenVINO int8 differs" }\n')
    args = ["-p", "no:cacheprovider", "--harness-suite", str(suite), "--harness-limit", "32", "-rf"]
    runtimes = ["--harness-runtime", "ort-fp32", "--harness-runtime", "ort-int8", "--harness-runtime", "ov-int8"]
    missing = pytester.runpytest_subprocess(*args, *runtimes)  # no goldens yet: the golden tests say so and how to record them
    missing.stdout.fnmatch_lines(["*demo::ort-int8::golden::max_abs - no golden for runtime 'ort-int8'*"])
    assert missing.parseoutcomes()["failed"] == 1 + 6 + 6  # int8's max_abs, and the golden tests of ort-fp32 and ort-int8
    recorded = pytester.runpytest_subprocess(*args, *runtimes, "--harness-update-goldens")
    recorded.stdout.fnmatch_lines(
        [
            "harness: golden of ort-fp32 (demo): new golden",
            "ort-int8 vs reference:torch-fp32: max_abs = *, limit <= 1e-09",  # the failure is this line, no traceback
        ]
    )
    outcomes = recorded.parseoutcomes()
    assert outcomes["failed"] == 1 and outcomes["passed"] == 6 + 6 + 5 + 6 and outcomes["xfailed"] + outcomes.get("xpassed", 0) == 12
    assert sorted(p.name for p in (pytester.path / "golden").iterdir() if p.is_dir()) == ["ort-fp32", "ort-int8", "ov-int8"]
    again = pytester.runpytest_subprocess(*args, *runtimes, "-n", "2", "--dist", "loadgroup")  # one worker per suite: one run
    again.assert_outcomes(failed=1, passed=23, **{k: v for k, v in outcomes.items() if k in ("xfailed", "xpassed")})


def test_harness_only_runs_the_generated_tests_alone_and_counts_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_own="def test_the_projects_own():\n    raise AssertionError('must not run')\n")
    suite = _suite_file(pytester.path)
    args = ["-p", "no:cacheprovider", "--harness-suite", str(suite), "--harness-runtime", "ort-fp32", "--harness-limit", "32"]
    alone = pytester.runpytest_subprocess(*args, "--harness-only", "-k", "not golden")
    alone.stdout.fnmatch_lines(["collected 12 items / 6 deselected / 6 selected"])
    alone.assert_outcomes(passed=6)
    both = pytester.runpytest_subprocess(*args, "-k", "not golden")
    both.stdout.fnmatch_lines(["collected 13 items / 6 deselected / 7 selected"])
    both.assert_outcomes(passed=6, failed=1)
