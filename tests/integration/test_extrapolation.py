"""A QEMU newer than the model, end to end: memhp runs it on the newest
rules, flagged, and `memhp calibrate` finds where the model is behind.

There is no QEMU 12 to run, so the QEMU here is a *fake version*: a
wrapper that answers ``--version`` with "12.0.0" and execs the system's
real QEMU 7.2 for everything else.  The model then applies 11.1's rules
to a binary that really behaves like 7.2: the seed session still passes
(the rules it meets agree), the flag is on the first line and in the
JSON, and calibration finds the rules that differ (11.1 no longer has
machine type 4.0, 7.2 does) and keeps the flag.

The other way round (a clean calibration lifting the flag) has no binary
to show it end to end: a fake 12.0 over the real 11.1 differs from the
model too, as 12.0's rules delete the 5.2 machine types 11.1 still has
(QEMU's six-year rule, include/hw/boards.h).  tests/unit/test_calibration.py
checks that a clean record of this very binary lifts it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.calibrate import model_status
from harness.model.qemu_rules import NEWEST_READ
from harness.testing import run_cli

pytestmark = [pytest.mark.vm]


def _fake_12(real: str, tmp_path: Path) -> Path:
    path = tmp_path / "qemu-system-x86_64"
    path.write_text("#!/bin/sh\n# a fake version: QEMU 7.2 saying it is 12.0\n"
                    'if [ "$1" = --version ]; then\n'
                    '  echo "QEMU emulator version 12.0.0"; exit 0\nfi\n'
                    f'exec {real} "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def qemu_12(tmp_path: Path) -> Path:
    """QEMU 7.2 saying it is 12.0: the model (11.1's rules) is behind it."""
    real = shutil.which("qemu-system-x86_64")
    if real is None:
        pytest.skip("qemu-system-x86_64 is not installed (make setup installs it)")
    return _fake_12(real, tmp_path)



def memhp(*args: str, records: Path) -> subprocess.CompletedProcess[str]:
    import os

    return run_cli(*args, timeout=600,
                   env=os.environ | {"MEMHP_CALIBRATION_DIR": str(records)})


def test_newer_qemu_runs_flagged_and_calibration_finds_the_gap(
        qemu_12: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = tmp_path / "records"
    newest = "{}.{}".format(*NEWEST_READ)
    run = memhp("run", "--qemu", str(qemu_12), "--accel", "tcg", "--json", records=records)
    doc = json.loads(run.stdout)
    assert doc["result"] == "pass", (doc.get("error"), run.stderr[-3000:])
    first = run.stderr.splitlines()[0]
    assert first.startswith("memhp: model extrapolated: QEMU 12.0 is newer than the newest "
                            f"QEMU read ({newest})"), run.stderr
    assert doc["model"]["extrapolated_from"] == {"qemu": newest}

    cal = memhp("calibrate", "--no-kernel", "--qemu", str(qemu_12), "--plans", "4", "--json",
                records=records)
    assert cal.returncode == 1, cal.stderr[-3000:]
    (rec,) = json.loads(cal.stdout)
    assert not rec["clean"] and rec["disagreements"], rec
    assert any("pc-i440fx-4.0" in d["reproducer"] or "4.0" in d["detail"]
               for d in rec["disagreements"]), rec["disagreements"]
    assert "reproduce: memhp model" in cal.stderr
    # a calibration with disagreements vouches for nothing: still flagged
    monkeypatch.setenv("MEMHP_CALIBRATION_DIR", str(records))
    status = model_status(qemu_binary=str(qemu_12), qemu_version="12.0.0")
    assert [e.component for e in status.extrapolated] == ["qemu"]
