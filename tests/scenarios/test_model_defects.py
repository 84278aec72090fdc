"""Issue 14's runner defects, each provoked for real on the default guest.

* an online write the kernel refuses, where the model expected success,
  fails the step with the kernel's answer (it used to pass);
* a removal the guest refuses keeps the DIMM in the plan, so a later,
  successful removal is not reported as a mismatch (the plan used to drift);
* a baseline the guest cannot report (no memory blocks) is an error, not an
  empty baseline that flags every boot block later.
"""

from __future__ import annotations

import pytest

from harness.errors import VMError
from harness.scenario import add, online, remove
from harness.testing import make_runner

pytestmark = [pytest.mark.vm]


def test_unexpected_write_error_fails_the_step(memhp_vm) -> None:
    """The guest is switched to auto-online behind the model's back (after
    the baseline): the blocks come online by themselves, and the online
    write answers EINVAL where the model expected it to succeed."""
    runner = make_runner(memhp_vm, [add("dimm0:256M@1"), online("dimm0", "online_movable")])
    runner.take_baseline()
    memhp_vm.guest.set_auto_online("online")
    first = runner.run_step(0, runner.scenario.steps[0])
    assert not first.passed  # blocks online, model says offline
    second = runner.run_step(1, runner.scenario.steps[1])
    writes = [m for m in second.mismatches if m.what == "write online_movable"]
    assert writes and all(m.expected == "ok" and "EINVAL" in str(m.observed) for m in writes)


@pytest.mark.memhp_machine(numa="6G,0")
def test_refused_removal_does_not_drift_the_plan(memhp_vm) -> None:
    """d0 holds unmovable kernel allocations (node 1's only memory), so its
    removal is refused; d1, plugged after, is removed cleanly and that step
    passes with d0 still expected where it is."""
    steps = [add("d0:512M@1"), online("d0", "online_kernel"), remove("d0"),
             add("d1:256M@1"), online("d1", "online_movable"), remove("d1")]
    runner = make_runner(memhp_vm, steps)
    runner.take_baseline()
    for i in (0, 1):
        assert runner.run_step(i, steps[i]).passed
    memhp_vm.ssh(["numactl", "--cpunodebind=1", "--membind=1", "bash", "-c",
                  "mkdir -p /tmp/x && cd /tmp/x && mkdir d{1..40000}"], timeout=300)
    refused = runner.run_step(2, steps[2])
    assert refused.error and "hotplug" in refused.error
    # The kernel says why in its log (dump_page(page, "unmovable page")): a
    # splat the refusal explains, so expected, not a failure of its own.
    dumps = [sp for sp in refused.splats if sp.kind == "page-dump"]
    assert dumps and all(sp.expected for sp in dumps), refused.splats
    later = [runner.run_step(i, steps[i]) for i in (3, 4, 5)]
    assert [s.passed for s in later] == [True, True, True], [
        (s.action, s.error, [str(m) for m in s.mismatches]) for s in later]
    assert [d["id"] for d in later[-1].expected["dimms"]] == ["d0"]


def test_empty_baseline_is_an_error(memhp_vm) -> None:
    """A guest whose memory sysfs cannot be read (here: hidden under a tmpfs)
    must not become an empty baseline."""
    memhp_vm.ssh(["mount", "-t", "tmpfs", "none", "/sys/devices/system/memory"])
    runner = make_runner(memhp_vm, [add("dimm0:128M@1")])
    with pytest.raises(VMError, match="memory blocks|memory block sysfs"):
        runner.take_baseline()
