"""VM lifecycle steps: reset, reboot, pause and resume.

- ``reset`` (QMP ``system_reset``) and ``reboot`` (``reboot -f`` inside the
  guest; QEMU sees a guest-triggered ``RESET``) both reboot the guest with
  the devices QEMU keeps across a reset.  Each device kind says what the
  reset did to its devices (``at_reset``: e.g. a pc-dimm unplug it cut
  short), what the booting kernel finds (``boot_memory``: the DIMMs the
  ACPI driver adds at boot, :meth:`KernelMemory.reboot`) and what happens
  once the guest runs (``after_boot``: a virtio-mem's driver plugs its
  request again).
- ``pause`` (``stop``) and ``resume`` (``cont``): what a device act does
  while paused is QEMU's at once and the guest's only after ``cont``; each
  kind's ``after_resume`` follows the guest then.  A reset while paused
  resets the machine, which boots at ``resume``.  While paused only QEMU's
  view is observed (:func:`harness.run.observe.observe_qemu_only`).

The device kinds' hooks are in ``harness/devices/<kind>/live.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.devices import KINDS, live_of
from harness.errors import HotplugRefused, UsageError
from harness.run.steps.base import PlanCheck, Step
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext
    from harness.run.state import RunState


@dataclass(frozen=True)
class _FlagStep(Step):
    """A step written ``KEY = true``, naming nothing."""

    text: ClassVar[str]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> Step:
        _, splats = cls.read_common(raw, where)
        if raw[cls.action] is not True:
            raise UsageError(f"{where}.{cls.action} must be true", value=raw[cls.action],
                             fix=f"write {cls.action} = true")
        return cls(expect_splat=splats)

    def describe(self) -> str:
        return self.text


def boot_memory(state: RunState) -> list[tuple[str, int, tuple[int, ...], int]]:
    """What the firmware hands the booting kernel: each kind's devices
    whose memory the kernel adds at boot (id, node, blocks, size)."""
    return [m for kind in KINDS for m in live_of(kind).boot_memory(state)]


def after_boot(ctx: StepContext) -> list[Mismatch]:
    """The guest booted again: each kind settles what the reset did, the
    kernel model reboots with what the firmware hands the kernel, then
    each kind follows the booted guest."""
    state = ctx.state
    for kind in KINDS:
        live_of(kind).at_reset(ctx)
    if state.workloads:  # their tmpfs and processes went with the old boot
        ctx.notes["workloads_ended"] = sorted(state.workloads)
        state.workloads.clear()
    state.km().reboot(boot_memory(state))
    mismatches: list[Mismatch] = []
    for kind in KINDS:
        mismatches += live_of(kind).after_boot(ctx)
    view = ctx.vm.guest.snapshot()
    state.set_baseline_totals({n: i.values["MemTotal"] for n, i in view.nodes.items()},
                              view.meminfo["MemTotal"])
    return mismatches


@dataclass(frozen=True)
class ResetStep(_FlagStep):
    """``reset = true``: QMP ``system_reset``; wait for the guest."""

    action: ClassVar[str] = "reset"
    text: ClassVar[str] = "system_reset"

    def advance(self, plan: PlanCheck) -> None:
        plan.pending, plan.reset_paused = [], plan.paused_at is not None

    def act(self, ctx: StepContext) -> list[Mismatch]:
        t0 = time.monotonic()
        if ctx.vm.paused:
            # The machine is reset now and boots at resume: the guest cannot
            # have answered an unplug requested while paused.
            ctx.vm.reset_paused()
            ctx.lat["system_reset_s"] = time.monotonic() - t0
            ctx.state.reset_while_paused = True
            return []
        ctx.vm.reboot()
        ctx.lat["reboot_s"] = time.monotonic() - t0
        return after_boot(ctx)


@dataclass(frozen=True)
class RebootStep(_FlagStep):
    """``reboot = true``: ``reboot -f`` inside the guest; wait until it is back."""

    action: ClassVar[str] = "reboot"
    text: ClassVar[str] = "reboot from inside the guest"
    guest: ClassVar[bool] = True

    def act(self, ctx: StepContext) -> list[Mismatch]:
        t0 = time.monotonic()
        event = ctx.vm.reboot_guest()
        ctx.lat["reboot_s"] = time.monotonic() - t0
        ctx.notes["reset_event"] = event.data
        return after_boot(ctx)


@dataclass(frozen=True)
class PauseStep(_FlagStep):
    """``pause = true``: QMP ``stop``; until ``resume`` only QEMU is observed."""

    action: ClassVar[str] = "pause"
    text: ClassVar[str] = "pause (QMP stop)"

    def check(self, plan: PlanCheck) -> None:
        if plan.paused_at is not None:
            raise UsageError(f"{plan.where} (pause): the VM is already paused (step "
                             f"{plan.paused_at + 1})", value=self.action,
                             fix="resume before pausing again")
        super().check(plan)

    def advance(self, plan: PlanCheck) -> None:
        plan.paused_at, plan.resized_paused, plan.added_paused = plan.index, [], set()

    def act(self, ctx: StepContext) -> list[Mismatch]:
        t0 = time.monotonic()
        ctx.vm.pause()
        ctx.lat["stop_s"] = time.monotonic() - t0
        return []


@dataclass(frozen=True)
class ResumeStep(_FlagStep):
    """``resume = true``: QMP ``cont``, then what the guest does with what
    changed while paused (each kind's ``after_resume``)."""

    action: ClassVar[str] = "resume"
    text: ClassVar[str] = "resume (QMP cont)"

    def check(self, plan: PlanCheck) -> None:
        if plan.paused_at is None:
            raise UsageError(f"{plan.where} (resume): the VM is not paused", value=self.action,
                             fix="pause before resume")
        super().check(plan)

    def advance(self, plan: PlanCheck) -> None:
        plan.paused_at, plan.pending, plan.reset_paused = None, [], False
        plan.resized_paused, plan.added_paused = [], set()

    def act(self, ctx: StepContext) -> list[Mismatch]:
        qmp = ctx.vm.qmp
        assert qmp is not None
        since = qmp.cursor()
        t0 = time.monotonic()
        ctx.vm.resume()
        ctx.lat["cont_s"] = time.monotonic() - t0
        mismatches: list[Mismatch] = []
        if ctx.state.reset_while_paused:
            ctx.lat["boot_s"] = ctx.lat.pop("cont_s")
            mismatches = after_boot(ctx)  # at_reset reads that the reset was paused
            ctx.state.reset_while_paused = False
        refused: list[HotplugRefused] = []
        for kind in KINDS:
            try:
                mismatches += live_of(kind).after_resume(ctx, since, t0)
            except HotplugRefused as exc:  # the others still follow the guest
                refused.append(exc)
        if refused:
            raise refused[0]
        return mismatches
