"""pytest plugin (entry point `pytest11`): conformance checks inside users' own test suites.

- `pytest --harness-suite path/to/suite.toml [--harness-runtime R ...] [--harness-limit N]` adds one test per
  runtime x check, ids like `ort-int8::top1_agreement` (against the reference runtime) and
  `ort-int8::golden::max_abs` (against its golden).  The suite runs once, when its first test runs; a runtime
  listed in the suite's `[run] xfail = {"ort-int8" = "why"}` is expected to fail.
- Fixtures: `harness_suite` (the first `--harness-suite`; override it to build one with `Suite.from_mapping`)
  and `conformance`, a callable running `api.assert_conformant`.
- `--harness-only` runs the generated tests alone inside a project that has tests of its own (its test files are
  not even collected); the generated tests count in pytest's "collected N items".
- `--harness-update-goldens` records the goldens of the checked runtimes first and prints what changed
  (pytest-regressions style: never silently, never without the flag).
- pytest-xdist: every test of a suite carries `xdist_group(<suite>)`, so `-n 2 --dist loadgroup` runs a suite
  on one worker (the artifact cache is shared and safe for concurrent builds in any case).

Importing this module imports nothing heavy: pytest loads it in every session of an environment that has the
harness installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.judge.verdict import RunReport
    from harness.spec.suite import Suite

RUNS = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "model conformance (sysnoise-harness)")
    group.addoption("--harness-suite", action="append", default=[], metavar="SUITE", help="add one test per runtime and check")
    group.addoption("--harness-runtime", action="append", default=[], metavar="NAME", help="runtimes to check (default: the suite's)")
    group.addoption("--harness-limit", type=int, default=None, metavar="N", help="check the first N samples only")
    group.addoption(
        "--harness-update-goldens", action="store_true", help="record the goldens of the checked runtimes (the diff is printed) first"
    )
    group.addoption(
        "--harness-only",
        action="store_true",
        help="with --harness-suite: run the generated conformance tests alone, not the project's tests",
    )


def pytest_ignore_collect(collection_path: Any, config: pytest.Config) -> bool | None:
    """With --harness-only, no test file is collected at all (not collected and deselected: never imported)."""
    return True if config.getoption("harness_only") and config.getoption("harness_suite") else None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RUNS] = {}
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one pytest-xdist worker (--dist loadgroup)")


class _Runs:
    """Each suite checked once per session: goldens recorded first with --harness-update-goldens."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def report(self, suite: Suite, runtimes: list[str]) -> RunReport:
        from harness import api
        from harness.judge.golden import golden_store

        key = f"{suite.definition()}|{','.join(runtimes)}"
        runs = self.config.stash[RUNS]
        if key not in runs:
            limit = self.config.getoption("harness_limit")
            if self.config.getoption("harness_update_goldens"):
                for change in api.record_goldens(suite, runtimes):
                    _say(self.config, f"harness: golden of {change.runtime} ({suite.name}): " + "; ".join(change.lines()))
            store = golden_store(suite)
            recorded = [r for r in runtimes if store.exists(r)]  # a runtime without one fails its golden tests only
            runs[key] = api.check(suite, runtimes, limit=limit, golden=recorded)
        return runs[key]


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, past the output capture of the test that is running."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


class CheckItem(pytest.Item):
    """One check of one runtime against one baseline."""

    def __init__(self, *, suite: Suite, runtimes: list[str], runtime: str, baseline: str, check: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite, self.runtimes, self.runtime, self.baseline, self.check = suite, runtimes, runtime, baseline, check

    def runtest(self) -> None:
        from harness.core.errors import HarnessError
        from harness.judge.golden import golden_store

        try:
            report = _Runs(self.config).report(self.suite, self.runtimes)
        except HarnessError as exc:  # a missing golden, a corrupt image: its one line, not a traceback
            raise CheckFailure(str(exc)) from exc
        result = next(r for r in report.results if r.runtime == self.runtime)
        comparison = next((c for c in result.comparisons if (c.against.kind == "golden") == (self.baseline == "golden")), None)
        if comparison is None:  # only goldens can be missing: the reference runs in every check
            store = golden_store(self.suite)
            raise CheckFailure(
                f"no golden for runtime '{self.runtime}' in {store.folder(self.runtime)}: record it with --harness-update-goldens "
                f"or `{store.update_hint(self.runtime)}`"
            )
        check = next((c for c in comparison.checks if c.name == self.check), None)
        if check is None:
            pytest.skip(f"{self.check} is not checked for the {self.suite.task.name} task")
        if not check.passed:
            why = f"; {comparison.attribution.message()}" if comparison.attribution else ""
            raise CheckFailure(
                f"{self.runtime} vs {comparison.against}: {check.name} = {check.value:.6g}, limit {check.op} {check.limit:.6g}{why}"
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CheckFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.suite.path, 0, f"{self.suite.name}: {self.name}"


class CheckFailure(AssertionError):
    """A check beyond its limit: reported as its one line, without a traceback."""


class SuiteCollector(pytest.Collector):
    """The generated tests of one suite."""

    def __init__(self, *, suite: Suite, runtimes: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite, self.runtimes = suite, runtimes

    def collect(self) -> Iterator[CheckItem]:
        from harness.judge.compare import CHECKS, DETECTION_CHECKS

        checks = (*CHECKS, *DETECTION_CHECKS) if self.suite.task.name == "detection" else CHECKS
        for runtime in self.runtimes:
            baselines = ["golden"] if runtime == self.suite.run.reference else ["reference", "golden"]
            for baseline in baselines:
                for check in checks:
                    name = f"{runtime}::{check}" if baseline == "reference" else f"{runtime}::golden::{check}"
                    item = CheckItem.from_parent(
                        self, name=name, suite=self.suite, runtimes=self.runtimes, runtime=runtime, baseline=baseline, check=check
                    )
                    item.add_marker(pytest.mark.xdist_group(self.suite.name))
                    if runtime in self.suite.run.xfail:
                        item.add_marker(pytest.mark.xfail(reason=self.suite.run.xfail[runtime], strict=False))
                    yield item


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    from harness import api
    from harness.core.errors import HarnessError

    for name in config.getoption("harness_suite"):
        try:
            suite = api.load_suite(name)
            runtimes = [s.name for s in api.resolve_runtimes(config.getoption("harness_runtime") or suite.run.runtimes)]
        except HarnessError as exc:
            raise pytest.UsageError(f"--harness-suite {name}: {exc}") from exc
        collector = SuiteCollector.from_parent(session, name=suite.name, nodeid=suite.name, suite=suite, runtimes=runtimes)
        generated = list(collector.collect())
        config.hook.pytest_collectreport(report=pytest.CollectReport(collector.nodeid, "passed", None, generated))  # counted as collected
        items.extend(generated)


@pytest.fixture
def harness_suite(request: pytest.FixtureRequest) -> Suite:
    """The suite of the first --harness-suite; override this fixture to build your own (`Suite.from_mapping`)."""
    from harness import api

    names = request.config.getoption("harness_suite")
    if not names:
        pytest.fail("no suite: pass --harness-suite SUITE, or override the harness_suite fixture", pytrace=False)
    return api.load_suite(names[0])


@pytest.fixture
def conformance(request: pytest.FixtureRequest, harness_suite: Suite) -> Callable[..., RunReport]:
    """`conformance(runtimes=[...], suite=None, **options)`: the suite checked (once per session and runtime list),
    raising `ConformanceError` when a check fails; goldens recorded first with --harness-update-goldens."""
    from harness import api

    def run(runtimes: list[str] | None = None, suite: Suite | None = None) -> RunReport:
        from harness.core.errors import HarnessError

        chosen = suite or harness_suite
        try:
            names = [s.name for s in api.resolve_runtimes(runtimes or chosen.run.runtimes)]
            report = _Runs(request.config).report(chosen, names)
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)
        if not report.passed:
            raise api.ConformanceError(f"suite {report.suite}", api.failures(report))
        return report

    return run
