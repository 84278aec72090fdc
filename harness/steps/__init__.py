"""Step kinds: one module each, so that the runner stays a loop.

Each kind's ``act(runner, step, latencies)`` does the step (QMP, SSH),
tells the kernel model what happened and returns the mismatches only the
act itself can see (a state write's answer, a refusal's words); observing
and comparing the three views afterwards is the same for every kind
(:meth:`harness.session.Runner.observe`).  A new kind (virtio-mem,
migrate, pause...) is a new module here and a name in :data:`ACTS`.
Parsing stays in :mod:`harness.scenario`; what kinds share is beside
them (:mod:`.refusal`: a step QEMU must refuse, whatever the device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.steps import blocks, dimm, lifecycle, migrate, virtio_mem, workload
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner

Act = Callable[["Runner", "Step", dict[str, float]], list[Mismatch]]



def act_add(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    """An add: of a virtio-mem (``device = "virtio-mem"``) or a pc-dimm."""
    return (virtio_mem.act_add if step.vmem is not None else dimm.act_add)(runner, step, lat)


def act_remove(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    """A remove, by the kind of device the id names; one QEMU must refuse
    (``expect_refusal``) is a ``device_del`` whose words are checked, whatever
    the device."""
    refused = step.expect_refusal is not None
    act = (virtio_mem.act_remove if refused or virtio_mem.is_virtio_mem(runner, step)
           else dimm.act_remove)
    return act(runner, step, lat)


ACTS: dict[str, Act] = {
    "add": act_add,
    "resize": virtio_mem.act_resize,
    "remove": act_remove,
    "online": blocks.act_online,
    "offline": blocks.act_offline,
    "reset": lifecycle.act_reset,
    "workload": workload.act_workload,
    "migrate": migrate.act_migrate,
    "pause": lifecycle.act_pause,
    "resume": lifecycle.act_resume,
    "reboot": lifecycle.act_reboot,
}
