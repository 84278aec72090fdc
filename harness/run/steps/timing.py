"""When a plan's operations take effect in QEMU, when that is not at
their own step (pure: from the steps alone)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.run.steps.base import Step
from harness.run.steps.device import AddStep, RemoveStep
from harness.run.steps.lifecycle import PauseStep, ResetStep, ResumeStep


@dataclass(frozen=True)
class OpTiming:
    """When a plan's operations take effect, when that is not their step:
    ``after`` (op index -> the op index after which it takes effect) and
    ``never`` (op indices that do not take effect in this plan)."""

    after: dict[int, int] = field(default_factory=dict)
    never: frozenset[int] = frozenset()

    def order(self, count: int) -> list[int]:
        keep = [i for i in range(count) if i not in self.never]
        return sorted(keep, key=lambda i: (self.after[i], 1) if i in self.after else (i, 0))


def op_timing(steps: Sequence[Step]) -> OpTiming:
    """A ``device_del`` while paused is QEMU's request, not yet the guest's
    eject: the DIMM keeps its slot and range until the guest, resumed,
    ejects it, after every add made while paused (found by memhp fuzz: an
    add after a paused remove was placed by QEMU beside the DIMM being
    removed).  A reset while paused leaves the request set in QEMU, and
    the next pc-dimm hot-add's GPE has the guest eject it, after that add
    (:mod:`harness.devices.pc_dimm.live`); without such an add it never
    goes.  A ``wait = false`` removal on a running guest races the reset
    that follows it: it counts at its step, and the run follows the race."""
    after: dict[int, int] = {}
    paused = False
    pending: list[int] = []
    stale: list[int] = []
    op = -1
    for step in steps:
        if isinstance(step, PauseStep):
            paused = True
        elif isinstance(step, ResumeStep):
            after.update(dict.fromkeys(pending, op))
            paused, pending = False, []
        elif isinstance(step, ResetStep) and paused:
            stale, pending = stale + pending, []
        if not step.is_model_op:
            continue
        op += 1
        if isinstance(step, RemoveStep) and paused:
            pending.append(op)
        elif isinstance(step, AddStep) and step.op.kind == "pc-dimm" and stale and not paused:
            after.update(dict.fromkeys(stale, op))
            stale = []
    return OpTiming(after, frozenset(stale + pending))
