"""``--memhp-ktap PATH``: the session's results as KTAP version 1 (one test
per pytest test, a subtest per memhp step it ran through
:func:`harness.testing.run_steps`, a SKIP directive with its reason).

Each test's record travels in its report's ``user_properties`` (so it
crosses from pytest-xdist workers), and the controller writes the file at
the session's end (:class:`KtapWriter`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

STEPS_KEY = pytest.StashKey[list[Any]]()
PROPERTY = "memhp.ktap"


def record(item: pytest.Item, report: pytest.TestReport) -> None:
    """Attach the test's KTAP record to its report (call phase, or a setup
    that failed or skipped)."""
    if report.when != "call" and report.passed:
        return
    if report.when == "teardown":
        return
    steps = [s.to_json() for s in item.stash.get(STEPS_KEY, [])]
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        lines = str(report.longrepr).strip().splitlines()
        reason = lines[-1] if lines else "failed"
    entry = {"scenario": item.nodeid, "result": "pass" if report.passed else "fail",
             "skipped": reason if report.skipped else None, "steps": steps,
             "error": ({"phase": report.when, "message": reason}
                       if report.failed and report.when != "call" else None),
             "diagnostic": reason if report.failed and report.when == "call" else None}
    report.user_properties.append((PROPERTY, json.dumps(entry)))


class KtapWriter:
    """Collects the records on the controller and writes them at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == PROPERTY:
                self.entries.append(json.loads(str(value)))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from harness.export.ktap import ktap

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(ktap(self.entries))
