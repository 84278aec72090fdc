"""A workload on node 1 survives offline, online and removal of a movable
DIMM: its data migrates off the DIMM intact (MD5 checked after every step),
and the loop that keeps dirtying it stays alive."""

from __future__ import annotations

import pytest

from harness.scenario import add, offline, online, remove, workload
from harness.testing import assert_passed, make_runner

pytestmark = [pytest.mark.vm]


# Node 1 boots with NODE1_BOOT of memory and gets a 512M movable DIMM; the
# workload is 1.5 x NODE1_BOOT, so part of it must live in the DIMM.  Small on
# purpose: under TCG the guest fills and MD5-sums about 25-50 MiB/s, and the
# sum is taken after every step (192M: about 4 s a check, 640M: 13 s).
NODE1_BOOT = 128 << 20


@pytest.mark.long_running
@pytest.mark.memhp_machine(memory="4G,slots=4,maxmem=8G",
                           numa=f"{4096 - (NODE1_BOOT >> 20)}M,{NODE1_BOOT >> 20}M")
def test_workload_survives_offline_online_remove(memhp_vm) -> None:
    """Data preferred on node 1 beyond what node 1's boot memory could hold
    lives partly in the DIMM, so offlining it has to migrate pages for real."""
    steps = [add("dimm0:512M@1"), online("dimm0", "online_movable"),
             workload("w0", node=1, size=f"{NODE1_BOOT * 3 // 2 >> 20}M"),
             offline("dimm0"), online("dimm0", "online_movable"), offline("dimm0"),
             remove("dimm0")]
    runner = make_runner(memhp_vm, steps)
    results = runner.run()
    assert_passed(results)
    after_fill = results[2].observed["workloads"][0]
    assert after_fill["alive"] and after_fill["intact"]
    # more shmem on node 1 than its boot memory could hold: the DIMM held data
    assert after_fill["shmem_by_node"]["1"] > NODE1_BOOT
    for r in results[3:]:
        [w] = r.observed["workloads"]
        assert w["alive"] and w["intact"], (r.action, w)
