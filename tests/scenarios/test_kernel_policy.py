"""The kernel's hotplug policy, predicted rather than tolerated, on the
default guest (Debian 12's 6.1).  The same cases run on Debian's 6.12 in
tests/kernels/test_policy_matrix.py; see harness/calibrate/cases.py."""

from __future__ import annotations

import pytest

from harness.calibrate.cases import CASES, Case
from harness.testing import assert_passed, run_steps

# Kernel parameters are what these cases test (memhp_default_state=,
# memory_hotplug.online_policy=, ...): each VM boots them for real.
pytestmark = [pytest.mark.vm, pytest.mark.memhp_cold_boot]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy(case: Case, memhp_vm_factory, request) -> None:
    vm = memhp_vm_factory(**case.machine)
    results = run_steps(vm, case.steps, request)
    assert_passed(results)
    case.check(results)
