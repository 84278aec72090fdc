"""Memory device steps: add (of any kind, ``device =``), resize, remove.

Each hands its act to the device kind (:func:`harness.devices.live_of`):
the step knows the plan, the kind knows QEMU and the guest.  A step QEMU
must refuse (``expect_refusal``) is checked the same way for every kind
(:mod:`harness.run.refusal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.devices import KINDS, live_of, ops_of
from harness.devices.pc_dimm.ops import AddDimm, parse_dimm_option
from harness.devices.virtio_mem.ops import AddVirtioMem, ResizeVirtioMem
from harness.errors import UsageError
from harness.model.spec import Operation, RemoveDevice
from harness.run.refusal import act_refused
from harness.run.steps.base import PlanCheck, Step
from harness.toml_keys import expect, refusal_key, splat_patterns, unknown
from harness.units import parse_size, size_text
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext

DEFAULT_KIND = "pc-dimm"


def _vmem_running(plan: PlanCheck, step: Step, device_id: str, wait: bool = True) -> None:
    """virtio-mem devices are added and removed with the guest running (the
    driver plugs; memhp waits on the guest's blocks)."""
    if plan.paused_at is not None or not wait:
        raise UsageError(f"{plan.where} ({step.action}): a virtio-mem is added and removed "
                         "with the guest running (its driver acts, memhp waits on it)",
                         value=device_id, fix="resume first, and leave wait at its default")


@dataclass(frozen=True)
class AddStep(Step):
    """``add = "ID:SIZE@NODE[:ADDR]"``: hot-add a device of kind ``device``."""

    action: ClassVar[str] = "add"
    op: AddDimm | AddVirtioMem
    # QEMU is expected to refuse it ("" = any refusal, else a regex of its words)
    expect_refusal: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> AddStep:
        device = raw.get("device", DEFAULT_KIND)
        kind = device if device in KINDS else DEFAULT_KIND
        unknown(raw, {"add", "expect_splat", "expect_refusal", *ops_of(kind).ADD_KEYS}, where)
        refusal = refusal_key(raw, where)
        splats = splat_patterns(raw.get("expect_splat", []), f"{where}.expect_splat")
        value = expect(raw, "add", str, where)
        if device not in KINDS:
            raise UsageError(f"{where}.device {device!r} is not a memory device memhp plugs",
                             value=device, fix=f"use one of {', '.join(KINDS)}")
        op = ops_of(kind).parse_add(raw, parse_dimm_option(value), where)
        return cls(op, refusal, expect_splat=splats)

    @property
    def subject(self) -> str:
        return self.op.id

    def model_op(self) -> Operation:
        return self.op

    @property
    def is_model_op(self) -> bool:
        return self.expect_refusal is None

    def check(self, plan: PlanCheck) -> None:
        super().check(plan)
        if self.op.kind == "virtio-mem":
            _vmem_running(plan, self, self.op.id)

    def advance(self, plan: PlanCheck) -> None:
        if plan.paused_at is not None and self.expect_refusal is None:
            plan.added_paused.add(self.op.id)
        if self.expect_refusal is None:
            plan.known.add(self.op.id)
            if self.op.kind == "virtio-mem":
                plan.vmems.add(self.op.id)
        if 0 <= self.op.node < len(plan.room):
            plan.room[self.op.node] += self.op.size

    def describe(self) -> str:
        return self.op.describe()

    def to_table(self) -> dict[str, Any]:
        return self._with_common(ops_of(self.op.kind).to_table(self.op))

    def act(self, ctx: StepContext) -> list[Mismatch]:
        live = live_of(self.op.kind)
        if self.expect_refusal is not None:
            return act_refused(ctx, lambda: live.plug(ctx, self.op))
        return live.add(ctx, self.op)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RemoveStep(Step):
    """``remove = "ID"``: hot-remove a device, whatever its kind; ``wait =
    false`` only sends ``device_del`` (a reset must follow)."""

    action: ClassVar[str] = "remove"
    keys: ClassVar[frozenset[str]] = frozenset({"wait", "expect_refusal"})
    id: str
    wait: bool = True
    expect_refusal: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> RemoveStep:
        refusal, splats = cls.read_common(raw, where)
        value = expect(raw, "remove", str, where)
        wait = expect(raw, "wait", bool, where) if "wait" in raw else True
        return cls(value, wait, refusal, expect_splat=splats)

    @property
    def subject(self) -> str:
        return self.id

    def model_op(self) -> Operation:
        return RemoveDevice(self.id)

    @property
    def is_model_op(self) -> bool:
        return self.expect_refusal is None

    def check(self, plan: PlanCheck) -> None:
        super().check(plan)
        if self.id in plan.vmems:
            _vmem_running(plan, self, self.id, self.wait)
        if self.id in plan.added_paused and self.expect_refusal is None:
            # QEMU holds both requests for one slot (insert and eject) until
            # the guest's MSCN scan at resume; what the guest then does with
            # a device it never saw is not modelled (found by memhp fuzz).
            raise UsageError(f"{plan.where} (remove): {self.id!r} was added while paused and "
                             "the guest has not seen it yet; removing it before resume is not "
                             "modelled", value=self.id, fix="resume before removing it")

    def advance(self, plan: PlanCheck) -> None:
        if plan.paused_at is not None or not self.wait:
            plan.pending.append(self.id)

    def describe(self) -> str:
        return f"remove {self.id}" + ("" if self.wait else " (device_del only)")

    def to_table(self) -> dict[str, Any]:
        return self._with_common({"remove": self.id} | ({} if self.wait else {"wait": False}))

    def act(self, ctx: StepContext) -> list[Mismatch]:
        if self.expect_refusal is not None:
            return act_refused(ctx, lambda: ctx.vm.execute("device_del", {"id": self.id},
                                                            phase="hotplug"))
        kind = ctx.state.kind_of(self.id) or DEFAULT_KIND
        return live_of(kind).remove(ctx, self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ResizeStep(Step):
    """``resize = "ID"`` with ``requested``: a virtio-mem's requested-size."""

    action: ClassVar[str] = "resize"
    keys: ClassVar[frozenset[str]] = frozenset({"requested", "expect_refusal"})
    id: str
    requested: int
    expect_refusal: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> ResizeStep:
        refusal, splats = cls.read_common(raw, where)
        value = expect(raw, "resize", str, where)
        if "requested" not in raw:
            raise UsageError(f"{where}: resize needs requested", value=raw,
                             fix='e.g. requested = "3G"')
        requested = parse_size(expect(raw, "requested", str, where),
                               what=f"{where}.requested", allow_zero=True)
        return cls(value, requested, refusal, expect_splat=splats)

    @property
    def subject(self) -> str:
        return self.id

    def model_op(self) -> Operation:
        return ResizeVirtioMem(self.id, self.requested)

    @property
    def is_model_op(self) -> bool:
        return self.expect_refusal is None

    def check(self, plan: PlanCheck) -> None:
        if self.id not in plan.known:
            raise UsageError(f"{plan.where}: resize of {self.id!r}, which no earlier step "
                             "adds", value=self.id, fix="add the device first")
        if self.id not in plan.vmems:
            raise UsageError(f"{plan.where}: resize of {self.id!r}, which is not a "
                             "virtio-mem device", value=self.id,
                             fix='add it with device = "virtio-mem"')
        super().check(plan)

    def advance(self, plan: PlanCheck) -> None:
        if plan.paused_at is not None and self.expect_refusal is None:
            plan.resized_paused.append(self.id)

    def describe(self) -> str:
        return f"resize {self.id} to {self.requested >> 20} MiB"

    def to_table(self) -> dict[str, Any]:
        return self._with_common({"resize": self.id, "requested": size_text(self.requested)})

    def act(self, ctx: StepContext) -> list[Mismatch]:
        live = live_of(ctx.state.kind_of(self.id) or "virtio-mem")
        if self.expect_refusal is not None:
            return act_refused(ctx, lambda: ctx.vm.resize_virtio_mem(self.id, self.requested))
        return live.resize(ctx, self)  # type: ignore[no-any-return]
