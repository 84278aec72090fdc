"""Negative scenarios: QEMU refuses, the model predicted the refusal, QEMU's
error is reported verbatim, and nothing changes in the guest."""

from __future__ import annotations

import pytest

from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import PlanRefused, QMPCommandError
from harness.model.predict import predict
from harness.model.spec import MachineSpec
from harness.run.steps import AddStep
from harness.scenario import add, online
from harness.testing import assert_passed, run_steps

pytestmark = [pytest.mark.vm]


def _spec(vm) -> MachineSpec:
    return vm.scenario.machine


def _guest_state(vm):
    view = vm.guest.snapshot()
    return ([(b.number, b.state) for b in view.sysfs.blocks], view.meminfo["MemTotal"])


def _refused(vm, plan: list[AddDimm], last: AddDimm) -> tuple[PlanRefused, QMPCommandError]:
    """Plug ``plan`` (accepted), then ``last``: model and QEMU must both refuse it."""
    if plan:  # plugged and checked like any step, so the guest has settled
        assert_passed(run_steps(vm, [AddStep(d) for d in plan]))
    with pytest.raises(PlanRefused) as predicted:
        predict(_spec(vm), [*plan, last])
    before = _guest_state(vm)
    memdevs = len(vm.qmp.execute("query-memdev"))
    with pytest.raises(QMPCommandError) as refused:
        vm.hot_add(last.id, last.size, last.node, last.addr)
    assert refused.value.desc  # QEMU's own words, verbatim
    assert _guest_state(vm) == before
    # the refused DIMM's backend was rolled back, so the VM stays usable
    assert len(vm.qmp.execute("query-memdev")) == memdevs
    return predicted.value, refused.value


@pytest.mark.memhp_machine(memory="2G,slots=2,maxmem=8G", numa="1G,1G")
def test_more_dimms_than_slots(memhp_vm) -> None:
    plan = [AddDimm("d0", 128 << 20, 0), AddDimm("d1", 128 << 20, 1)]
    model, qemu = _refused(memhp_vm, plan, AddDimm("d2", 128 << 20, 0))
    assert model.kind == "slots-exhausted"
    assert "slot" in qemu.desc


@pytest.mark.memhp_machine(memory="2G,slots=4,maxmem=3G", numa="1G,1G")
def test_exceeding_maxmem(memhp_vm) -> None:
    plan = [AddDimm("d0", 512 << 20, 0)]
    model, qemu = _refused(memhp_vm, plan, AddDimm("d1", 1 << 30, 1))
    assert model.kind == "maxmem-exceeded"
    assert "space" in qemu.desc or "maxmem" in qemu.desc


def test_duplicate_id(memhp_vm) -> None:
    plan = [AddDimm("d0", 128 << 20, 0)]
    model, qemu = _refused(memhp_vm, plan, AddDimm("d0", 128 << 20, 1))
    assert model.kind == "duplicate-id"
    assert "d0" in qemu.desc


def test_unknown_node(memhp_vm) -> None:
    model, qemu = _refused(memhp_vm, [], AddDimm("d0", 128 << 20, 5))
    assert model.kind == "unknown-node"
    assert "node" in qemu.desc


@pytest.mark.memhp_machine(memory="2G,slots=0,maxmem=0", numa="1G,1G")
def test_hotadd_without_slots_or_maxmem(memhp_vm) -> None:
    model, qemu = _refused(memhp_vm, [], AddDimm("d0", 128 << 20, 0))
    assert model.kind == "hotplug-disabled"
    assert qemu.desc == model.qemu_message and "slots" in qemu.desc


def test_non_block_multiple_dimm_and_next_placement(memhp_vm, request) -> None:
    """A 130M DIMM QEMU accepts but Linux cannot add (not a block multiple):
    the guest stays healthy and the model explains it; the next auto-placed
    DIMM lands off a block boundary too (QEMU aligns only to the backend's
    alignment) and is rejected as the model predicts; an explicit,
    block-aligned address avoids that."""
    spec = _spec(memhp_vm)
    odd = predict(spec, [AddDimm("odd", 130 << 20, 0)]).final.of("pc-dimm")[0]
    assert not odd.guest_accepts
    nxt = predict(spec, [AddDimm("odd", 130 << 20, 0), AddDimm("nxt", 128 << 20, 1)])
    bs = nxt.layout.block_size
    follow = nxt.final.of("pc-dimm")[1]
    assert follow.addr % bs != 0 and not follow.guest_accepts
    aligned_addr = -(-(follow.addr + follow.size) // bs) * bs
    results = run_steps(memhp_vm, [
        add("odd:130M@0"), add("nxt:128M@1"),
        add(f"fix:128M@1:{aligned_addr:#x}"), online("fix"),
    ], request)
    assert_passed(results)
    assert memhp_vm.shell.run(["true"]).status == 0  # guest healthy


@pytest.mark.memhp_machine(memory="4G,slots=8,maxmem=12G", numa="2G,2G")
def test_refusals_as_expected_steps_and_the_scenario_goes_on(memhp_vm, request) -> None:
    """tp-qemu's invalid_device_addr: five DIMMs in one VM, two refused (a
    misaligned address, more than maxmem), three accepted; each refusal is
    QEMU's own words as the model predicts them, and nothing changes."""
    steps = [add("a:512M@0"), add("b:512M@0:0x100001000", expect_refusal=""),
             add("c:1G@1"), add("d:9G@1", expect_refusal="not enough space"),
             add("e:256M@1"), online("c"), online("e")]
    results = run_steps(memhp_vm, steps, request)
    assert_passed(results)
    assert [d["id"] for d in results[-1].expected["dimms"]] == ["a", "c", "e"]
    assert sorted(d.id for d in memhp_vm.query_dimms()) == ["a", "c", "e"]


def test_an_expected_refusal_the_model_does_not_predict_is_bad_input() -> None:
    from harness.errors import UsageError
    from harness.scenario import build_scenario

    with pytest.raises(UsageError, match="predicts QEMU accepts it"):
        build_scenario(name="x", machine="pc", memory="4G,slots=8,maxmem=12G", numa="2G,2G",
                       steps=[add("a:512M@0", expect_refusal="")])
    with pytest.raises(UsageError, match="refuse with"):
        build_scenario(name="x", machine="pc", memory="4G,slots=8,maxmem=12G", numa="2G,2G",
                       steps=[add("a:13G@0", expect_refusal="no free slots")])
