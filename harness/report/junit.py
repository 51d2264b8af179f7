"""JUnit XML: one test case per runtime x check, so CI systems list them natively.

Follows the schema Jenkins, GitLab and GitHub test reporters read
(junit-10.xsd): <testsuites> holding one <testsuite> per compared baseline
(`reference`, `golden`) with name/tests/failures/errors/skipped/time, each
<testcase> with name, classname and time, and a <failure message type> for a
failed check.  The whole run's environment goes into <properties>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from harness.judge.verdict import RunReport


def _suite(parent: ET.Element, name: str, cases: list[tuple[str, str, float, str | None, str]], properties: dict[str, str]) -> None:
    failures = sum(1 for case in cases if case[3] is not None)
    suite = ET.SubElement(
        parent,
        "testsuite",
        name=name,
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{sum(c[2] for c in cases):.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", name=key, value=value)
    for classname, case_name, seconds, failure, detail in cases:
        case = ET.SubElement(suite, "testcase", name=case_name, classname=classname, time=f"{seconds:.3f}")
        if failure is not None:
            ET.SubElement(case, "failure", message=failure, type="ToleranceExceeded").text = detail
        ET.SubElement(case, "system-out").text = detail


def junit_xml(report: RunReport) -> str:
    """The report as JUnit XML text."""
    env: dict[str, Any] = report.context.get("environment", {})
    properties = {"suite": report.suite, "reference": report.reference, "samples": str(report.samples), "cpu": str(env.get("cpu"))}
    properties |= {"isa": ",".join(env.get("isa", [])), "threads": str(env.get("threads"))}
    properties["batch_size"] = str(report.context.get("batch_size"))
    properties |= {f"library.{k}": str(v) for k, v in env.get("libraries", {}).items()}
    by_baseline: dict[str, list[tuple[str, str, float, str | None, str]]] = {}
    for result in report.results:
        for comp in result.comparisons:
            baseline = comp.against.kind
            stages = f"; stages: {comp.attribution.message()}" if comp.attribution else ""
            for check in comp.checks:
                detail = f"{check.name} = {check.value:.6g} (limit {check.op} {check.limit:.6g}) vs {comp.against}{stages}"
                failure = None if check.passed else f"{check.name} {check.value:.6g} not {check.op} {check.limit:.6g}"
                by_baseline.setdefault(baseline, []).append(
                    (
                        f"{report.suite}.{result.runtime}",
                        f"{comp.against}:{check.name}",
                        result.infer_seconds / len(comp.checks),
                        failure,
                        detail,
                    )
                )
    root = ET.Element("testsuites", name=f"harness {report.suite}")
    for baseline, cases in by_baseline.items():
        _suite(root, f"{report.suite}.{baseline}", cases, properties)
    root.set("tests", str(sum(int(s.get("tests", 0)) for s in root)))
    root.set("failures", str(sum(int(s.get("failures", 0)) for s in root)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
