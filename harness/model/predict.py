"""The model of a plan: QEMU's start-up refusals, then each operation
applied by its device kind, then what every node holds.

:func:`predict` checks the machine (its start-up refusals are the
machine's, :mod:`harness.machines`), places the cold-plugged DIMMs in
command-line order (QEMU realizes ``-device`` options one by one once the
machine and its device-memory region exist -- softmmu/vl.c
``qemu_create_cli_devices()`` v7.2.0, system/vl.c v10.0.0; a refused one
has ``step`` None and ``coldplug`` True), then hands each operation to its
device kind (:mod:`harness.devices`: an add or resize to ``op.kind``, a
removal to the kind of the device it names).  The kinds share one
:class:`harness.devices.base.Plan`: one id space, one device-memory
region, one ``maxmem`` room.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.devices import model_of
from harness.errors import PlanRefused, refuse
from harness.model.layout import Layout
from harness.model.plan import Plan
from harness.model.spec import MachineSpec, Operation, RemoveDevice


@dataclass(frozen=True)
class NodeTotals:
    node: int
    boot_bytes: int
    hotplug_bytes: int  # bytes of DIMMs the guest accepts, once online

    @property
    def bytes_after(self) -> int:
        return self.boot_bytes + self.hotplug_bytes

    def to_json(self) -> dict[str, int]:
        return {"node": self.node, "boot_bytes": self.boot_bytes,
                "hotplug_bytes": self.hotplug_bytes, "bytes_after": self.bytes_after}


@dataclass(frozen=True)
class StepPrediction:
    """The memory devices after one operation (or at boot), any kind,
    sorted by address, and each node's totals."""

    op: Operation | None
    devices: tuple[Any, ...]  # harness.devices.base.Placed
    nodes: tuple[NodeTotals, ...]

    def of(self, kind: str) -> tuple[Any, ...]:
        """The devices of one kind ("pc-dimm", "virtio-mem"), by address."""
        return tuple(d for d in self.devices if d.kind == kind)


@dataclass(frozen=True)
class Prediction:
    spec: MachineSpec
    layout: Layout
    boot: StepPrediction
    steps: tuple[StepPrediction, ...]

    @property
    def final(self) -> StepPrediction:
        return self.steps[-1] if self.steps else self.boot

    def to_json(self) -> dict[str, Any]:
        final = self.final
        lay = self.layout
        return {
            "machine": self.spec.machine,
            "machine_type": self.spec.machine_name,
            "qemu_version": ".".join(map(str, self.spec.qemu_version)),
            "rules": {
                "machine_version": ".".join(map(str, self.spec.rules.machine_version)),
                "size_check": self.spec.rules.size_check,
                "enforce_amd_1tb_hole": self.spec.rules.enforce_amd_1tb_hole,
                "oldest_machine": _dotted(self.spec.rules.oldest_machine),
                "extrapolated_from": _dotted(self.spec.rules.extrapolated_from),
                "sources": list(self.spec.rules.sources),
            },
            "cpu": {"vendor": self.spec.cpu.vendor, "phys_bits": self.spec.cpu.phys_bits,
                    "model": self.spec.cpu.model},
            "layout": {
                "below_4g": lay.below_4g, "above_4g": lay.above_4g,
                "device_base": lay.device_base, "device_size": lay.device_size,
                "boot_mem_end": lay.boot_mem_end, "dimm_align": lay.dimm_align,
                "above_4g_start": lay.above_4g_start, "max_used_gpa": lay.max_used_gpa,
                "why": lay.why,
            },
            "block_size": lay.block_size,
            "dimms": [d.to_json() for d in final.of("pc-dimm")],
            "virtio_mem": [v.to_json() for v in final.of("virtio-mem")],
            "nodes": [n.to_json() for n in final.nodes],
        }


def _dotted(version: tuple[int, int] | None) -> str | None:
    return None if version is None else f"{version[0]}.{version[1]}"


def _totals(spec: MachineSpec, devices: Sequence[Any]) -> tuple[NodeTotals, ...]:
    return tuple(
        NodeTotals(n, boot, sum(d.hotplug_bytes for d in devices if d.node == n))
        for n, boot in enumerate(spec.node_boot_bytes())
    )


def _apply(plan: Plan, op: Operation) -> None:
    if not isinstance(op, RemoveDevice):
        model_of(op.kind).apply(plan, op)
        return
    device = plan.find(op.id)
    if device is None:
        raise refuse("unknown-dimm", f"no DIMM {op.id!r} to remove",
                     f"Device '{op.id}' not found", value=op.id, limit=None,
                     fix="remove a DIMM an earlier step added")
    model_of(device.kind).unplug(plan, device)


def _coldplug(plan: Plan) -> None:
    for cold_op in plan.spec.coldplug:
        try:
            model_of(cold_op.kind).apply(plan, cold_op)
        except PlanRefused as exc:
            exc.step = None  # type: ignore[attr-defined]
            exc.coldplug = True  # type: ignore[attr-defined]
            raise


def predict(spec: MachineSpec, ops: Sequence[Operation]) -> Prediction:
    """Predict every step of ``ops`` on ``spec``; raises PlanRefused (with
    ``.step``) at the first operation QEMU would refuse."""
    machine = spec.machine_model
    layout = machine.layout(spec)
    machine.check_coldplug(spec)
    machine.check_start(spec, layout)
    plan = Plan(spec, layout)
    _coldplug(plan)

    def snapshot(op: Operation | None) -> StepPrediction:
        ordered = tuple(sorted(plan.devices, key=lambda d: d.addr))
        return StepPrediction(op, ordered, _totals(spec, ordered))

    boot = snapshot(None)
    steps: list[StepPrediction] = []
    for i, op in enumerate(ops):
        try:
            _apply(plan, op)
        except PlanRefused as exc:
            exc.step = i  # type: ignore[attr-defined]
            raise
        steps.append(snapshot(op))
    return Prediction(spec, layout, boot, tuple(steps))
