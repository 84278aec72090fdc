"""What a step's act gets: a narrow context, never the runner.

An act reaches the VM (QMP, SSH) through :attr:`StepContext.vm`, reads and
updates the run's pure state (:class:`harness.run.state.RunState`), says
when its operation took effect in QEMU (:meth:`StepContext.took_effect`:
from then on the model's view includes it), and reports what only it can
see: latencies, notes for the observed JSON, the kernel splats the
kernel's answer explains.  The runner records the step when the act
returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import HarnessError
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.errors import PlanRefused
    from harness.qemu.vm import VM
    from harness.run.state import RunState


class _Step(Protocol):
    """What the context reads of its step (:class:`harness.run.steps.base.Step`)."""

    @property
    def is_model_op(self) -> bool: ...

    @property
    def subject(self) -> str: ...

    def describe(self) -> str: ...


@dataclass
class StepContext:
    vm: VM
    state: RunState
    step: _Step
    index: int  # the step's index in the scenario
    smp: int  # the guest's vCPUs
    refusal: PlanRefused | None = None  # QEMU's predicted refusal of this step
    lat: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # merged into the observed JSON
    expects: list[str] = field(default_factory=list)  # splats the kernel's answer explains
    recorded: bool = False

    def took_effect(self) -> None:
        """The step's operation is QEMU's now: the model moves past it
        (idempotent; the runner calls it once the act returns)."""
        if not self.recorded:
            self.recorded = True
            if self.step.is_model_op:
                self.state.ops_acted += 1

    def kind_state(self, kind: str) -> Any:
        """The run state of a device kind (``harness.devices.<kind>.live.KindState``)."""
        if kind not in self.state.kinds:
            from harness.devices import live_of

            self.state.kinds[kind] = live_of(kind).KindState()
        return self.state.kinds[kind]

    def adopt_guest_blocks(self, group: str | None = None) -> tuple[list[str], list[Mismatch]]:
        """See :func:`harness.run.observe.adopt_guest_blocks`."""
        from harness.run.observe import adopt_guest_blocks

        return adopt_guest_blocks(self.vm, self.state, group)

    def adopt_quietly(self, group: str) -> None:
        """After the guest refused to eject ``group``: the model takes the
        blocks as the guest left them (a failed ACPI eject re-onlines what
        it had offlined); a guest that cannot answer leaves it to the
        next comparison."""
        with contextlib.suppress(HarnessError):
            self.adopt_guest_blocks(group)
