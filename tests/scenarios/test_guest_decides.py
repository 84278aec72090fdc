"""Where the guest kernel decides: removal of online memory, and memory in use.

Documented behaviour (Documentation/admin-guide/mm/memory-hotplug.rst):
ZONE_MOVABLE memory can be offlined by migrating its pages away; memory in
ZONE_NORMAL holding unmovable kernel allocations cannot be offlined (EBUSY),
and an ACPI eject of it fails, which QEMU reports as ACPI_DEVICE_OST with a
failure status and no DEVICE_DELETED.
"""

from __future__ import annotations

import time

import pytest

from harness.errors import HotplugRefused
from harness.scenario import add, offline, online, remove
from harness.testing import assert_passed, make_runner

pytestmark = [pytest.mark.vm, pytest.mark.needs_config("MEMORY_HOTREMOVE")]


def test_remove_of_online_movable_dimm_completes(memhp_vm, request) -> None:
    """device_del with the blocks still online (movable): the guest offlines
    them itself and the removal completes; totals return to the baseline."""
    runner = make_runner(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online_movable"),
                                    remove("dimm0")])
    assert_passed(runner.run())
    assert runner.steps[-1].observed["blocks"] == []


@pytest.mark.long_running
@pytest.mark.memhp_machine(numa="6G,0")
def test_offline_movable_memory_in_use_migrates(memhp_vm) -> None:
    """Data in a movable DIMM (node 1 has no other memory, so it must be
    there) survives offlining: the kernel migrates it to node 0."""
    steps = [add("dimm0:1G@1"), online("dimm0", "online_movable"), offline("dimm0")]
    runner = make_runner(memhp_vm, steps)
    runner.take_baseline()
    assert_passed([runner.run_step(0, steps[0]), runner.run_step(1, steps[1])])
    fill = ("dd if=/dev/urandom of=/dev/shm/f bs=1M count=256 2>/dev/null && "
            "md5sum /dev/shm/f && grep MemUsed /sys/devices/system/node/node1/meminfo")
    before = memhp_vm.ssh(["numactl", "--membind=1", "sh", "-c", fill], timeout=300).stdout
    used_kb = int(before.split("MemUsed:")[1].split()[0])
    assert used_kb >= 256 * 1024  # the file really lives in the DIMM
    assert_passed([runner.run_step(2, steps[2])])
    after = memhp_vm.ssh(["md5sum", "/dev/shm/f"]).stdout
    assert after.split()[0] == before.split()[0]


@pytest.mark.memhp_machine(numa="6G,0")
def test_kernel_memory_in_normal_zone_refuses_offline_and_unplug(memhp_vm) -> None:
    """online_kernel, then unmovable kernel allocations (tmpfs dentries and
    inodes from a CPU of node 1, whose only memory is the DIMM): offlining
    fails with EBUSY, device_del is refused promptly and the DIMM stays."""
    runner = make_runner(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online_kernel")])
    assert_passed(runner.run())
    blocks = runner.state.expected_blocks()
    memhp_vm.ssh(["numactl", "--cpunodebind=1", "--membind=1", "bash", "-c",
                  "mkdir -p /tmp/x && cd /tmp/x && mkdir d{1..40000}"], timeout=300)
    start = time.monotonic()
    with pytest.raises(HotplugRefused) as info:
        memhp_vm.hot_remove("dimm0")
    assert time.monotonic() - start < 30  # reported at once, not after a timeout
    assert info.value.status not in (0, 0x84)
    assert any(d.id == "dimm0" for d in memhp_vm.query_dimms())
    assert "Offline failed" in memhp_vm.guest.dmesg()
    results = memhp_vm.guest.offline_blocks([b.number for b in blocks])
    busy = [r for r in results if not r.ok]
    assert busy and all(r.errno_name == "EBUSY" for r in busy)
