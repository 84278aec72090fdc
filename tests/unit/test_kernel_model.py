"""The kernel side of the model (harness.model.kernel): pure rules, checked
here on zone layouts read from a real 6.1 guest (pc, 6G over two nodes),
and against real 6.1/6.12 guests by tests/scenarios/test_kernel_policy.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fakes import SEED_ZONES

from harness.guest.parsers import parse_policy_dump
from harness.model.kernel import (
    KernelMemory,
    KernelPolicy,
    ZoneInfo,
    policy_from_guest,
    rules_for,
)

DATA = Path(__file__).parent.parent / "data" / "guest"
MiB = 1 << 20
BLOCK = 128 * MiB
BLOCK_PAGES = BLOCK // 4096
DIMM_BLOCKS = (56, 57, 58, 59, 60, 61, 62, 63)  # a 1 GiB DIMM at 7 GiB


def memory(**kw: object) -> KernelMemory:
    policy = KernelPolicy(**({"release": "6.1.0-56-cloud-amd64", "zones": SEED_ZONES} | kw))
    return KernelMemory(policy, BLOCK)


def test_policy_dump_from_a_real_guest() -> None:
    dump = parse_policy_dump((DATA / "policy-6.1-movable-node-after-online.txt").read_text())
    assert dump.release == "6.1.0-56-cloud-amd64"
    assert dump.params["memmap_on_memory"] == "Y"
    zones = {(n, z): f for n, z, f in dump.zones}
    assert zones[(1, "Movable")] == {"spanned": 32768, "present": 32768, "managed": 32256,
                                     "cma": 0, "start_pfn": 1835008}
    assert "start_pfn" not in zones[(0, "Normal")]  # unpopulated: not printed
    policy = policy_from_guest(dump.release, dump.auto_online_blocks, dump.params,
                               dump.cmdline, ())
    assert policy.movable_node and policy.memmap_on_memory == "Y"
    assert policy.auto_online is None and policy.version == (6, 1)


def test_policy_dump_refuses_an_empty_zoneinfo() -> None:
    text = "@@release\n6.1.0\n@@auto\noffline\n@@params\n@@cmdline\n\n@@zoneinfo\n@@end\n"
    with pytest.raises(Exception, match="zoneinfo"):
        parse_policy_dump(text)


def test_online_picks_the_kernel_zone_beyond_boot_memory() -> None:
    km = memory()
    assert km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30) == []  # stays offline
    view = {b.number: b for b in km.block_view()}
    assert view[56].state == "offline"
    assert view[56].valid_zones == ("Normal", "Movable")
    out = km.online([56], "online")
    assert out[0].ok and out[0].zone == "Normal"


def test_movable_node_makes_online_movable() -> None:
    km = memory(movable_node=True)
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    assert km.block_view()[0].valid_zones == ("Movable", "Normal")
    assert {o.zone for o in km.online(DIMM_BLOCKS, "online")} == {"Movable"}


def test_zone_spans_decide_online() -> None:
    """default_zone_for_pfn() inherits the zone whose span covers the block."""
    km = memory()
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    km.online([56, 58], "online_movable")
    assert km.online([57], "online")[0].zone == "Movable"  # inside Movable's span only
    km.offline([57])
    assert km.online([61], "online")[0].zone == "Normal"  # beyond both: kernel zone
    # Normal now spans up to block 61 and Movable 56..58: block 57 lies in
    # both, so the kernel zone wins (no movable_node).
    assert km.online([57], "online")[0].zone == "Normal"
    with_movable_node = memory(movable_node=True)
    with_movable_node.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    with_movable_node.online([56, 58], "online_movable")
    with_movable_node.online([61], "online_kernel")
    assert with_movable_node.online([57], "online")[0].zone == "Movable"


def test_offline_at_span_edge_shrinks_the_zone() -> None:
    km = memory()
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    km.online([56], "online_movable")
    km.offline([56])  # Movable is empty again
    assert km.online([56], "online")[0].zone == "Normal"


def test_writes_to_a_block_in_that_state_answer_einval() -> None:
    km = memory(auto_online_blocks="online")
    auto = km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    assert all(o.ok and o.zone == "Normal" for o in auto)
    again = km.online([56], "online_kernel")[0]
    assert (again.ok, again.errno) == (False, "EINVAL")
    first = km.offline([57])[0]
    assert first.ok and first.may_fail == "EBUSY"  # kernel memory: may be busy
    second = km.offline([57])[0]
    assert (second.ok, second.errno) == (False, "EINVAL")


def test_offline_of_movable_memory_cannot_be_busy() -> None:
    km = memory()
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    km.online(DIMM_BLOCKS, "online_movable")
    assert all(o.ok and o.may_fail is None for o in km.offline(DIMM_BLOCKS))


def test_auto_movable_within_ratio_is_movable() -> None:
    km = memory(online_policy="auto-movable", auto_online_blocks="online")
    assert {o.zone for o in km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)} == {"Movable"}


def test_auto_movable_beyond_ratio_is_normal() -> None:
    # 1 GiB movable > 10 % of ~6 GiB kernel-early memory.
    km = memory(online_policy="auto-movable", auto_online_blocks="online",
                auto_movable_ratio=10)
    assert {o.zone for o in km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)} == {"Normal"}


def test_auto_movable_numa_aware_needs_kernel_memory_on_the_node() -> None:
    zones = tuple(z for z in SEED_ZONES if z.node == 0) + (ZoneInfo(1, "Normal", 0, 0, 0, 0),)
    km = memory(online_policy="auto-movable", zones=zones)
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    assert km.online([56], "online")[0].zone == "Normal"
    unaware = memory(online_policy="auto-movable", zones=zones, auto_movable_numa_aware=False)
    unaware.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    assert unaware.online([56], "online")[0].zone == "Movable"


def test_auto_movable_keeps_a_dimm_in_one_zone() -> None:
    """A static memory group with kernel pages onlines the rest kernel too."""
    km = memory(online_policy="auto-movable")
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    km.online([56], "online_kernel")
    assert km.online([57], "online")[0].zone == "Normal"


def test_memmap_on_memory_6_1_only_for_one_block_dimms() -> None:
    km = memory(memmap_on_memory="Y")
    km.hot_add("small", 0, (64,), BLOCK)
    km.hot_add("big", 1, DIMM_BLOCKS, 1 << 30)
    assert km.managed_bytes(64) == BLOCK - 2 * MiB
    assert km.managed_bytes(56) == BLOCK


@pytest.mark.parametrize("mode", ["Y", "force"])
def test_memmap_on_memory_6_12_for_every_block(mode: str) -> None:
    km = memory(memmap_on_memory=mode, release="6.12.95+deb12-amd64")
    km.hot_add("big", 1, DIMM_BLOCKS, 1 << 30)
    assert {km.managed_bytes(n) for n in DIMM_BLOCKS} == {BLOCK - 2 * MiB}


def test_memmap_off_keeps_whole_blocks() -> None:
    km = memory(release="6.12.95")
    km.hot_add("big", 1, DIMM_BLOCKS, 1 << 30)
    assert km.managed_bytes(56) == BLOCK


def test_reboot_readds_plugged_dimms_with_the_policy() -> None:
    km = memory(auto_online_blocks="online_movable")
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    km.offline(DIMM_BLOCKS)
    km.reboot([("d0", 1, DIMM_BLOCKS, 1 << 30)])
    assert {(b.state, b.zone) for b in km.block_view()} == {("online", "Movable")}


def test_remove_forgets_the_blocks_and_their_zone() -> None:
    km = memory()
    km.hot_add("d0", 1, DIMM_BLOCKS, 1 << 30)
    km.online(DIMM_BLOCKS, "online_movable")
    km.remove("d0")
    assert km.block_view() == []
    km.hot_add("d1", 1, DIMM_BLOCKS, 1 << 30)
    assert km.online([56], "online")[0].zone == "Normal"


@pytest.mark.parametrize("version, source", [((5, 15), (6, 1)), ((7, 4), (7, 3)),
                                             ((8, 0), (7, 3)), ((6, 1), None), ((7, 3), None)])
def test_versions_outside_the_read_sources_are_extrapolated(
        version: tuple[int, int], source: tuple[int, int] | None) -> None:
    """Never refused: the nearest rules read, flagged (None within 6.1..7.3)."""
    rules = rules_for(version)
    assert rules.extrapolated_from == source
    nearest = source or version
    assert rules.per_block_memmap == rules_for(nearest).per_block_memmap
    policy = KernelPolicy(release=f"{version[0]}.{version[1]}.0-fake-amd64", zones=())
    assert KernelMemory(policy, BLOCK).rules.extrapolated_from == source


def test_rule_sets_by_version() -> None:
    assert not rules_for((6, 1)).per_block_memmap
    assert not rules_for((6, 5)).per_block_memmap
    assert rules_for((6, 6)).per_block_memmap
    assert rules_for((7, 2)).per_block_memmap


def test_bad_policy_values_are_refused() -> None:
    with pytest.raises(ValueError, match="auto_online_blocks"):
        replace(KernelPolicy(), auto_online_blocks="sideways")  # type: ignore[arg-type]


def test_extrapolation_note_names_the_rules_in_force() -> None:
    from harness.model.kernel.rules import extrapolation_note

    assert extrapolation_note("memory hotplug", (7, 3), None) is None
    note = extrapolation_note("memory hotplug", (7, 4), rules_for((7, 4)).extrapolated_from)
    assert note is not None and "7.4 is newer" in note and "rules of 7.3" in note
    assert "behind" in note
