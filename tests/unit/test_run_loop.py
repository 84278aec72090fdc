"""The run loop's bookkeeping, driven with a fake VM (tests/unit/fake_vm.py):
what the runner records per step, what a refused eject does to the plan,
what a pause changes in the observation, and the steps' preconditions.
The model's answers themselves are checked against real QEMU and real
guests elsewhere; here they are the reference the loop must keep to."""

from __future__ import annotations

import pytest
from fake_vm import BLOCK, FakeVM

from harness.errors import UsageError
from harness.run.runner import Runner
from harness.run.steps import OnlineStep, PauseStep, PlanCheck, ResumeStep, check_plan
from harness.scenario import (
    Scenario,
    add,
    build_scenario,
    offline,
    online,
    pause,
    remove,
    reset,
    resume,
)


def _scenario(*steps: object) -> Scenario:
    return build_scenario(name="fake", machine="pc", memory="6G,slots=4,maxmem=16G",
                          numa="3G,3G", steps=list(steps))  # type: ignore[arg-type]


def _run(scenario: Scenario, **fake: object) -> tuple[Runner, FakeVM]:
    vm = FakeVM(scenario.machine, **fake)  # type: ignore[arg-type]
    runner = Runner(scenario, vm)  # type: ignore[arg-type]
    runner.run()
    return runner, vm


def test_each_step_is_recorded_with_the_model_and_the_views() -> None:
    s = _scenario(add("d0:1G@1"), online("d0"), offline("d0"), remove("d0"))
    runner, vm = _run(s)
    assert [r.action for r in runner.steps] == [
        "add d0 (1024 MiB, node 1)", "online_movable d0", "offline d0", "remove d0"]
    assert [r.passed for r in runner.steps] == [True] * 4, [
        [str(m) for m in r.mismatches] + [r.error] for r in runner.steps]
    d0 = s.prediction.steps[0].of("pc-dimm")[0]
    after_online = runner.steps[1]
    assert [b["number"] for b in after_online.expected["blocks"]] == list(d0.blocks)
    assert {b["zone"] for b in after_online.observed["blocks"]} == {"Movable"}
    assert after_online.expected["nodes"][1]["hotplug_online_bytes"] == 8 * BLOCK
    assert runner.state.ops_acted == 2 and runner.steps[3].expected["dimms"] == []
    assert vm.commands.count("query-memory-devices") == 4  # one observation per step


def test_an_eject_the_guest_refuses_keeps_the_dimm_in_the_plan() -> None:
    """remove a is refused: the op is dropped, the plan re-predicted with a
    still there, so b is placed after it, and the next steps pass."""
    s = _scenario(add("a:1G@0"), remove("a"), add("b:1G@1"), online("b"))
    runner, vm = _run(s, refuse_eject={"a"})
    refused = runner.steps[1]
    assert refused.error is not None and "refused to eject 'a'" in refused.error
    assert runner.state.dropped == {1}
    placed = {d.id: d.addr for d in runner.state.current("pc-dimm")}
    assert placed["b"] == placed["a"] + (1 << 30)  # planned: b where a was
    assert s.prediction.final.of("pc-dimm")[0].addr == placed["a"]
    assert [r.passed for r in (runner.steps[2], runner.steps[3])] == [True, True], [
        str(m) for r in runner.steps for m in r.mismatches]


def test_while_paused_only_qemu_is_observed_and_the_guest_adds_at_resume() -> None:
    s = _scenario(pause(), add("d:512M@1"), resume(), online("d", "online_kernel"))
    runner, _ = _run(s)
    paused_add = runner.steps[1]
    assert paused_add.observed["guest"].startswith("not observed: the VM is paused")
    assert [d["id"] for d in paused_add.observed["dimms"]] == ["d"]
    assert "blocks" not in paused_add.observed
    assert all(r.passed for r in runner.steps), [
        str(m) for r in runner.steps for m in r.mismatches]
    assert {b["zone"] for b in runner.steps[3].observed["blocks"]} == {"Normal"}


def test_an_ebusy_offline_is_an_answer_the_model_follows() -> None:
    s = _scenario(add("k:256M@1"), online("k", "online_kernel"), offline("k"))
    first = s.prediction.steps[0].of("pc-dimm")[0].blocks[0]
    runner, _ = _run(s, busy={first})
    last = runner.steps[2]
    assert last.passed, [str(m) for m in last.mismatches]
    states = {b["number"]: b["state"] for b in last.expected["blocks"]}
    assert states[first] == "online" and list(states.values()).count("offline") == 1


def test_preconditions_are_the_steps_own() -> None:
    spec = _scenario(add("a:1G@1")).machine
    plan = PlanCheck(spec)
    assert ResumeStep().allowed(plan) is False  # not paused
    PauseStep().advance(plan)
    assert OnlineStep("a").allowed(plan) is False  # needs the guest
    assert ResumeStep().allowed(plan) is True
    with pytest.raises(UsageError, match="the run ends paused"):
        check_plan(PlanCheck(spec), [pause()])
    with pytest.raises(UsageError, match="which no earlier step adds"):
        check_plan(PlanCheck(spec), [online("nope")])


def test_a_dimm_removed_while_paused_keeps_its_place_until_the_guest_ejects_it() -> None:
    """pause, remove a, add b, resume: QEMU places b beside a (a is QEMU's
    until the guest, resumed, ejects it), and the model now says so (memhp
    fuzz found the model placing b where a was)."""
    s = _scenario(add("a:256M@0"), pause(), remove("a"), add("b:256M@1"), resume(),
                  online("b"))
    assert s.timing.after == {1: 2}  # the removal takes effect after b's add
    [b] = s.prediction.final.of("pc-dimm")
    [a] = s.prediction.steps[0].of("pc-dimm")
    assert b.addr == a.addr + (256 << 20) and b.slot == 1
    runner, vm = _run(s)
    assert all(r.passed for r in runner.steps), [
        str(m) for r in runner.steps for m in r.mismatches]
    paused_add = runner.steps[3]
    assert {d["id"] for d in paused_add.observed["dimms"]} == {"a", "b"}
    assert [d.get("unplug_pending") for d in paused_add.expected["dimms"]] == [True, None]
    assert [d["id"] for d in runner.steps[4].expected["dimms"]] == ["b"]


def test_op_timing_of_paused_and_reset_removals() -> None:
    from harness.run.steps.timing import op_timing

    steps = [add("a:256M@0"), add("b:256M@0"), pause(), remove("a"), reset(), resume(),
             add("c:128M@1"), pause(), remove("b"), resume()]
    timing = op_timing(steps)
    # a: its request survives the paused reset; c's GPE ejects it, after c
    # b: removed while paused, ejected at resume (no add after it: its step)
    assert timing.after == {2: 3, 4: 4} and timing.never == frozenset()
    assert op_timing([add("a:256M@0"), pause(), remove("a"), reset(), resume()]).never == {1}



def test_op_timing_of_requests_a_paused_reset_leaves_set() -> None:
    """The GPEs of a pause with a reset are lost (the guest boots at resume):
    a removal after the reset waits for the next GPE like one before it, and
    a stale removal goes at the next running remove's GPE too (both found
    while checking memhp fuzz's finding on QEMU 7.2 and 10.0)."""
    from harness.run.steps.timing import op_timing

    after_reset = [add("x:128M@0"), pause(), reset(), remove("x"), resume(), add("y:256M@1")]
    assert op_timing(after_reset).after == {1: 2} and not op_timing(after_reset).never
    by_remove = [add("x:128M@0"), add("y:256M@1"), pause(), remove("x"), reset(), resume(),
                 remove("y")]
    assert op_timing(by_remove).after == {2: 3}  # x goes with y's GPE, after it


def test_a_stale_insert_shadows_its_dimms_eject_request() -> None:
    """pause, add d, reset, resume, remove d: d's insert event is still set
    in QEMU, so the scan of the remove's GPE sends Device Check and not
    Eject Request; the removal waits for the next GPE (memhp fuzz found the
    remove timing out on QEMU 7.2; checked on 10.0 too)."""
    from harness.run.steps.timing import op_timing

    stale = [pause(), add("d:128M@1"), reset(), resume(), remove("d")]
    assert op_timing(stale).never == {1}
    assert op_timing([*stale, add("e:256M@0")]).after == {1: 2}
    # an add after the reset in the same pause: its GPE is lost as well
    late = [pause(), reset(), add("d:128M@1"), resume(), remove("d"), add("e:256M@0")]
    assert op_timing(late).after == {1: 2}
    # without a reset the resume's GPE clears the insert: the removal is at its step
    plain = [pause(), add("d:128M@1"), resume(), remove("d")]
    assert op_timing(plain).after == {} and not op_timing(plain).never
    # any scan clears it: a running add before the removal
    cleared = [*stale[:4], add("e:256M@0"), remove("d")]
    assert op_timing(cleared).after == {} and not op_timing(cleared).never
    s = _scenario(*stale, add("e:256M@0"))
    [e] = s.prediction.final.of("pc-dimm")  # d gone after e's add, e beside it
    [d] = s.prediction.steps[0].of("pc-dimm")
    assert e.addr == d.addr + (128 << 20)


def test_removing_while_paused_a_device_added_in_the_same_pause_is_not_modelled() -> None:
    spec = _scenario(add("a:1G@1")).machine
    with pytest.raises(UsageError, match="added while paused"):
        check_plan(PlanCheck(spec), [pause(), add("b:256M@0"), remove("b"), resume()])
    check_plan(PlanCheck(spec), [pause(), add("b:256M@0"), resume(), pause(), remove("b"),
                                 resume()])
