"""Step kinds: one module each, so that the runner stays a loop.

Each kind's ``act(runner, step, latencies)`` does the step (QMP, SSH),
tells the kernel model what happened and returns the mismatches only the
act itself can see (a state write's answer, a refusal's words); observing
and comparing the three views afterwards is the same for every kind
(:meth:`harness.session.Runner.observe`).  A new kind (virtio-mem,
migrate, pause...) is a new module here and a name in :data:`ACTS`.
Parsing stays in :mod:`harness.scenario`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.steps import blocks, dimm, lifecycle, migrate, workload
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner

Act = Callable[["Runner", "Step", dict[str, float]], list[Mismatch]]

ACTS: dict[str, Act] = {
    "add": dimm.act_add,
    "remove": dimm.act_remove,
    "online": blocks.act_online,
    "offline": blocks.act_offline,
    "reset": lifecycle.act_reset,
    "workload": workload.act_workload,
    "migrate": migrate.act_migrate,
    "pause": lifecycle.act_pause,
    "resume": lifecycle.act_resume,
    "reboot": lifecycle.act_reboot,
}
