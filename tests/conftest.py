"""Shared fixtures of memhp's own test suite (the plugin provides the VM ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def default_kernel(memhp_guest_image: Any) -> Path:
    """The guest kernel every VM test boots."""
    return Path(memhp_guest_image.kernel)


# -- leak check over the whole run ------------------------------------------------------
# The controller (not an xdist worker) records memhp's QEMUs and work dirs at
# the start and fails the run if any new one is left at the end.

_BEFORE = pytest.StashKey[tuple[set[int], set[Path]]]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    from harness.leaks import memhp_qemu_pids, memhp_work_dirs

    if not _is_worker(session.config):
        session.config.stash[_BEFORE] = (memhp_qemu_pids(), memhp_work_dirs())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from harness.leaks import memhp_qemu_pids, memhp_work_dirs

    if _is_worker(session.config) or _BEFORE not in session.config.stash:
        return
    pids, dirs = session.config.stash[_BEFORE]
    leaked_pids = memhp_qemu_pids() - pids
    leaked_dirs = memhp_work_dirs() - dirs
    if leaked_pids or leaked_dirs:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"memhp LEAK: QEMU pids {sorted(leaked_pids)}, "
               f"work dirs {sorted(map(str, leaked_dirs))}")
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
