"""The VM lifecycle around hotplug: live migration (and back), with the
model checked on both sides after every step.

Each test boots one VM and checks several things in it (suite time)."""

from __future__ import annotations

import pytest

from harness.scenario import add, migrate, offline, online, remove, workload
from harness.testing import assert_passed, make_runner

pytestmark = [pytest.mark.vm]


@pytest.mark.memhp_machine(memory="4G,slots=4,maxmem=8G", numa="2G,2G")
def test_migrate_ping_pong_with_dimms_on_two_nodes(memhp_vm) -> None:
    """Two DIMMs on two nodes and a workload on node 1; migrate, remove one
    DIMM on the destination, migrate back, and the remaining DIMM is still
    at its address with its blocks online; the workload's checksum survives
    both migrations.  After the removal the destination's layout has a hole
    first-fit would fill: only pinned addresses make the second migration
    work."""
    steps = [add("dimm0:512M@0"), online("dimm0", "online_movable"),
             add("dimm1:512M@1"), online("dimm1", "online_movable"),
             workload("w0", node=1, size="128M"),
             migrate(), offline("dimm0"), remove("dimm0"), migrate(),
             add("dimm2:256M@0"), online("dimm2", "online_movable")]
    first_pid = memhp_vm.pid
    runner = make_runner(memhp_vm, steps)
    results = runner.run()
    assert_passed(results)
    there, back = results[5], results[8]
    for r in (there, back):
        m = r.observed["migration"]
        assert m["transferred_bytes"] > 0 and m["total_time_ms"] > 0, m
        assert m["source_pid"] != m["destination_pid"]
        [w] = r.observed["workloads"]
        assert w["alive"] and w["intact"], w
    assert there.observed["migration"]["source_pid"] == first_pid
    # the source ended: its PID is gone (never leaked)
    import os
    for r in (there, back):
        with pytest.raises(ProcessLookupError):
            os.kill(r.observed["migration"]["source_pid"], 0)
    # dimm1 kept its address and slot through both migrations
    addr = {r.index: {d["id"]: (d["addr"], d["slot"]) for d in r.observed["dimms"]}
            for r in results}
    assert addr[4]["dimm1"] == addr[5]["dimm1"] == addr[8]["dimm1"]
    print("migration figures:", there.observed["migration"], back.observed["migration"])
