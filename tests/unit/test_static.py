"""Lint and type checks as tests, so `make test` (and CI) enforce them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_ruff_is_clean() -> None:
    proc = _tool("ruff", "check", "harness", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    """The model and the driver are fully typed; keep it that way."""
    proc = _tool("mypy", "harness")
    assert proc.returncode == 0, proc.stdout + proc.stderr
