"""`harness report OLD.json NEW.json`: what changed between two runs, per
runtime and baseline (metric, error, flips, verdict), and in their
provenance (model, dataset, stack, libraries, hardware)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.records import metadata_changes

PROVENANCE = ("model", "dataset", "stack", "environment", "artifacts")


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable report.json ({exc})", "pass report.json files written by `harness run`") from exc
    if data.get("kind") != "suite-run":
        raise HarnessError(f"{path}: kind {data.get('kind')!r} is not a suite run report", "pass report.json of `harness run --suite`")
    return data


def _comparisons(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for result in report["results"]:
        for comp in result["comparisons"]:
            found[(result["runtime"], comp["against"])] = comp
        if not result["comparisons"]:
            found[(result["runtime"], "-")] = {"metric": result["metric"], "flips": [], "outputs": {}, "passed": result["passed"]}
    return found


def _max_abs(comp: dict[str, Any]) -> float | None:
    values = [o["max_abs"] for o in comp.get("outputs", {}).values()]
    return max(values) if values else None


def diff_reports(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[list[str]], list[str], bool]:
    """Table rows, provenance change lines, and whether any check went from PASS to FAIL."""
    before, after = _comparisons(old), _comparisons(new)
    rows, regressed = [], False
    for key in list(dict.fromkeys([*before, *after])):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            rows.append([key[0], key[1], "only in old" if b is None else "only in new", "", "", ""])
            continue
        verdict = f"{'PASS' if a['passed'] else 'FAIL'} -> {'PASS' if b['passed'] else 'FAIL'}"
        regressed |= a["passed"] and not b["passed"]
        old_abs, new_abs = _max_abs(a), _max_abs(b)
        rows.append(
            [
                key[0],
                key[1],
                f"{a['metric']:.4f} -> {b['metric']:.4f} ({b['metric'] - a['metric']:+.4f})",
                f"{old_abs:.2e} -> {new_abs:.2e}" if old_abs is not None and new_abs is not None else "",
                f"{len(a['flips'])} -> {len(b['flips'])}",
                verdict,
            ]
        )
    provenance = metadata_changes({k: old.get(k, {}) for k in PROVENANCE}, {k: new.get(k, {}) for k in PROVENANCE})
    return rows, provenance, regressed


DIFF_HEADERS = ("runtime", "vs", "metric", "max abs", "flips", "verdict")
