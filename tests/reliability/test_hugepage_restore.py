"""Hugepages are given back whatever ends memhp: normal exit, Ctrl-C,
SIGTERM, and kill -9 (restored from the record by the next memhp).

A child python reserves 2 MiB pages through harness.host.hugepages.reserved
(which also mounts a private hugetlbfs), says ready, and waits; the test
checks the pool grew and the mount exists, ends the child, and checks the
pool and mounts are as before.  Real sysfs, real mount: root only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.host.hugepage_pools import pool
from harness.host.hugepage_records import sweep_stale
from harness.units import MiB

CHILD = """
import sys
from harness.host.hugepages import reserved
with reserved({2 << 20: 6}) as res:
    print(res.mounts[2 << 20], flush=True)
    sys.stdin.read()
"""


def _hugetlbfs_mounts() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[2] == "hugetlbfs"}


@pytest.fixture
def baseline() -> tuple[int, set[str]]:
    if os.geteuid() != 0:
        pytest.skip("changing hugepage pools needs root")
    p = pool(2 * MiB)
    if p is None:
        pytest.skip("the host kernel offers no 2 MiB hugepages")
    return p.nr, _hugetlbfs_mounts()


@pytest.mark.parametrize("how", ["exit", "SIGINT", "SIGTERM", "SIGKILL"])
def test_pool_and_mount_restored(baseline: tuple[int, set[str]], how: str) -> None:
    nr0, mounts0 = baseline
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        mount = child.stdout.readline().strip()
        assert mount, child.stderr.read() if child.stderr else ""
        now = pool(2 * MiB)
        assert now is not None and now.nr == nr0 + 6
        assert mount in _hugetlbfs_mounts() or mount in mounts0
        if how == "exit":
            child.stdin.close()
        else:
            child.send_signal(getattr(signal, how))
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if how == "SIGKILL":
        # nothing could run in the child: the record is still there
        assert pool(2 * MiB).nr == nr0 + 6  # type: ignore[union-attr]
        assert sweep_stale()
    after = pool(2 * MiB)
    assert after is not None and after.nr == nr0, f"{how}: nr_hugepages {after.nr} != {nr0}"
    assert _hugetlbfs_mounts() == mounts0, f"{how}: mounts left: {_hugetlbfs_mounts() - mounts0}"
    assert not Path(mount).exists() or mount in mounts0
