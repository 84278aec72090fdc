"""Random step sequences, only where each step may come (pure, seeded).

A sequence is drawn step by step from the step kinds' own preconditions
(:meth:`harness.run.steps.base.Step.allowed` over a
:class:`~harness.run.steps.base.PlanCheck`) and the model: an add or
resize QEMU refuses becomes a step that expects QEMU's refusal (its words
are checked); a step that names a device picks one the model has plugged
at that point.  The same seed gives the same sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from harness.devices.pc_dimm.ops import AddDimm
from harness.devices.virtio_mem.ops import AddVirtioMem
from harness.errors import PlanRefused, UsageError
from harness.guest.workload import WorkloadSpec
from harness.model.predict import StepPrediction, predict
from harness.model.spec import MachineSpec
from harness.run.steps import (
    AddStep,
    MigrateStep,
    OfflineStep,
    OnlineStep,
    PauseStep,
    PlanCheck,
    RebootStep,
    RemoveStep,
    ResetStep,
    ResizeStep,
    ResumeStep,
    Step,
    WorkloadStep,
)
from harness.units import GiB, MiB

OFFLINE = "memhp_default_state=offline"
# The kernel's hotplug policies a sequence runs under: its command line.
POLICIES: dict[str, tuple[str, ...]] = {
    "manual": (OFFLINE,),
    "auto-online": ("memhp_default_state=online",),
    "auto-kernel": ("memhp_default_state=online_kernel",),
    "auto-movable-state": ("memhp_default_state=online_movable",),
    "movable_node": (OFFLINE, "movable_node"),
    "auto-movable": (OFFLINE, "memory_hotplug.online_policy=auto-movable"),
    "memmap_on_memory": (OFFLINE, "memory_hotplug.memmap_on_memory=1"),
}
# Step kinds a sequence draws from (the slow ones can be left out).
KINDS = ("add", "add_virtio_mem", "resize", "remove", "online", "offline", "reset",
         "reboot", "pause", "migrate", "workload")
FAST_KINDS = ("add", "add_virtio_mem", "resize", "remove", "online", "offline", "pause",
              "reset")
DIMM_SIZES = (128 * MiB, 256 * MiB, 512 * MiB, GiB, 130 * MiB, 3 * MiB)
VMEM_SIZES = (GiB, 2 * GiB)
REQUESTS = (0, 128 * MiB, 256 * MiB, 512 * MiB, GiB)


@dataclass
class _Draft:
    """The sequence so far, and what the model says it leaves."""

    spec: MachineSpec
    policy: str
    steps: list[Step]
    plan: PlanCheck
    serial: int = 0

    def now(self) -> StepPrediction:
        ops = [op for s in self.steps if s.is_model_op and (op := s.model_op()) is not None]
        return predict(self.spec, ops).final

    def new_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"


def _add(rng: random.Random, d: _Draft) -> Step | None:
    node = rng.randrange(d.spec.node_count)
    return AddStep(AddDimm(d.new_id("d"), rng.choice(DIMM_SIZES), node))


def _add_vmem(rng: random.Random, d: _Draft) -> Step | None:
    if d.policy == "auto-movable":  # virtio-mem's dynamic groups: not modelled
        return None
    size = rng.choice(VMEM_SIZES)
    requested = min(rng.choice(REQUESTS), size)
    return AddStep(AddVirtioMem(d.new_id("v"), size, rng.randrange(d.spec.node_count),
                                requested=requested))


def _resize(rng: random.Random, d: _Draft) -> Step | None:
    vmems = d.now().of("virtio-mem")
    if not vmems:
        return None
    v = rng.choice(vmems)
    return ResizeStep(v.id, rng.choice((*REQUESTS, v.size, v.size + GiB)))


def _remove(rng: random.Random, d: _Draft) -> Step | None:
    devices = [x for x in d.now().devices if x.id not in d.plan.pending]
    return RemoveStep(rng.choice(devices).id) if devices else None


def _accepted_dimm(rng: random.Random, d: _Draft) -> str | None:
    dimms = [x for x in d.now().of("pc-dimm") if x.guest_accepts]
    return rng.choice(dimms).id if dimms else None


def _online(rng: random.Random, d: _Draft) -> Step | None:
    dimm = _accepted_dimm(rng, d)
    policy = rng.choice(("online", "online_kernel", "online_movable"))
    return OnlineStep(dimm, policy) if dimm else None  # type: ignore[arg-type]


def _offline(rng: random.Random, d: _Draft) -> Step | None:
    dimm = _accepted_dimm(rng, d)
    return OfflineStep(dimm) if dimm else None


def _workload(rng: random.Random, d: _Draft) -> Step | None:
    node = rng.randrange(d.spec.node_count)
    return WorkloadStep(WorkloadSpec(d.new_id("w"), node, 64 * MiB))


MAKERS: dict[str, Callable[[random.Random, _Draft], Step | None]] = {
    "add": _add, "add_virtio_mem": _add_vmem, "resize": _resize, "remove": _remove,
    "online": _online, "offline": _offline, "workload": _workload,
    "reset": lambda rng, d: ResetStep(), "reboot": lambda rng, d: RebootStep(),
    "pause": lambda rng, d: ResumeStep() if d.plan.paused_at is not None else PauseStep(),
    "migrate": lambda rng, d: MigrateStep(),
}
WEIGHTS = {"add": 5, "add_virtio_mem": 2, "resize": 2, "remove": 3, "online": 4,
           "offline": 3, "workload": 1, "reset": 1, "reboot": 1, "pause": 1, "migrate": 1}


def _as_planned(d: _Draft, step: Step) -> Step | None:
    """``step`` as the plan takes it: refused by QEMU -> expecting that
    refusal; not allowed here, or a refusal that cannot be expected -> None."""
    d.plan.index = len(d.steps)
    if not step.allowed(d.plan):
        return None
    op = step.model_op()
    if op is None or not step.is_model_op:
        return step
    done = [o for s in d.steps if s.is_model_op and (o := s.model_op()) is not None]
    try:
        predict(d.spec, [*done, op])
    except PlanRefused:
        if isinstance(step, AddStep | RemoveStep | ResizeStep):
            return replace(step, expect_refusal="")
        return None
    except UsageError:
        return None
    return step


def generate(seed: int | str, spec: MachineSpec, policy: str, length: int,
             kinds: Sequence[str] = FAST_KINDS) -> list[Step]:
    """A sequence of ``length`` steps (a few more to end running: resume, a
    reset after a device_del left pending) under ``policy``."""
    rng = random.Random(f"memhp-fuzz:{seed}")
    d = _Draft(spec, policy, [], PlanCheck(spec))
    pool = [k for k in kinds if k in MAKERS]
    weights = [WEIGHTS[k] for k in pool]
    tries = 0
    while len(d.steps) < length and tries < 20 * length:
        tries += 1
        made = MAKERS[rng.choices(pool, weights)[0]](rng, d)
        step = None if made is None else _as_planned(d, made)
        if step is None:
            continue
        step.advance(d.plan)
        d.steps.append(step)
    for closing in (ResumeStep(), ResetStep()):
        d.plan.index = len(d.steps)
        if (isinstance(closing, ResumeStep) and d.plan.paused_at is not None) or (
                isinstance(closing, ResetStep) and d.plan.pending):
            closing.advance(d.plan)
            d.steps.append(closing)
    return d.steps
