"""VM lifecycle steps: reset (system_reset; plugged DIMMs come back)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner


def act_reset(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    t0 = time.monotonic()
    runner.vm.reboot()
    lat["reboot_s"] = time.monotonic() - t0
    runner.steps_done.append(step)
    plugged = sorted((d for d in runner.current_dimms() if d.guest_accepts),
                     key=lambda d: d.slot)
    runner.km().reboot((d.id, d.node, d.blocks, d.size) for d in plugged)
    from harness.steps.virtio_mem import after_reset

    # virtio-mem devices are emptied by the reset, then re-plugged
    mismatches = after_reset(runner, lat)
    runner.set_baseline_totals(runner.vm.guest.snapshot())
    return mismatches
