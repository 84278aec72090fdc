"""The kernel's hotplug policy, predicted rather than tolerated.

Each test boots the guest with a policy knob, lets the Runner compare every
step with the kernel model (harness.model.kernel, fed with the policy the
guest reports), and then checks that the scenario really exercised the rule
it is about: the model's expectation differs from what the default policy
would give, and the guest agreed with it (``assert_passed``).
"""

from __future__ import annotations

import pytest

from harness.scenario import add, offline, online
from harness.testing import assert_passed, make_runner, run_steps

pytestmark = [pytest.mark.vm]


def zones(result) -> set[str | None]:
    return {b["zone"] for b in result.expected["blocks"] if b["state"] == "online"}


@pytest.mark.memhp_machine(append=("movable_node",))
def test_movable_node_onlines_movable(memhp_vm, request) -> None:
    """default_zone_for_pfn(): a range in no zone goes Movable with movable_node."""
    results = run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online")], request)
    assert_passed(results)
    assert zones(results[-1]) == {"Movable"}
    assert results[-1].observed["blocks"]


@pytest.mark.memhp_machine(append=("memory_hotplug.online_policy=auto-movable",))
def test_auto_movable_within_the_ratio(memhp_vm, request) -> None:
    results = run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online")], request)
    assert_passed(results)
    assert zones(results[-1]) == {"Movable"}


@pytest.mark.memhp_machine(append=("memory_hotplug.online_policy=auto-movable",
                                   "memory_hotplug.auto_movable_ratio=10"))
def test_auto_movable_beyond_the_ratio_stays_kernel(memhp_vm, request) -> None:
    """1 GiB of Movable would exceed 10 % of the boot kernel memory."""
    results = run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online")], request)
    assert_passed(results)
    assert zones(results[-1]) == {"Normal"}


@pytest.mark.memhp_machine(numa="5G,1G",
                           append=("memory_hotplug.online_policy=auto-movable",))
def test_auto_movable_numa_aware_counts_the_node(memhp_vm, request) -> None:
    """Node 1 has 1G of kernel memory: 4G more Movable there breaks its own
    301 % ratio although the system-wide one holds."""
    results = run_steps(memhp_vm, [add("dimm0:4G@1"), online("dimm0", "online")], request)
    assert_passed(results)
    assert zones(results[-1]) == {"Normal"}


@pytest.mark.memhp_machine(append=("memory_hotplug.memmap_on_memory=1",))
def test_memmap_on_memory_totals(memhp_vm, request) -> None:
    """The memmap of hot-added memory lives in it: MemTotal grows by less
    than the DIMM (6.1: one-block DIMMs only; 6.6+: every block)."""
    results = run_steps(memhp_vm, [add("small:128M@0"), online("small", "online_movable"),
                                   add("big:1G@1"), online("big", "online_movable")], request)
    assert_passed(results)
    managed = {b["managed_bytes"] for b in results[-1].expected["blocks"]}
    assert min(managed) < results[-1].expected["block_size"]


@pytest.mark.memhp_machine(append=("memhp_default_state=online_kernel",))
def test_online_request_on_auto_onlined_blocks_is_refused_as_predicted(memhp_vm,
                                                                        request) -> None:
    """Blocks the kernel onlined by itself answer EINVAL to another online
    write (state_store(): device_online() returns 1); the model predicts it,
    so the step passes, and offlining works."""
    runner = make_runner(memhp_vm, [add("dimm0:512M@1"), online("dimm0", "online_movable"),
                                    offline("dimm0")])
    assert_passed(runner.run())
    assert zones(runner.steps[0]) == {"Normal"}
    assert runner.steps[-1].observed["blocks"]


@pytest.mark.memhp_machine(append=("memhp_default_state=online_kernel",))
def test_offline_of_kernel_memory_may_be_busy(memhp_vm, request) -> None:
    """Offlining Normal-zone memory may meet EBUSY; either answer is the
    kernel's right, and the model follows the one it gives."""
    assert_passed(run_steps(memhp_vm, [add("dimm0:256M@0"), offline("dimm0")], request))


def test_zone_spans_decide_where_online_goes(memhp_vm, request) -> None:
    """Four one-block DIMMs side by side: "online" inherits the zone whose
    span covers a block, and a block inside both spans goes to the kernel
    zone (default_zone_for_pfn, resize_zone_range)."""
    steps = [add("a:128M@1"), add("b:128M@1"), add("c:128M@1"), add("d:128M@1"),
             online("a", "online_movable"), online("c", "online_movable"),
             online("b", "online"), offline("b"), online("d", "online"), online("b", "online")]
    results = run_steps(memhp_vm, steps, request)
    assert_passed(results)
    by_number = {b["number"]: b["zone"] for b in results[6].expected["blocks"]}
    assert "Movable" in by_number.values()
    final = {b["number"]: b["zone"] for b in results[-1].expected["blocks"]}
    assert sorted(final.values()) == ["Movable", "Movable", "Normal", "Normal"]
