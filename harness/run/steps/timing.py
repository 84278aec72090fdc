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
    """When each ``device_del`` of a DIMM takes effect: at the next memory
    hotplug GPE the guest handles, as QEMU's ACPI memory hotplug device
    and its ``MSCN`` scan have it (:mod:`harness.devices.pc_dimm.live`):

    * a ``device_del`` while running raises the GPE at once: the removal
      counts at its step (``wait = false`` races a reset that follows it:
      the run follows the race);
    * while paused it is QEMU's request, not yet the guest's eject: the
      DIMM keeps its slot and range until the guest, resumed, ejects it,
      after every add made while paused (found by memhp fuzz);
    * a reset in the pause: the guest boots at resume and its ACPI init
      clears the GPE status (ACPICA ``acpi_ev_create_gpe_info_blocks()``,
      drivers/acpi/acpica/evgpeblk.c: "Clear any pending GPE events within
      this register", in 6.1 as in 6.12), so every request of that pause
      stays set in QEMU (``is_removing``, ``is_inserting``:
      hw/acpi/memory_hotplug.c has no reset hook that clears them):
      a removal waits for the next GPE (a running pc-dimm add or remove),
      or never goes;
    * an insert event left so (``is_inserting``) shadows the eject request
      of its slot in the next scan (Device Check, not Eject Request: the
      scan's ``If``/``Else``): that DIMM's removal waits for one more GPE
      (found by memhp fuzz: pause, add, reset, resume, remove timed out).
    virtio-mem devices are not ACPI-hotplugged: their removals count at
    their step (or at resume)."""
    after: dict[int, int] = {}
    paused = reset_in_pause = False
    pending: list[tuple[int, str]] = []  # removals requested in this pause
    added: list[str] = []  # DIMMs added in this pause
    stale: list[int] = []  # removals whose request is set in QEMU, no GPE yet
    stale_inserts: set[str] = set()
    vmems: set[str] = set()
    op = -1

    def gpe(at: int, removals: list[tuple[int, str]], own_step: bool) -> None:
        """One MSCN scan, after op ``at``: stale removals go; each removal
        of this GPE goes unless a stale insert shadows it."""
        nonlocal stale, stale_inserts
        after.update(dict.fromkeys(stale, at))
        stale = []
        for index, dimm in removals:
            if dimm in stale_inserts:
                stale.append(index)
            elif not own_step:
                after[index] = at
        stale_inserts = set()

    for step in steps:
        if isinstance(step, PauseStep):
            paused, reset_in_pause = True, False
        elif isinstance(step, ResumeStep):
            vm_pending = [i for i, d in pending if d in vmems]
            after.update(dict.fromkeys(vm_pending, op))
            dimms = [(i, d) for i, d in pending if d not in vmems]
            if reset_in_pause:
                stale += [i for i, _ in dimms]
                stale_inserts |= set(added)
            elif dimms or added:
                gpe(op, dimms, own_step=False)
            paused, reset_in_pause, pending, added = False, False, [], []
        elif isinstance(step, ResetStep) and paused:
            reset_in_pause = True
        if not step.is_model_op:
            continue
        op += 1
        if isinstance(step, AddStep) and step.op.kind != "pc-dimm":
            vmems.add(step.op.id)
        elif isinstance(step, AddStep):
            if paused:
                added.append(step.op.id)
            else:
                gpe(op, [], own_step=True)
        elif isinstance(step, RemoveStep):
            if paused:
                pending.append((op, step.id))
            elif step.id not in vmems:
                gpe(op, [(op, step.id)], own_step=True)
    return OpTiming(after, frozenset(stale + [i for i, _ in pending]))
