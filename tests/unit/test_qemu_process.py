"""The parts of a VM split out of harness/qemu/vm.py, without a QEMU: the
0700 work dir, the artifacts, the end by PID, and the health checks."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import GuestPanic, QemuExited
from harness.qemu import health
from harness.qemu.process import ARTIFACTS, QemuProcess, private_dir, process_state

LOG = logging.getLogger("test")


def test_private_dir_is_0700_with_an_owner_file(tmp_path: Path) -> None:
    path = private_dir(tmp_path, "x-")  # under /tmp when tmp_path is too long for a socket
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert path.name.startswith("memhp-")
        pid, _start = (path / "owner").read_text().split()
        assert int(pid) > 0
    finally:
        shutil.rmtree(path)


def test_finish_keeps_the_artifacts_and_removes_the_workdir(tmp_path: Path) -> None:
    proc = QemuProcess(tmp_path, LOG)
    workdir = proc.make_workdir()
    for name in ARTIFACTS[:3]:
        (workdir / name).write_text(name)
    (workdir / "keys").mkdir()
    kept = proc.finish(tmp_path / "artifacts" / "vm")
    assert kept == tmp_path / "artifacts" / "vm"
    assert sorted(p.name for p in kept.iterdir()) == sorted(ARTIFACTS[:3])
    assert not workdir.exists() and proc.workdir is None
    assert proc.finish(tmp_path / "again") is None  # idempotent


def test_finish_without_artifacts_copies_nothing(tmp_path: Path) -> None:
    proc = QemuProcess(tmp_path, LOG)
    workdir = proc.make_workdir()
    (workdir / "serial.log").write_text("x")
    assert proc.finish(None) is None
    assert not workdir.exists()


def test_end_kills_by_pid_what_does_not_quit(tmp_path: Path) -> None:
    proc = QemuProcess(tmp_path, LOG)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.proc = child  # no QMP: nothing to ask, so it is killed after the timeout
    proc.end(0.1)
    assert child.returncode is not None
    assert process_state(child.pid) is None


def test_health_names_a_panic_and_an_exit(tmp_path: Path) -> None:
    proc = QemuProcess(tmp_path, LOG)
    workdir = proc.make_workdir()
    try:
        health.check_alive(proc)  # no QEMU started: nothing to report
        (workdir / "serial.log").write_text("boot\nKernel panic - not syncing: test\n")
        with pytest.raises(GuestPanic, match="not syncing: test"):
            health.check_alive(proc)
        (workdir / "serial.log").write_text("boot\n")
        proc.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        proc.proc.wait()
        with pytest.raises(QemuExited):
            health.check_alive(proc)
    finally:
        proc.finish(None)
