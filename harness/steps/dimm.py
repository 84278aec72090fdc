"""The pc-dimm device's steps: add (and an add QEMU must refuse), remove.

Act over QMP, then tell the kernel model what the guest now has: the
DIMM's blocks (auto-onlined by the policy), or nothing (a refused add), or
the DIMM gone (a removal; one the guest refuses keeps it, as the guest
left its blocks).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, HotplugRefused, QMPCommandError, VMError
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner

# mm/page_isolation.c: a failed isolation for offlining dumps the culprit
# (dump_page(page, "unmovable page")); it is how the kernel explains EBUSY.
UNMOVABLE_PAGE_DUMP = r"page dumped because: unmovable page"


def act_add(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    assert step.add is not None
    if step.expect_refusal is not None:
        return act_refused_add(runner, step, lat)
    a = step.add
    t0 = time.monotonic()
    runner.vm.hot_add(a.id, a.size, a.node, a.addr)
    lat["device_add_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    if runner.vm.paused:
        # QEMU has it now (query-memory-devices lists it); the guest learns
        # of it from the GPE when its vCPUs run again (lifecycle.act_resume).
        runner.pending_adds.append(a.id)
        return []
    eject_stale(runner, lat)
    return guest_adds(runner, a.id, lat)


def eject_stale(runner: Runner, lat: dict[str, float]) -> None:
    """After a hot-add's GPE reached the running guest: the stale eject
    requests it carries out (see :func:`_stale_ejected_now`)."""
    for dimm_id, request in _stale_ejected_now(runner):
        t1 = time.monotonic()
        runner.vm.wait_unplugged(request)
        lat[f"stale_unplug_{dimm_id}_s"] = time.monotonic() - t1
        runner.km().remove(dimm_id)


def _stale_ejected_now(runner: Runner) -> list[tuple[str, Any]]:
    """An eject request a reset left set in QEMU is found by the guest's
    ``MSCN`` scan on this hot-add's GPE: the removal takes effect now,
    after this add (placed while the old DIMM was still there)."""
    if not runner.stale_unplugs:
        return []
    add_index = sum(1 for s in runner.steps_done if s.is_model_op) - 1
    out = []
    for dimm_id, (request, index) in runner.stale_unplugs.items():
        runner.dropped_removes.discard(index)
        runner.op_after[index] = add_index
        out.append((dimm_id, request))
    runner.stale_unplugs.clear()
    runner.repredict()
    runner.step_notes["stale_unplugs_ejected"] = [d for d, _ in out]
    return out


def guest_adds(runner: Runner, dimm_id: str, lat: dict[str, float]) -> list[Mismatch]:
    """The guest adds the DIMM's blocks (onlined by its policy): tell the
    kernel model and wait until the guest shows them."""
    d = runner.dimm(dimm_id)
    if not d.guest_accepts:
        return []
    outcomes = runner.km().hot_add(d.id, d.node, d.blocks, d.size)
    t1 = time.monotonic()
    from harness.session import wait_blocks

    wait_blocks(runner.vm, list(d.blocks), present=True,
                state="online" if outcomes and all(o.ok for o in outcomes) else None)
    lat["blocks_visible_s"] = time.monotonic() - t1
    return []


def act_refused_add(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    """An add the scenario expects QEMU to refuse: QEMU's words must be the
    model's, and nothing changes (the scenario goes on)."""
    assert step.add is not None
    a = step.add
    predicted = runner.refusals[runner.scenario.steps.index(step)]
    words = getattr(predicted, "qemu_message", "") or str(predicted)
    t0 = time.monotonic()
    try:
        runner.vm.hot_add(a.id, a.size, a.node, a.addr)
    except QMPCommandError as exc:
        lat["device_add_s"] = time.monotonic() - t0
        runner.steps_done.append(step)
        if exc.desc != words:
            return [Mismatch("refusal", a.id, words, exc.desc, "qemu")]
        return []
    runner.steps_done.append(step)
    # QEMU took it: the plan no longer holds; say so and stop trusting it.
    raise VMError(f"QEMU accepted {step.describe()}, which the model says it refuses "
                  f"({words!r})", phase="model")


def act_remove(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    d = runner.dimm(step.dimm)
    if runner.vm.paused or not step.wait:
        # device_del only: the DIMM is the guest's to eject (after resume),
        # or the next reset's to decide (lifecycle.act_resume, act_reset).
        index = sum(1 for s in runner.steps_done if s.is_model_op)
        t0 = time.monotonic()
        request = runner.vm.request_unplug(step.dimm)
        lat["device_del_s"] = time.monotonic() - t0
        runner.pending_unplugs[step.dimm] = (request, d, index)
        runner.steps_done.append(step)
        return []
    t0 = time.monotonic()
    try:
        runner.vm.hot_remove(step.dimm)
    except HotplugRefused:
        # The DIMM stays: later steps are predicted with it still plugged,
        # and its blocks as the guest left them (an ACPI eject that fails
        # re-onlines what it had offlined).
        index = sum(1 for s in runner.steps_done if s.is_model_op)
        runner.dropped_removes.add(index)
        runner.step_expects.append(UNMOVABLE_PAGE_DUMP)
        runner.steps_done.append(step)
        runner.repredict()
        with contextlib.suppress(HarnessError):
            runner.adopt_guest_blocks(step.dimm)
        raise
    lat["unplug_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    runner.km().remove(step.dimm)
    return []
