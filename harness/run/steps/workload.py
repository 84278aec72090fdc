"""The workload step: start one; every later step checks them all."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.errors import UsageError
from harness.guest.workload import (
    CHECK_SCRIPT,
    START_SCRIPT,
    STOP_SCRIPT,
    WorkloadSpec,
    parse_check,
)
from harness.run.steps.base import PlanCheck, Step
from harness.toml_keys import expect
from harness.units import parse_size, size_text
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.qemu.vm import VM
    from harness.run.context import StepContext
    from harness.run.state import RunState


@dataclass(frozen=True)
class WorkloadStep(Step):
    """``workload = "ID"`` with ``node`` and ``size``: random data in tmpfs
    on that node, kept dirty, its checksum and liveness checked after every
    later step."""

    action: ClassVar[str] = "workload"
    keys: ClassVar[frozenset[str]] = frozenset({"node", "size"})
    guest: ClassVar[bool] = True
    workload: WorkloadSpec

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> WorkloadStep:
        _, splats = cls.read_common(raw, where)
        wid = expect(raw, "workload", str, where)
        node = expect(raw, "node", int, where) if "node" in raw else 0
        size = parse_size(expect(raw, "size", str, where)) if "size" in raw else 256 << 20
        return cls(WorkloadSpec(wid, node, size), expect_splat=splats)

    @property
    def subject(self) -> str:
        return self.workload.id

    def check(self, plan: PlanCheck) -> None:
        """A node the machine has, an id used once, and a size below what the
        node can ever hold by then (its boot memory and every device the plan
        adds there: the data sits in tmpfs bound to that node)."""
        super().check(plan)
        w = self.workload
        where = f"{plan.where} (workload {w.id!r})"
        nodes = len(plan.spec.node_boot_bytes())
        if w.id in plan.workloads:
            raise UsageError(f"{where}: the id is used by an earlier workload", value=w.id,
                             fix="give each workload its own id")
        if not 0 <= w.node < nodes:
            raise UsageError(f"{where}: node {w.node} does not exist (the machine has "
                             f"{nodes} node(s))", value=w.node,
                             fix=f"use a node from 0 to {nodes - 1}")
        if w.size >= plan.room[w.node]:
            raise UsageError(f"{where}: {w.size >> 20} MiB is not below the "
                             f"{plan.room[w.node] >> 20} MiB node {w.node} can hold by then "
                             "(boot memory and the devices added there)", value=w.size,
                             fix="make the workload smaller than the node's memory")

    def advance(self, plan: PlanCheck) -> None:
        plan.workloads.add(self.workload.id)

    def to_table(self) -> dict[str, Any]:
        w = self.workload
        return self._with_common({"workload": w.id, "node": w.node, "size": size_text(w.size)})

    def describe(self) -> str:
        w = self.workload
        return f"workload {w.id} ({w.size >> 20} MiB on node {w.node})"

    def act(self, ctx: StepContext) -> list[Mismatch]:
        w = self.workload
        if w.id in ctx.state.workloads:
            raise UsageError(f"workload {w.id!r} is already running", value=w.id,
                             fix="give every workload its own id")
        t0 = time.monotonic()
        ctx.vm.shell.run_script(START_SCRIPT, args=[w.id, str(w.node), str(w.size >> 20)],
                                timeout=ctx.vm.timeouts.s("command") * 10)
        ctx.lat["workload_start_s"] = time.monotonic() - t0
        ctx.state.workloads[w.id] = w
        return []


def check_workloads(vm: VM, state: RunState) -> tuple[list[dict[str, Any]], list[Mismatch]]:
    """Every running workload must be alive with its content intact."""
    states, mism = [], []
    for wid in state.workloads:
        res = vm.shell.run_script(CHECK_SCRIPT, args=[wid], check=False,
                                  timeout=vm.timeouts.s("command") * 10)
        st = parse_check(wid, res.stdout)
        states.append(st.to_json())
        if not st.alive:
            mism.append(Mismatch("workload alive", wid, True, False, "guest"))
        if not st.intact:
            mism.append(Mismatch("workload md5", wid, st.want or "?", st.have or "?",
                                 "guest"))
    return states, mism


def stop_workloads(vm: VM, state: RunState) -> None:
    for wid in list(state.workloads):
        vm.shell.run_script(STOP_SCRIPT, args=[wid], check=False)
        del state.workloads[wid]
