"""Memory-block steps: online (with a policy) and offline, over sysfs.

The kernel model predicts each ``state`` write's answer first; the guest's
answers are compared with it block by block.  Where the model allows the
kernel either answer (EBUSY offlining kernel memory), the model follows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.errors import UsageError
from harness.guest.splats import UNMOVABLE_PAGE_DUMP
from harness.model.kernel import Outcome
from harness.run.steps.base import PlanCheck, Step
from harness.toml_keys import expect
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.run.context import StepContext

Policy = Literal["online", "online_kernel", "online_movable"]
POLICIES: tuple[str, ...] = ("online", "online_kernel", "online_movable")


def check_policy(value: object, where: str) -> Policy:
    if value not in POLICIES:
        raise UsageError(f"{where}: online policy {value!r} unknown", value=value,
                         fix="use online, online_kernel or online_movable")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class _BlocksStep(Step):
    """A state write to every block of a DIMM."""

    guest: ClassVar[bool] = True
    id: str

    @property
    def subject(self) -> str:
        return self.id

    def check(self, plan: PlanCheck) -> None:
        if self.id in plan.vmems:
            raise UsageError(
                f"{plan.where}: {self.action} of virtio-mem {self.id!r} is not modelled "
                "(onlining its blocks lets the driver plug more, see "
                "harness.devices.virtio_mem.driver)", value=self.id,
                fix="choose the online policy with [guest].append memhp_default_state=")
        if self.id not in plan.known:
            raise UsageError(f"{plan.where}: {self.action} of {self.id!r}, which no earlier "
                             "step adds", value=self.id, fix="add the device first")
        super().check(plan)

    def _write(self, ctx: StepContext, want: str, predicted: list[Outcome]) -> list[Mismatch]:
        t1 = time.monotonic()
        blocks = [p.number for p in predicted]
        mism = write_states(ctx, blocks, want, predicted)
        ctx.lat[f"{self.action}_s"] = time.monotonic() - t1
        return mism


@dataclass(frozen=True)
class OnlineStep(_BlocksStep):
    """``online = "ID"`` with ``policy`` (online | online_kernel | online_movable)."""

    action: ClassVar[str] = "online"
    keys: ClassVar[frozenset[str]] = frozenset({"policy"})
    policy: Policy = "online_movable"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> OnlineStep:
        _, splats = cls.read_common(raw, where)
        value = expect(raw, "online", str, where)
        return cls(value, check_policy(raw.get("policy", "online_movable"), where),
                   expect_splat=splats)

    def describe(self) -> str:
        return f"{self.policy} {self.id}"

    def to_table(self) -> dict[str, Any]:
        return self._with_common({"online": self.id, "policy": self.policy})

    def act(self, ctx: StepContext) -> list[Mismatch]:
        blocks = list(ctx.state.placed("pc-dimm", self.id).blocks)
        return self._write(ctx, self.policy, ctx.state.km().online(blocks, self.policy))


@dataclass(frozen=True)
class OfflineStep(_BlocksStep):
    """``offline = "ID"``."""

    action: ClassVar[str] = "offline"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> OfflineStep:
        _, splats = cls.read_common(raw, where)
        return cls(expect(raw, "offline", str, where), expect_splat=splats)

    def describe(self) -> str:
        return f"offline {self.id}"

    def to_table(self) -> dict[str, Any]:
        return self._with_common({"offline": self.id})

    def act(self, ctx: StepContext) -> list[Mismatch]:
        blocks = list(ctx.state.placed("pc-dimm", self.id).blocks)
        return self._write(ctx, "offline", ctx.state.km().offline(blocks))


def write_states(ctx: StepContext, blocks: list[int], want: str,
                 predicted: list[Outcome]) -> list[Mismatch]:
    """Write ``want`` to each block; compare every answer with the model's."""
    if want == "offline":
        changes = ctx.vm.guest.offline_blocks(blocks)
    else:
        changes = ctx.vm.guest.online_blocks(blocks, want)  # type: ignore[arg-type]
    got = {c.number: c for c in changes}
    out: list[Mismatch] = []
    for p in predicted:
        c = got.get(p.number)
        observed = "no answer" if c is None else ("ok" if c.ok else
                                                  (c.errno_name or c.error or "error"))
        expected = "ok" if p.ok else (p.errno or "error")
        if observed == expected:
            continue
        if p.may_fail is not None and observed == p.may_fail:
            # The kernel may answer this (e.g. EBUSY offlining kernel
            # memory): the block stays as it was, and the model follows;
            # the page the kernel dumps to say why is part of that answer.
            ctx.state.km().sync(p.number, "online", p.zone)
            ctx.expects.append(UNMOVABLE_PAGE_DUMP)
            continue
        out.append(Mismatch(f"write {want}", f"memory{p.number}", expected,
                            observed if c is None or c.ok else f"{observed} ({c.error})",
                            "guest"))
    return out
