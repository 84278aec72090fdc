"""bench.suite_outcome: a timed suite run's result in one line (inputs are
pytest -q output written for the test, trimmed to the lines read)."""

from __future__ import annotations

from harness.bench import suite_outcome

PASSED = """\
.................................................                        [100%]
49 passed in 262.67s (0:04:22)
"""

RETRIED = """\
...........F.....................................                        [100%]
=============================== warnings summary ===============================
tests/scenarios/test_positive.py::test_seed_session
  /work/harness/pytest_plugin.py:392: MemhpBootRetry: test_seed_session: boot, boot \
attempt 1 hung after 240s (QEMU running; CPU0 RIP=ffffffff842fa870)
=========================== short test summary info ============================
FAILED tests/scenarios/test_positive.py::test_q35 - AssertionError
================== 1 failed, 48 passed, 1 warning in 301.02s ===================
"""


def test_a_clean_run_says_exit_summary_and_no_retries() -> None:
    assert suite_outcome(0, PASSED) == (
        "exit 0: 49 passed in 262.67s (0:04:22); 0 hung boot(s) retried")


def test_a_failure_and_a_retried_boot_are_named() -> None:
    assert suite_outcome(1, RETRIED) == (
        "exit 1: 1 failed, 48 passed, 1 warning in 301.02s; 1 hung boot(s) retried")


def test_no_summary_line_is_said() -> None:
    assert suite_outcome(4, "ERROR: usage\n") == (
        "exit 4: no pytest summary line; 0 hung boot(s) retried")
