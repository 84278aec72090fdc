"""Shared fixtures of memhp's own test suite (the plugin provides the VM ones)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def default_kernel(memhp_guest_image: Any) -> Path:
    """The guest kernel every VM test boots."""
    return Path(memhp_guest_image.kernel)


# -- soak: repeat the fault tests ---------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", type=int, default=1, metavar="N",
                     help="Run every @pytest.mark.fault test N times (make soak).")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    rounds = metafunc.config.getoption("soak")
    if rounds > 1 and metafunc.definition.get_closest_marker("fault") is not None:
        metafunc.fixturenames.append("soak_round")
        metafunc.parametrize("soak_round", range(rounds), ids=lambda i: f"soak{i}")


# -- the long ones first --------------------------------------------------------------
# pytest-xdist hands tests out in collection order, so a long test collected
# last (tests/slow/ sorts last: its cold kernel build takes minutes) runs on
# one worker while the other has nothing left.  Started first, it overlaps
# with the rest.  The sort is stable: the order is otherwise pytest's.

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is not None:
            return 0
        return 1 if item.get_closest_marker("long_running") is not None else 2

    items.sort(key=rank)


# -- leak check over the whole run ------------------------------------------------------
# The controller (not an xdist worker) gives the whole run a private TMPDIR
# (inherited by the workers and every memhp they start) and, at the end, fails
# the run if a memhp QEMU or work dir of *this run* is left.  Other memhp users
# on the host (another engineer's suite, a CI job) are not counted.

_SUITE_TMP = pytest.StashKey[Path]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: a provoked fault (repeated by --soak N)")
    config.addinivalue_line("markers", "long_running: a VM test whose own guest work takes "
                            "tens of seconds (scheduled early, see pytest_collection_modifyitems)")
    if _is_worker(config):
        return
    suite_tmp = Path(tempfile.mkdtemp(prefix="mhsuite-", dir="/tmp"))  # short: sockets
    config.stash[_SUITE_TMP] = suite_tmp
    os.environ["TMPDIR"] = str(suite_tmp)
    os.environ.pop("XDG_RUNTIME_DIR", None)
    tempfile.tempdir = None  # forget the cached default


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from harness.leaks import memhp_qemu_pids, memhp_work_dirs

    if _is_worker(session.config) or _SUITE_TMP not in session.config.stash:
        return
    suite_tmp = session.config.stash[_SUITE_TMP]
    leaked_pids = memhp_qemu_pids(under=suite_tmp)
    leaked_dirs = memhp_work_dirs(roots=[suite_tmp])
    if leaked_pids or leaked_dirs:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"memhp LEAK: QEMU pids {sorted(leaked_pids)}, "
               f"work dirs {sorted(map(str, leaked_dirs))}")
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif exitstatus == 0:
        shutil.rmtree(suite_tmp, ignore_errors=True)
