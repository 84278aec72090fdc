"""An inner pytest run with a failing VM test and an interrupted one: every
QEMU is ended and every work dir removed (failures keep artifacts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.leaks import memhp_qemu_pids

pytestmark = [pytest.mark.vm]

INNER = '''
import pytest
from harness.scenario import add
from harness.testing import run_steps

@pytest.mark.memhp_machine(memory="1G,slots=2,maxmem=2G", numa="512M,512M")
def test_fails(memhp_vm):
    run_steps(memhp_vm, [add("d0:128M@0")])
    assert False, "deliberate failure"

@pytest.mark.memhp_machine(memory="1G,slots=2,maxmem=2G", numa="512M,512M")
def test_interrupted(memhp_vm):
    raise KeyboardInterrupt
'''


def test_failing_and_interrupted_tests_leak_nothing(tmp_path: Path, memhp_guest_image) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    tmp = Path(tempfile.mkdtemp(prefix="leak", dir="/tmp"))  # short: sockets live here
    artifacts = tmp_path / "artifacts"
    env = dict(os.environ, TMPDIR=str(tmp), XDG_RUNTIME_DIR="")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path),
         f"--memhp-artifacts={artifacts}", "--memhp-accel=tcg", "-o", "addopts="],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), out  # a failure and an interruption
    assert "deliberate failure" in out
    assert "memhp serial console" in out  # the failure report carries the console tail
    assert memhp_qemu_pids(under=tmp) == set()  # (other xdist workers' VMs are elsewhere)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("memhp-")] == []
    kept = list(artifacts.glob("*/serial.log"))
    assert kept, "the failed test's artifacts were not kept"
    assert not list(artifacts.glob("*/*key*"))  # keys never reach artifacts
    shutil.rmtree(tmp)
