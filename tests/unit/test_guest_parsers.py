"""Parsers on output captured from the real default guest (tests/data/guest/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import VMError
from harness.guest.parsers import (
    parse_boot_profile,
    parse_free_bytes,
    parse_meminfo,
    parse_memory_sysfs,
    parse_node_meminfo,
    parse_numactl_hardware,
)

DATA = Path(__file__).parent.parent / "data" / "guest"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_numactl_two_nodes() -> None:
    hw = parse_numactl_hardware(read("numactl-H.txt"))
    assert [n.node for n in hw.nodes] == [0, 1]
    assert hw.node(0).cpus == (0,) and hw.node(1).cpus == (1,)
    assert all(n.size_mib > n.free_mib > 0 for n in hw.nodes)
    assert hw.distances == ((10, 20), (20, 10))


def test_numactl_memoryless_node_fake() -> None:
    """Hand-written edge case (named as such): a node with CPUs and no memory."""
    text = ("available: 2 nodes (0-1)\nnode 0 cpus: 0\nnode 0 size: 5936 MB\n"
            "node 0 free: 5868 MB\nnode 1 cpus: 1\nnode 1 size: 0 MB\nnode 1 free: 0 MB\n")
    hw = parse_numactl_hardware(text)
    assert hw.node(1).size_mib == 0 and hw.node(1).cpus == (1,)


def test_free_busybox_matches_meminfo() -> None:
    free = parse_free_bytes(read("free-b.busybox.txt"))
    meminfo = parse_meminfo(read("proc-meminfo.txt"))
    assert free.total > 0 and free.swap_total == 0
    assert meminfo["MemTotal"] % 1024 == 0
    assert free.total <= meminfo["MemTotal"] + (1 << 30)  # captured at different moments


def test_procps_free_layout() -> None:
    """procps' header has buff/cache and available (layout of procps-ng 4.0)."""
    text = ("               total        used        free      shared  buff/cache   available\n"
            "Mem:      6237577216    71081984  6148325376     8564736    18169856  6037303296\n"
            "Swap:              0           0           0\n")
    free = parse_free_bytes(text)
    assert (free.total, free.buff_cache, free.available) == (6237577216, 18169856, 6037303296)


def test_node_meminfo() -> None:
    nodes = parse_node_meminfo(read("node-meminfo.txt"))
    assert set(nodes) == {0, 1}
    assert all(n.mem_total > 0 and n.mem_total % 1024 == 0 for n in nodes.values())


def test_memory_sysfs_blocks_states_zones_nodes() -> None:
    sysfs = parse_memory_sysfs(read("memory-sysfs.txt"))
    assert sysfs.block_size == 128 << 20 and sysfs.auto_online == "offline"
    online = [b for b in sysfs.blocks if b.state == "online"]
    assert online and all(b.node in (0, 1) for b in online)
    movable = [b for b in sysfs.blocks if b.zone == "Movable"]
    # the capture was taken after onlining one 1 GiB DIMM as movable on node 1
    assert len(movable) == (1 << 30) // sysfs.block_size and {b.node for b in movable} == {1}
    assert all(b.phys_index == b.number for b in sysfs.blocks)


@pytest.mark.parametrize("parser", [parse_numactl_hardware, parse_free_bytes, parse_meminfo,
                                    parse_memory_sysfs])
def test_garbage_is_a_clear_error(parser) -> None:
    with pytest.raises(VMError, match="cannot parse"):
        parser("sh: command not found\n")


def test_boot_profile_from_a_real_initcall_debug_dmesg() -> None:
    """Captured from the default guest booted with initcall_debug under TCG."""
    text = (DATA / "dmesg-initcall-debug.txt").read_text()
    profile = parse_boot_profile(text + "[    2.900000] memhp-init: modules loaded\n"
                                 "[    3.100000] MEMHP-READY 6.1.0\n")
    assert profile.marks == (("modules loaded", 2.9),)
    returned = [line for line in text.splitlines() if " returned " in line and "initcall" in line]
    assert len(profile.initcalls) == len(returned)
    durations = [s for _, s in profile.initcalls]
    assert durations == sorted(durations, reverse=True)
    name, slowest = profile.initcalls[0]
    assert f"initcall {name}+" in text
    assert slowest == max(int(line.split(" after ")[1].split()[0]) for line in returned) / 1e6
    assert profile.run_init_s is not None and 0 < profile.run_init_s < profile.ready_s == 3.1
    assert "virtio_net_driver_init" in {n for n, _ in profile.initcalls}  # module initcalls too


def test_boot_profile_needs_initcall_debug() -> None:
    with pytest.raises(VMError, match="initcall_debug"):
        parse_boot_profile("[    0.000000] Linux version 6.1\n")
