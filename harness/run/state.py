"""The state of a run between steps: pure bookkeeping, no I/O.

What the model expects after each step follows from the plan's operations
(predicted once, :attr:`harness.scenario.Scenario.prediction`) and from
what the run saw happen to them: an operation QEMU or the guest did not
carry out (a removal the guest refused, one a reset left pending) is
dropped, one that took effect later than its step is moved
(:attr:`RunState.op_after`), and only then is the plan predicted again.
The kernel side is :class:`harness.model.kernel.KernelMemory`, fed by the
acts.  Each device kind keeps its own run state in :attr:`RunState.kinds`
(``harness.devices.<kind>.live.KindState``).

Unit tests drive it directly, or through :class:`harness.run.runner.Runner`
with a fake VM (tests/unit/test_run_state.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.errors import UsageError
from harness.guest.workload import WorkloadSpec
from harness.model.kernel import KernelMemory, KernelPolicy
from harness.model.predict import Prediction, predict
from harness.model.spec import MachineSpec, Operation
from harness.verify import ExpectedBlock


@dataclass
class RunState:
    spec: MachineSpec
    ops: tuple[Operation, ...]  # the plan's operations, in step order
    prediction: Prediction  # of the operations as they took effect so far
    block_size: int
    ops_acted: int = 0  # operations QEMU took (the next one's index)
    dropped: set[int] = field(default_factory=set)  # ops that did not take effect
    # an op that took effect later than its step: op index -> the op index
    # after which it happened (an unplug request a reset left pending in
    # QEMU is carried out at the next hot-add's GPE)
    op_after: dict[int, int] = field(default_factory=dict)
    # ops whose time has come but which wait for an event (a device_del
    # while paused: the guest ejects after resume)
    waiting: set[int] = field(default_factory=set)
    policy: KernelPolicy | None = None
    kernel: KernelMemory | None = None
    boot_blocks: set[int] = field(default_factory=set)
    baseline_nodes: dict[int, int] = field(default_factory=dict)
    baseline_total: int = 0
    workloads: dict[str, WorkloadSpec] = field(default_factory=dict)
    reset_while_paused: bool = False  # the guest boots at the next resume
    kinds: dict[str, Any] = field(default_factory=dict)  # device kind -> its run state

    @classmethod
    def of_plan(cls, spec: MachineSpec, ops: Sequence[Operation], prediction: Prediction,
                after: dict[int, int] | None = None, never: Iterable[int] = ()) -> RunState:
        """The state before the first step; ``prediction`` is of ``ops`` in the
        order they take effect (``after``, ``never``: the plan's
        :class:`harness.run.steps.timing.OpTiming`)."""
        return cls(spec, tuple(ops), prediction, prediction.layout.block_size,
                   dropped=set(never), op_after=dict(after or {}))

    # -- the plan as it took effect -------------------------------------------
    def effective_ops(self) -> list[int]:
        """The operations (indices) in the order they took effect."""
        keep = [i for i in range(len(self.ops)) if i not in self.dropped]
        return sorted(keep, key=lambda i: (self.op_after[i], 1) if i in self.op_after
                      else (i, 0))

    def repredict(self) -> None:
        spec = replace(self.spec, block_size=self.block_size)
        self.prediction = predict(spec, [self.ops[i] for i in self.effective_ops()])

    def drop(self, index: int) -> None:
        """Operation ``index`` did not take effect (now, or at all)."""
        self.dropped.add(index)
        self.repredict()

    def ops_done(self) -> int:
        """How many of the effective operations have taken effect."""
        done = self.ops_acted
        return sum(1 for i in self.effective_ops()
                   if i < done and self.op_after.get(i, i) < done and i not in self.waiting)

    def current(self, kind: str) -> tuple[Any, ...]:
        """The model's devices of ``kind`` now."""
        done = self.ops_done()
        return (self.prediction.steps[done - 1] if done else self.prediction.boot).of(kind)

    def placed(self, kind: str, device_id: str) -> Any:
        for d in self.current(kind):
            if d.id == device_id:
                return d
        what = "DIMM" if kind == "pc-dimm" else kind
        raise UsageError(f"{what} {device_id!r} is not plugged at this step", value=device_id)

    def kind_of(self, device_id: str) -> str | None:
        """The kind of the device ``device_id`` names: plugged now, or added
        by the plan (cold-plugged or by a step)."""
        done = self.ops_done()
        for d in (self.prediction.steps[done - 1] if done else self.prediction.boot).devices:
            if d.id == device_id:
                return str(d.kind)
        for op in (*self.spec.coldplug, *self.ops):
            if op.id == device_id and hasattr(op, "kind"):
                return str(op.kind)
        return None

    # -- the kernel side --------------------------------------------------------
    def km(self) -> KernelMemory:
        if self.kernel is None:
            raise UsageError("take_baseline() must run before the steps")
        return self.kernel

    def expected_blocks(self) -> list[ExpectedBlock]:
        if self.kernel is None:
            return []
        k = self.kernel
        return [ExpectedBlock(b.number, b.node, b.state, b.zone, k.managed_bytes(b.number),
                              b.valid_zones) for b in k.block_view()]

    def online_bytes_by_node(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for b in self.expected_blocks():
            if b.state == "online":
                out[b.node] = out.get(b.node, 0) + (b.managed_bytes or 0)
        return out

    def set_baseline_totals(self, node_totals: dict[int, int], mem_total: int) -> None:
        """The guest's totals less what the model's hot-added blocks hold."""
        online = self.online_bytes_by_node()
        self.baseline_nodes = {n: total - online.get(n, 0) for n, total in node_totals.items()}
        self.baseline_total = mem_total - sum(online.values())

    def expected_nodes(self) -> list[dict[str, int]]:
        online = self.online_bytes_by_node()
        return [{"node": n, "bytes": self.baseline_nodes.get(n, 0) + online.get(n, 0),
                 "hotplug_online_bytes": online.get(n, 0)}
                for n in sorted(set(self.baseline_nodes) | set(online))]
