"""A step QEMU must refuse (``expect_refusal``), whatever the device.

The scenario goes on after a refusal: QEMU's words must be the model's
(:class:`harness.model.predict.PlanRefused` ``.qemu_message``) and nothing
changes.  A step QEMU takes instead breaks the plan: it is raised, not
returned, since the model no longer holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.devices.memory_device import same_words
from harness.errors import QMPCommandError, VMError
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner


def act_refused(runner: Runner, step: Step, lat: dict[str, float],
                action: Callable[[], object], lat_key: str) -> list[Mismatch]:
    """Run ``action`` (the QMP command) and check QEMU refuses it with the
    model's words; ``lat[lat_key]`` is how long QEMU took to refuse."""
    predicted = runner.refusals[runner.scenario.steps.index(step)]
    words = getattr(predicted, "qemu_message", "") or str(predicted)
    t0 = time.monotonic()
    try:
        action()
    except QMPCommandError as exc:
        lat[lat_key] = time.monotonic() - t0
        runner.steps_done.append(step)
        if not same_words(words, exc.desc):  # the backend id is the driver's
            return [Mismatch("refusal", step.dimm, words, exc.desc, "qemu")]
        return []
    runner.steps_done.append(step)
    # QEMU took it: the plan no longer holds; say so and stop trusting it.
    raise VMError(f"QEMU accepted {step.describe()}, which the model says it refuses "
                  f"({words!r})", phase="model")
