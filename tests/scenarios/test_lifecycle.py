"""The VM lifecycle around hotplug: live migration (and back), with the
model checked on both sides after every step.

Each test boots one VM and checks several things in it (suite time)."""

from __future__ import annotations

import pytest

from harness.scenario import (
    add,
    migrate,
    offline,
    online,
    pause,
    reboot,
    remove,
    reset,
    resume,
    workload,
)
from harness.testing import assert_passed, make_runner

pytestmark = [pytest.mark.vm]


@pytest.mark.long_running
@pytest.mark.memhp_machine(memory="4G,slots=4,maxmem=8G", numa="2G,2G")
def test_migrate_ping_pong_with_dimms_on_two_nodes(memhp_vm, monkeypatch) -> None:
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
             pause(), add("dimm2:256M@0"), migrate(), resume(),
             online("dimm2", "online_movable")]
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
    assert addr[4]["dimm1"] == addr[5]["dimm1"] == addr[8]["dimm1"] == addr[11]["dimm1"]
    paused_migration = results[11]
    assert paused_migration.observed["run_state"] == "paused"
    assert paused_migration.observed["migration"]["transferred_bytes"] > 0
    assert "dimm2" in {b["id"] for b in paused_migration.observed["dimms"]}
    assert results[12].observed["blocks"], "the resumed destination added dimm2"
    print("migration figures:", there.observed["migration"], back.observed["migration"])
    _failed_migration_leaves_the_source(memhp_vm, monkeypatch)


@pytest.mark.long_running
@pytest.mark.memhp_cold_boot  # the cold-plugged DIMMs' boot-time state is under test
@pytest.mark.memhp_machine(memory="4G,slots=4,maxmem=8G", numa="2G,2G",
                           coldplug=("cold0:512M@0", "cold1:256M@1"))
def test_coldplug_pause_reboot_and_unplug_then_reset(memhp_vm) -> None:
    """One VM through the rest of the lifecycle:

    - two DIMMs cold-plugged on the command line: placed by the model before
      any hot-add, offline after boot (Debian 6.1's boot policy); cold0 is
      onlined, offlined and removed like a hot-added DIMM;
    - paused: a hot-add is QEMU's at once, the removal of cold1 leaves it in
      QEMU, the guest is not observed; after resume the guest has added the
      new DIMM and ejected cold1;
    - reboot from inside the guest: the DIMM comes back at the same blocks,
      offline again (boot policy);
    - unplug, then reset, deterministically (paused, so the guest cannot
      answer first): the DIMM survives the reset with its eject request set
      in QEMU, and the next hot-add's GPE makes the guest eject it; the new
      DIMM was placed while the old one was still there;
    - remove with wait = false, then reset (running): whichever way the
      race went, QEMU's events name it and the model predicts that branch.
    """
    steps = [online("cold0", "online_movable"), offline("cold0"), remove("cold0"),
             pause(), add("hot0:256M@0"), remove("cold1"), resume(),
             online("hot0", "online_movable"), reboot(),
             pause(), remove("hot0"), reset(), resume(), add("hot1:256M@1"),
             remove("hot1", wait=False), reset()]
    runner = make_runner(memhp_vm, steps)
    boot = runner.scenario.predict().boot.of("pc-dimm")
    assert [d.id for d in boot] == ["cold0", "cold1"]
    results = runner.run()
    assert_passed(results)
    by = {r.index: r for r in results}
    # cold-plugged blocks were offline at boot: the model said so, the guest agreed
    cold_blocks = {n for d in boot for n in d.blocks}
    assert cold_blocks <= {b["number"] for b in by[0].observed["blocks"]}
    # paused: QEMU's view only; hot0 is QEMU's at once, cold1 still QEMU's
    for i in (3, 4, 5):
        assert by[i].observed["guest"].startswith("not observed"), by[i].observed
        assert by[i].observed["run_state"] == "paused"
    assert {d["id"] for d in by[5].observed["dimms"]} == {"cold1", "hot0"}
    assert {d["id"] for d in by[6].observed["dimms"]} == {"hot0"}
    # in-guest reboot: QEMU saw the guest reset; hot0's blocks back, offline
    assert by[8].observed["reset_event"]["guest"] is True
    before = [b["number"] for b in by[7].observed["blocks"]]
    after = by[8].observed["blocks"]
    assert [b["number"] for b in after] == before and {b["state"] for b in after} == {"offline"}
    # reset while paused: the machine is in prelaunch until resume
    assert by[11].observed["run_state"] == "prelaunch"
    assert "still set" in by[12].observed["pending_unplugs_at_reset"]["hot0"]
    assert {d["id"] for d in by[12].observed["dimms"]} == {"hot0"}
    # hot1's GPE carried out hot0's eject; hot1 had been placed above hot0
    assert by[13].observed["stale_unplugs_ejected"] == ["hot0"]
    [hot1] = by[13].observed["dimms"]
    assert hot1["addr"] > min(d["addr"] for d in by[12].observed["dimms"])
    outcome = by[15].observed["pending_unplugs_at_reset"]["hot1"]
    print("unplug-then-reset outcome (running guest):", outcome)


def test_requests_a_paused_reset_leaves_set_in_qemu(memhp_vm) -> None:
    """A pause with a reset: the guest boots at resume and its GPEs are
    lost, so what the pause asked stays set in QEMU's ACPI memory hotplug
    device (found by memhp fuzz on QEMU 7.2):

    - a DIMM added in it keeps its insert event: the GPE of its removal
      finds that first (Device Check, ``_OST`` source 1) and its eject
      request waits; the next hot-add's GPE ejects it;
    - a removal after the reset waits for the next GPE the same way.
    """
    steps = [pause(), add("d:128M@1"), reset(), resume(), remove("d"), add("e:256M@0"),
             pause(), reset(), remove("e"), resume(), add("f:128M@1")]
    runner = make_runner(memhp_vm, steps)
    results = runner.run()
    assert_passed(results)
    by = {r.index: r for r in results}
    assert "shadowed the eject request" in by[4].observed["ejects_shadowed"][0]
    assert {x["id"] for x in by[4].observed["dimms"]} == {"d"}  # QEMU still has it
    assert by[5].observed["stale_unplugs_ejected"] == ["d"]
    assert {x["id"] for x in by[5].observed["dimms"]} == {"e"}
    assert {x["id"] for x in by[9].observed["dimms"]} == {"e"}  # resumed: e still there
    assert by[10].observed["stale_unplugs_ejected"] == ["e"]
    ost = [ev for ev in memhp_vm.qmp.events(0) if ev.name == "ACPI_DEVICE_OST"
           and ev.data["info"].get("device") == "d"]
    assert [ev.data["info"]["source"] for ev in ost][:1] == [1]  # Device Check first


def _failed_migration_leaves_the_source(vm, monkeypatch) -> None:
    """A destination that lacks a DIMM cannot take the source's RAM: QEMU's
    migration fails, memhp raises, the destination QEMU is ended and its
    work dir removed, and the source runs on as before."""
    from harness.errors import VMError
    from harness.qemu import migration

    twins = []
    real_twin = type(vm).incoming_twin

    def record(self, name, devices):
        twins.append(real_twin(self, name, devices))
        return twins[-1]

    monkeypatch.setattr(type(vm), "incoming_twin", record)
    monkeypatch.setattr(migration, "destination_devices", lambda devices, reported: ())
    pid = vm.pid
    with pytest.raises(VMError, match="migration failed"):
        migration.migrate_vm(vm)
    [twin] = twins
    assert twin.proc.poll() is not None and twin.workdir is None
    assert vm.pid == pid
    assert vm.execute("query-status")["status"] == "running"
    assert vm.ssh(["true"]).status == 0
