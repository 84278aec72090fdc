"""Run random sequences on real VMs, shrink what fails, write it as TOML.

Each sequence is a scenario run by :func:`harness.workflow.execute` from
a saved VM state (:mod:`harness.warm`: the guest is restored, not
booted; the first sequence of a policy boots once and saves it).  Every
step is checked against the model as in ``memhp run``.  A failing
sequence is shrunk (:mod:`.shrink`) to the fewest steps that fail the
same way (the first failing step's kind and what differed), and written
as a scenario ``memhp run --scenario``, ``compare`` and ``bisect`` replay.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.files import write_text_no_link
from harness.fuzz.generate import POLICIES, generate
from harness.launch import ResolvedGuest
from harness.run.results import RunResult, StepResult
from harness.run.steps import Step
from harness.scenario import Scenario, build_scenario
from harness.scenario_toml import scenario_toml

Signature = tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """Where sequences run: a guest and a QEMU."""

    guest: ResolvedGuest
    qemu_binary: str = "qemu-system-x86_64"
    accel: str = "auto"
    timeout_scale: float = 1.0
    qemu_version: tuple[int, int] | None = None  # the model's QEMU rules (the binary's)
    label: str = ""

    def scenario(self, steps: Sequence[Step], machine: str, policy: str,
                 settings: Settings, name: str) -> Scenario:
        """The plan of ``steps`` for this target's QEMU."""
        return build_scenario(name=name, machine=machine, memory=settings.memory,
                              numa=settings.numa, steps=list(steps),
                              append=list(POLICIES[policy]), qemu_version=self.qemu_version)

    def run(self, scenario: Scenario) -> RunResult:
        from harness.workflow import execute

        return execute(scenario, self.guest, accel=self.accel, qemu_binary=self.qemu_binary,
                       timeout_scale=self.timeout_scale, warm=True,
                       artifacts_on_failure=None)


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    length: int = 8  # steps per sequence
    sequences: int | None = None  # None: until the time is up
    seconds: float | None = None
    machines: tuple[str, ...] = ("pc",)
    policies: tuple[str, ...] = ("manual",)
    memory: str = "6G,slots=32,maxmem=32G"
    numa: str = "3G,3G"
    kinds: tuple[str, ...] = ()  # () = harness.fuzz.generate.FAST_KINDS
    shrink_budget: int = 30
    out: Path | None = None  # where shrunk failures are written


@dataclass
class Failure:
    sequence: int
    signature: Signature
    steps: int
    shrunk: Scenario
    shrink_runs: int
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "signature": list(self.signature),
                "steps": self.steps, "shrunk_steps": len(self.shrunk.steps),
                "shrink_runs": self.shrink_runs,
                "scenario": None if self.path is None else str(self.path)}


@dataclass
class Summary:
    sequences: int = 0
    steps_checked: int = 0
    seconds: float = 0.0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    rules: Counter[str] = field(default_factory=Counter)  # model rules seen to fire
    failures: list[Failure] = field(default_factory=list)
    differences: list[dict[str, Any]] = field(default_factory=list)  # --compare

    @property
    def steps_per_minute(self) -> float:
        return 60 * self.steps_checked / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"sequences": self.sequences, "steps_checked": self.steps_checked,
                "seconds": round(self.seconds, 1),
                "steps_per_minute": round(self.steps_per_minute, 1),
                "outcomes": {f"{k} {o}": n for (k, o), n in sorted(self.outcomes.items())},
                "rules": dict(sorted(self.rules.items())),
                "failures": [f.to_json() for f in self.failures],
                "differences": self.differences}


_REFUSED = re.compile(r"guest refused to eject '([^']+)'")


def allowed_refusal(result: RunResult, r: StepResult) -> bool:
    """A step whose only fault is the guest refusing an eject the model
    allows it to refuse: the DIMM had online memory in a kernel zone before
    the step (offline_pages() may meet unmovable pages: EBUSY).  The run
    already follows it (the DIMM stays, its blocks as the guest left them)."""
    m = _REFUSED.search(r.error or "")
    if m is None or r.mismatches or r.unexpected_splats or r.index == 0:
        return False
    before = result.steps[r.index - 1].expected
    zones = {b["number"]: (b.get("state"), b.get("zone")) for b in before.get("blocks", [])}
    dimm = next((d for d in before.get("dimms", []) if d.get("id") == m.group(1)), None)
    return dimm is not None and any(
        zones.get(n, (None, None))[0] == "online" and zones[n][1] not in (None, "Movable")
        for n in dimm.get("blocks", []))


def signature(scenario: Scenario, result: RunResult) -> Signature | None:
    """How a run failed: the first failing step's kind and what differed
    (or the error's phase); None when it passed (a refused eject the model
    allows is an outcome, not a failure)."""
    if result.error is not None:
        return ("run", str(result.error.get("phase", "?")))
    for r in result.steps:
        if not r.passed and not allowed_refusal(result, r):
            kind = scenario.steps[r.index].action
            if r.error is not None:
                return (kind, "error " + r.error.split(" error:")[0])
            whats = sorted({m.what for m in r.mismatches} | {
                f"splat {s.kind}" for s in r.unexpected_splats})
            return (kind, *whats)
    if result.unexpected_splats or (result.exec is not None and not result.exec.passed):
        return ("run", "failed")
    return None


def _count(summary: Summary, scenario: Scenario, result: RunResult) -> None:
    summary.steps_checked += len(result.steps)
    for r in result.steps:
        step = scenario.steps[r.index]
        outcome = ("pass" if r.passed else "refused (allowed)" if allowed_refusal(result, r)
                   else "error" if r.error else "mismatch")
        summary.outcomes[(step.action, outcome)] += 1
        for b in r.expected.get("blocks", []):
            if b.get("state") == "online":
                summary.rules[f"zone {b.get('zone')}"] += 1
    for refusal in scenario.refusals.values():
        summary.rules[f"refusal {getattr(refusal, 'kind', '?')}"] += 1
    if result.policy:
        summary.rules[f"kernel rules {result.policy.get('rules', '?')}"] += 1


def _valid(build: Callable[[list[Step]], Scenario]) -> Callable[[list[Step]], bool]:
    def valid(steps: list[Step]) -> bool:
        try:
            build(steps)
        except HarnessError:
            return False
        return True
    return valid


def _shrink(target: Target, build: Callable[[list[Step]], Scenario], steps: list[Step],
            sig: Signature, budget: int) -> tuple[Scenario, int]:
    from harness.fuzz.shrink import shrink

    def still_fails(candidate: list[Step]) -> bool:
        scenario = build(candidate)
        return signature(scenario, target.run(scenario)) == sig

    smallest, runs, _ = shrink(steps, still_fails, _valid(build), budget)
    return build(smallest), runs


def _differences(index: int, a: RunResult, b: RunResult) -> list[dict[str, Any]]:
    out = []
    for ra, rb in zip(a.steps, b.steps, strict=False):
        # what hotplug placed and what the guest made of it (absolute node
        # totals differ with the firmware's reservations, so they are not compared)
        views = ("dimms", "virtio_mem", "blocks")
        seen_a = {k: ra.observed.get(k) for k in views}
        seen_b = {k: rb.observed.get(k) for k in views}
        if ra.passed != rb.passed or seen_a != seen_b:
            out.append({"sequence": index, "step": ra.index + 1, "action": ra.action,
                        "passed": [ra.passed, rb.passed],
                        "differ": [k for k in views if seen_a[k] != seen_b[k]]})
    if len(a.steps) != len(b.steps):
        out.append({"sequence": index, "steps_run": [len(a.steps), len(b.steps)]})
    return out


def campaign(settings: Settings, target: Target, *, compare: Target | None = None,
             say: Callable[[str], None] = print) -> Summary:
    """Sequences until ``settings.sequences`` or ``settings.seconds`` run out."""
    from harness.fuzz.generate import FAST_KINDS

    summary = Summary()
    t0 = time.monotonic()
    index = 0
    while (settings.sequences is None or index < settings.sequences) and (
            settings.seconds is None or time.monotonic() - t0 < settings.seconds):
        machine = settings.machines[index % len(settings.machines)]
        policy = settings.policies[(index // len(settings.machines)) % len(settings.policies)]
        seed = f"{settings.seed}:{index}"
        spec = target.scenario([], machine, policy, settings, "probe").machine
        steps = generate(seed, spec, policy, settings.length, settings.kinds or FAST_KINDS)

        def build(candidate: list[Step], machine: str = machine, policy: str = policy,
                  index: int = index, on: Target = target) -> Scenario:
            return on.scenario(candidate, machine, policy, settings, f"fuzz-{index}")

        scenario = build(steps)
        result = target.run(scenario)
        _count(summary, scenario, result)
        sig = signature(scenario, result)
        say(f"memhp fuzz: sequence {index + 1} ({machine}, {policy}, seed {seed}): "
            f"{len(result.steps)} steps, " + ("pass" if sig is None else f"FAIL {list(sig)}"))
        if compare is not None:
            other = build(steps, on=compare)
            summary.differences += _differences(index, result, compare.run(other))
        if sig is not None:
            shrunk, runs = _shrink(target, build, steps, sig, settings.shrink_budget)
            failure = Failure(index, sig, len(steps), shrunk, runs)
            if settings.out is not None:
                settings.out.mkdir(parents=True, exist_ok=True)
                failure.path = settings.out / f"fuzz-{settings.seed}-{index}.toml"
                write_text_no_link(failure.path, scenario_toml(shrunk, (
                    f"memhp fuzz --seed {settings.seed}: sequence {index + 1} "
                    f"({machine}, {policy}) failed: {' / '.join(sig)}\n"
                    f"shrunk from {len(steps)} to {len(shrunk.steps)} steps in {runs} runs; "
                    "replay: memhp run --scenario THIS_FILE")), "--out")
            say(f"memhp fuzz: shrunk to {len(shrunk.steps)} step(s) in {runs} run(s)"
                + (f": {failure.path}" if failure.path else ""))
            summary.failures.append(failure)
        index += 1
        summary.sequences = index
        summary.seconds = time.monotonic() - t0
    return summary
