"""``memhp calibrate`` end to end: the QEMU side against the system's QEMU
(started paused, no guest), the kernel side on the default guest (one
case, one boot), each writing the record later runs read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.calibrate.record import load, qemu_identity
from harness.qemu.version import qemu_version
from harness.testing import run_cli


@pytest.fixture(autouse=True)
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own record directory; the guest image and downloads stay
    in the suite's cache."""
    monkeypatch.setenv("MEMHP_CALIBRATION_DIR", str(tmp_path / "records"))
    return tmp_path / "records"


def calibrate(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run_cli("calibrate", *args, "--json", timeout=timeout)


def test_qemu_side_counts_and_records(qemu: tuple[str, tuple[int, int]]) -> None:
    binary, _ = qemu
    proc = calibrate("--no-kernel", "--qemu", binary, "--plans", "8", "--seed", "7")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (doc,) = json.loads(proc.stdout)
    counts = {k: tuple(v) for k, v in doc["counts"].items()}
    assert all(total > 0 for _, total in counts.values()), counts
    assert all(agreed == total for agreed, total in counts.values()), doc["disagreements"]
    assert doc["clean"] and not doc["disagreements"]
    assert "agreed start" in proc.stderr and "reproduce" not in proc.stderr
    version = qemu_version(binary)
    record = load("qemu", qemu_identity(binary, version))
    assert record is not None and record.clean and record.version == version
    # the same seed gives the same plans: the same counts
    again = json.loads(calibrate("--no-kernel", "--qemu", binary, "--plans", "8",
                                 "--seed", "7").stdout)[0]
    assert again["counts"] == doc["counts"]


@pytest.mark.vm
def test_kernel_side_runs_a_case_on_the_default_guest(records: Path) -> None:
    proc = calibrate("--no-qemu", "--case", "auto_movable", "--accel", "tcg")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (doc,) = json.loads(proc.stdout)
    assert [c["id"] for c in doc["cases"]] == ["auto_movable"]
    assert all(c["passed"] for c in doc["cases"]), doc["cases"]
    # a subset of the cases is recorded but vouches for nothing
    assert not doc["clean"] and "does not lift" in proc.stderr
    assert Path(doc["path"]).parent == records
