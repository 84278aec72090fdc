"""Step kinds, one frozen class each (:class:`.base.Step`), named here by
their TOML key: a new kind is a class in its own module and one line in
:data:`STEPS`.  The order is the order the scenario format lists them."""

from __future__ import annotations

from collections.abc import Mapping

from harness.errors import UsageError
from harness.run.steps.base import PlanCheck, Step
from harness.run.steps.blocks import OfflineStep, OnlineStep
from harness.run.steps.device import AddStep, RemoveStep, ResizeStep
from harness.run.steps.lifecycle import PauseStep, RebootStep, ResetStep, ResumeStep
from harness.run.steps.migrate import MigrateStep
from harness.run.steps.workload import WorkloadStep

STEPS: dict[str, type[Step]] = {cls.action: cls for cls in (
    AddStep, ResizeStep, OnlineStep, OfflineStep, RemoveStep, ResetStep, WorkloadStep,
    MigrateStep, PauseStep, ResumeStep, RebootStep)}


def parse_step(i: int, raw: object) -> Step:
    """The ``[[step]]`` table number ``i`` (0-based) of a scenario file."""
    where = f"step[{i}]"
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where} must be a table", value=raw, fix="use [[step]] tables")
    actions = [a for a in STEPS if a in raw]
    if len(actions) != 1:
        raise UsageError(f"{where} needs exactly one of {', '.join(STEPS)}", value=raw,
                         fix='e.g. add = "dimm0:1G@1"')
    return STEPS[actions[0]].parse(raw, where)


def check_plan(plan: PlanCheck, steps: tuple[Step, ...] | list[Step]) -> None:
    """Every step's precondition, in order; then the run's end."""
    for i, step in enumerate(steps):
        plan.index = i
        step.check(plan)
        step.advance(plan)
    plan.finish()


__all__ = ["STEPS", "AddStep", "MigrateStep", "OfflineStep", "OnlineStep", "PauseStep",
           "PlanCheck", "RebootStep", "RemoveStep", "ResetStep", "ResizeStep", "ResumeStep",
           "Step", "WorkloadStep", "check_plan", "parse_step"]
