"""Helpers for tests written with memhp's pytest plugin.

``run_steps(vm, [add("dimm0:1G@1"), online("dimm0")], request)`` runs the
steps on a VM booted by ``memhp_vm``/``memhp_vm_factory`` through the same
:class:`harness.run.runner.Runner` as ``memhp run`` (so every step compares
QEMU, guest and model), records mismatches on the test's report, and
returns the step results; :func:`assert_passed` turns them into one
readable assertion.

``run_cli("run", "--json", ...)`` runs memhp's CLI in a subprocess (this
Python, ``-m harness``) as a user would, output captured;
:func:`start_cli` starts one for a test that signals it or runs several.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.run.results import StepResult
from harness.run.runner import Runner
from harness.scenario import Step


def make_runner(vm: Any, steps: Sequence[Step]) -> Runner:
    if vm.scenario is None:
        raise ValueError("this VM was not booted from a scenario (use memhp_vm_factory)")
    scenario = replace(vm.scenario, steps=tuple(steps))
    return Runner(scenario, vm)


def run_steps(vm: Any, steps: Sequence[Step], request: pytest.FixtureRequest | None = None
              ) -> list[StepResult]:
    runner = make_runner(vm, steps)
    try:
        runner.run()
    finally:
        if request is not None:
            from harness.pytest_plugin.reports import record_mismatches

            record_mismatches(request, [m for s in runner.steps for m in s.mismatches])
            from harness.pytest_plugin.ktap import STEPS_KEY

            request.node.stash.setdefault(STEPS_KEY, []).extend(runner.steps)
    return runner.steps


def assert_passed(results: Sequence[StepResult]) -> None:
    bad = [s for s in results if not s.passed]
    if bad:
        lines = []
        for s in bad:
            lines.append(f"step {s.index + 1} ({s.action}):")
            if s.error:
                lines.append(f"  error: {s.error}")
            lines.extend(f"  {m}" for m in s.mismatches)
            for sp in s.unexpected_splats:
                lines.append(f"  kernel {sp.kind}: " + "\n    ".join(sp.lines[:30]))
        raise AssertionError("model and guest disagree:\n" + "\n".join(lines))


def cli_argv(*args: str) -> list[str]:
    """The command line of ``memhp ARGS`` with this Python (``-m harness``)."""
    return [sys.executable, "-m", "harness", *args]


def run_cli(*args: str, timeout: float = 600, env: Mapping[str, str] | None = None,
            cwd: Path | str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``memhp ARGS`` to the end: exit code, stdout and stderr as text
    (never raises for a non-zero exit; ``env`` replaces the environment)."""
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=timeout,
                          check=False, env=None if env is None else dict(env), cwd=cwd)


def start_cli(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """Start ``memhp ARGS`` (``popen``: :class:`subprocess.Popen`'s keywords;
    text mode unless told otherwise)."""
    popen.setdefault("text", True)
    return subprocess.Popen(cli_argv(*args), **popen)

