"""The kernel half of ``memhp calibrate``: the policy cases
(:mod:`.cases`: online/online_kernel/online_movable, movable_node,
auto-movable, memmap_on_memory, auto-online, EBUSY, zone spans,
virtio-mem grow/shrink) run on the user's kernel, each in a VM of its own
booted with the case's kernel parameters, each step checked against the
model as ``memhp run`` checks it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.calibrate.cases import CASES, VIRTIO_MEM_CASES, Case
from harness.model.spec import SEED_MEMORY, SEED_NUMA


@dataclass(frozen=True)
class CaseOutcome:
    id: str
    passed: bool
    seconds: float
    detail: str = ""  # why it failed: the error, the mismatches, the case's own check

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "passed": self.passed, "seconds": round(self.seconds, 2),
                "detail": self.detail}


def _failure(result: Any) -> str:
    lines: list[str] = []
    if result.error:
        lines.append(f"{result.error['phase']} error: {result.error['message']}")
    for s in result.steps:
        if s.error:
            lines.append(f"step {s.index + 1} ({s.action}): {s.error}")
        lines += [f"step {s.index + 1} ({s.action}): {m}" for m in s.mismatches]
        lines += [f"step {s.index + 1} ({s.action}): unexpected kernel {sp.kind}"
                  for sp in s.unexpected_splats]
    lines += [f"unexpected kernel {sp.kind}" for sp in result.unexpected_splats]
    return "\n".join(lines) or "failed"


def run_case(case: Case, guest: Any, *, qemu_binary: str, qemu_version: tuple[int, int],
             accel: str, timeout_scale: float = 1.0) -> CaseOutcome:
    """Boot ``guest`` with the case's machine and run its steps."""
    from harness.errors import HarnessError
    from harness.scenario import build_scenario
    from harness.workflow import execute

    t0 = time.monotonic()
    try:
        scenario = build_scenario(
            name=f"calibrate-{case.id}", machine="pc", memory=SEED_MEMORY,
            numa=case.machine.get("numa", SEED_NUMA), steps=case.steps,
            append=tuple(case.machine.get("append", ())), qemu_version=qemu_version)
        result = execute(scenario, guest, accel=accel, qemu_binary=qemu_binary,
                         artifacts_on_failure=None, timeout_scale=timeout_scale)
    except HarnessError as exc:
        return CaseOutcome(case.id, False, time.monotonic() - t0, f"{exc.phase} error: {exc}")
    if not result.passed:
        return CaseOutcome(case.id, False, time.monotonic() - t0, _failure(result))
    try:
        case.check(result.steps)
    except AssertionError as exc:
        return CaseOutcome(case.id, False, time.monotonic() - t0,
                           f"the case did not exercise its rule: {exc}")
    return CaseOutcome(case.id, True, time.monotonic() - t0)


def calibrate_kernel(guest: Any, *, qemu_binary: str, qemu_version: tuple[int, int],
                     accel: str = "auto", cases: tuple[Case, ...] = CASES + VIRTIO_MEM_CASES,
                     timeout_scale: float = 1.0,
                     progress: Callable[[str], None] = lambda _: None) -> list[CaseOutcome]:
    out = []
    for i, case in enumerate(cases):
        outcome = run_case(case, guest, qemu_binary=qemu_binary, qemu_version=qemu_version,
                           accel=accel, timeout_scale=timeout_scale)
        out.append(outcome)
        progress(f"kernel case {i + 1}/{len(cases)} {case.id}: "
                 f"{'agrees' if outcome.passed else 'DISAGREES'} ({outcome.seconds:.0f}s)")
    return out
