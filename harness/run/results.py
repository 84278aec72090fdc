"""What a run leaves: one :class:`StepResult` per step, the ``--exec``
outcome, and the :class:`RunResult` document (``memhp run --json``,
schema in harness/schemas/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.guest.splats import Splat
from harness.model.predict import Prediction
from harness.verify import Mismatch

SCHEMA_VERSION = 1


@dataclass
class StepResult:
    """What one step expected, what was observed, and how they differ."""

    index: int
    action: str
    expected: dict[str, Any]
    observed: dict[str, Any]
    mismatches: list[Mismatch]
    seconds: float
    latencies: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    splats: list[Splat] = field(default_factory=list)

    @property
    def unexpected_splats(self) -> list[Splat]:
        return [s for s in self.splats if not s.expected]

    @property
    def passed(self) -> bool:
        return not self.mismatches and self.error is None and not self.unexpected_splats

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "action": self.action, "passed": self.passed,
            "expected": self.expected, "observed": self.observed,
            "mismatches": [m.to_json() for m in self.mismatches],
            "seconds": round(self.seconds, 4),
            "latencies": {k: round(v, 4) for k, v in self.latencies.items()},
            "error": self.error,
            "splats": [sp.to_json() for sp in self.splats],
        }


@dataclass
class ExecResult:
    command: str
    status: int
    output: str
    findings: list[str] = field(default_factory=list)  # output patterns missed or forbidden
    changes: list[str] = field(default_factory=list)  # block changes the guest shows after it
    mismatches: list[Mismatch] = field(default_factory=list)  # model vs guest after it

    @property
    def passed(self) -> bool:
        return self.status == 0 and not self.findings and not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "status": self.status, "output": self.output,
                "passed": self.passed, "findings": list(self.findings),
                "changes": list(self.changes),
                "mismatches": [m.to_json() for m in self.mismatches]}


@dataclass
class RunResult:
    """The machine-readable outcome of a run (``memhp run --json``)."""

    scenario: str
    accel: str
    accel_reason: str
    qemu_version: str
    kernel: str
    steps: list[StepResult] = field(default_factory=list)
    exec: ExecResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    artifacts: str | None = None
    layout: dict[str, Any] = field(default_factory=dict)
    map: str | None = None
    policy: dict[str, Any] | None = None  # the guest kernel's hotplug policy inputs
    splats: list[Splat] = field(default_factory=list)  # at boot and after the last step
    # How the guest started: {"warm": bool, "state": key or None, "reason": ...}
    start: dict[str, Any] | None = None
    # The model's standing (harness.calibrate.ModelStatus): extrapolated
    # rules, calibrations, and on failure why the model may be behind
    model: dict[str, Any] | None = None

    @property
    def unexpected_splats(self) -> list[Splat]:
        return [s for s in self.splats if not s.expected]

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and not self.unexpected_splats
            and all(s.passed for s in self.steps)
            and (self.exec is None or self.exec.passed)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "result": "pass" if self.passed else "fail",
            "scenario": self.scenario,
            "accel": {"name": self.accel, "reason": self.accel_reason},
            "qemu_version": self.qemu_version,
            "kernel": self.kernel,
            "layout": self.layout,
            "policy": self.policy,
            "splats": [sp.to_json() for sp in self.splats],
            "steps": [s.to_json() for s in self.steps],
            "exec": None if self.exec is None else self.exec.to_json(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "start": self.start,
            "error": self.error,
            "artifacts": self.artifacts,
            "map": self.map,
            "model": self.model,
        }


def layout_json(prediction: Prediction) -> dict[str, Any]:
    """The model's layout (RAM split, device-memory region, block size)."""
    from dataclasses import asdict, is_dataclass

    layout = prediction.layout
    return asdict(layout) if is_dataclass(layout) else dict(vars(layout))
