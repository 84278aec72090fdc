"""Positive memory-hotplug scenarios on real VMs.

Every step is checked by the Runner against the model: DIMM address, size,
node and slot from QEMU; blocks, node, state and zone from the guest; node
and system MemTotal deltas.  Nothing here hard-codes a block number.
"""

from __future__ import annotations

import os

import pytest

from harness.scenario import add, offline, online, remove, reset
from harness.testing import assert_passed, run_steps

pytestmark = [pytest.mark.vm]


def test_seed_session(memhp_vm, request) -> None:
    """The seed: pc, 6G over two nodes, 1G DIMM on node 1, onlined movable."""
    results = run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online_movable")], request)
    assert_passed(results)
    # the model, not this test, says where it lands; the guest agreed above
    blocks = [b for b in results[-1].observed["blocks"] if b["state"] == "online"]
    assert len(blocks) == (1 << 30) // results[-1].expected["block_size"]


@pytest.mark.memhp_machine(machine="q35")
def test_q35_seed_session(memhp_vm, request) -> None:
    """q35 splits low memory at 2G, so the same DIMM lands elsewhere than on pc."""
    assert_passed(run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0")], request))


def test_dimms_on_both_nodes(memhp_vm, request) -> None:
    """One DIMM per node; each node's MemTotal grows by its own DIMM only."""
    assert_passed(run_steps(memhp_vm, [
        add("dimm0:512M@0"), online("dimm0"), add("dimm1:1G@1"), online("dimm1"),
    ], request))


def test_several_dimm_sizes(memhp_vm, request) -> None:
    """128 MiB, 512 MiB, 1 GiB and 2 GiB DIMMs placed first-fit one after another."""
    steps = []
    for i, size in enumerate(("128M", "512M", "1G", "2G")):
        steps += [add(f"d{i}:{size}@{i % 2}"), online(f"d{i}")]
    assert_passed(run_steps(memhp_vm, steps, request))


@pytest.mark.memhp_machine(memory="2G,slots=4,maxmem=4G", numa="1G,1G")
def test_fill_every_slot(memhp_vm, request) -> None:
    """Four slots, four 512M DIMMs: every slot used, slots numbered as QEMU assigns."""
    steps = []
    for i in range(4):
        steps += [add(f"d{i}:512M@{i % 2}"), online(f"d{i}")]
    results = run_steps(memhp_vm, steps, request)
    assert_passed(results)
    assert sorted(d["slot"] for d in results[-1].observed["dimms"]) == list(range(4))


@pytest.mark.parametrize("policy", ["online_kernel", "online_movable", "online"])
def test_online_policy_zone(memhp_vm, request, policy: str) -> None:
    """online_kernel -> Normal, online_movable -> Movable, online -> kernel default."""
    results = run_steps(memhp_vm, [add("dimm0:512M@1"), online("dimm0", policy)], request)
    assert_passed(results)
    zones = {b["zone"] for b in results[-1].observed["blocks"]}
    assert zones == {b["zone"] for b in results[-1].expected["blocks"]}


@pytest.mark.parametrize("policy", ["online", "online_movable"])
def test_auto_online(memhp_vm_factory, request, policy: str) -> None:
    """memhp_default_state=... makes the kernel online new blocks by itself."""
    vm = memhp_vm_factory(append=(f"memhp_default_state={policy}",))
    results = run_steps(vm, [add("dimm0:1G@1")], request)
    assert_passed(results)
    assert {b["state"] for b in results[0].observed["blocks"]} == {"online"}


def test_remove_and_readd_loop(memhp_vm, request) -> None:
    """Hot-remove and re-add N times (MEMHP_LOOPS, default 3): totals return to
    the baseline each time and no block is left behind."""
    loops = int(os.environ.get("MEMHP_LOOPS", "3"))
    steps = []
    for _ in range(loops):
        steps += [add("dimm0:512M@1"), online("dimm0"), offline("dimm0"), remove("dimm0")]
    results = run_steps(memhp_vm, steps, request)
    assert_passed(results)
    for r in results:
        if r.action.startswith("remove"):
            assert r.observed["blocks"] == []


def test_reboot_keeps_dimms_at_same_addresses(memhp_vm, request) -> None:
    """system_reset with a DIMM plugged: it comes back at the same address and blocks."""
    results = run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0"), reset()], request)
    assert_passed(results)
    before, after = results[1].observed, results[2].observed
    assert before["dimms"] == after["dimms"]
    assert [b["number"] for b in before["blocks"]] == [b["number"] for b in after["blocks"]]
