"""A step QEMU must refuse (``expect_refusal``), whatever the device.

The scenario goes on after a refusal: QEMU's words must be the model's
(:class:`harness.errors.PlanRefused` ``.qemu_message``) and nothing
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
    from harness.run.context import StepContext


def act_refused(ctx: StepContext, action: Callable[[], object], lat_key: str = "qmp_s"
                ) -> list[Mismatch]:
    """Run ``action`` (the QMP command) and check QEMU refuses it with the
    model's words; ``ctx.lat[lat_key]`` is how long QEMU took to refuse."""
    predicted, step = ctx.refusal, ctx.step
    assert predicted is not None, "a step expecting a refusal has the model's (Scenario.refusals)"
    words = getattr(predicted, "qemu_message", "") or str(predicted)
    t0 = time.monotonic()
    try:
        action()
    except QMPCommandError as exc:
        ctx.lat[lat_key] = time.monotonic() - t0
        if not same_words(words, exc.desc):  # the backend id is the driver's
            return [Mismatch("refusal", step.subject, words, exc.desc, "qemu")]
        return []
    # QEMU took it: the plan no longer holds; say so and stop trusting it.
    raise VMError(f"QEMU accepted {step.describe()}, which the model says it refuses "
                  f"({words!r})", phase="model")
