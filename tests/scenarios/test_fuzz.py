"""memhp fuzz on the default guest: random sequences agree with the model,
and a model rule made wrong on purpose (here, in this test only) is found,
shrunk to at most 3 steps, and written as a scenario that replays the
failure (and passes once the rule is right again)."""

from __future__ import annotations

from typing import Any

import pytest

from harness.devices import memory_device as md
from harness.fuzz.engine import signature
from harness.fuzz.generate import FAST_KINDS, generate
from harness.model.predict import predict
from harness.model.spec import MachineSpec
from harness.scenario import load_scenario
from harness.units import GiB

REAL_ALIGN_UP = md.align_up


def _wrong_align_up(value: int, align: int) -> int:
    """A wrong first-fit rule: every DIMM on a 1 GiB boundary."""
    return REAL_ALIGN_UP(value, GiB)


def _addrs(steps: list[Any]) -> list[tuple[str, int]]:
    ops = [op for s in steps if s.is_model_op and (op := s.model_op()) is not None]
    return [(d.id, d.addr) for d in predict(MachineSpec(), ops).final.devices]


def test_a_short_campaign_agrees_with_the_model(memhp_fuzz: Any) -> None:
    summary = memhp_fuzz(seed=11, sequences=2, steps=6)
    assert summary.failures == [], [f.to_json() for f in summary.failures]
    assert summary.sequences == 2 and summary.steps_checked >= 12
    # every step passed, or the guest refused an eject the model allows it to
    assert {outcome for (_, outcome) in summary.outcomes} <= {"pass", "refused (allowed)"}, \
        summary.outcomes
    assert sum(summary.outcomes.values()) == summary.steps_checked
    print(f"fuzz: {summary.steps_checked} steps in {summary.seconds:.1f} s "
          f"({summary.steps_per_minute:.0f} per minute)")


def test_a_wrong_rule_is_found_shrunk_and_replayed(memhp_fuzz: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(md, "align_up", _wrong_align_up)
    seed = None
    for s in range(100):  # a first sequence where the wrong rule places a device elsewhere
        steps = generate(f"{s}:0", MachineSpec(), "manual", 6, FAST_KINDS)
        wrong = _addrs(steps)
        with monkeypatch.context() as m:
            m.setattr(md, "align_up", REAL_ALIGN_UP)
            if wrong != _addrs(steps):
                seed = s
                break
    assert seed is not None, "no sequence of 100 tells the wrong rule from the right one"
    summary = memhp_fuzz(seed=seed, sequences=1, steps=6, shrink_budget=20)
    [failure] = summary.failures
    assert failure.signature[0] == "add" and "addr" in failure.signature, failure.signature
    assert len(failure.shrunk.steps) <= 3, failure.shrunk.steps
    text = failure.path.read_text()
    assert text.startswith("# memhp fuzz --seed")
    target = memhp_fuzz.target
    replay = load_scenario(failure.path, qemu_version=target.qemu_version)
    assert replay.steps == failure.shrunk.steps
    assert signature(replay, target.run(replay)) == failure.signature
    monkeypatch.setattr(md, "align_up", REAL_ALIGN_UP)
    fixed = load_scenario(failure.path, qemu_version=target.qemu_version)
    assert target.run(fixed).passed
