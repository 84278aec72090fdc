"""The pure halves of memhp fuzz: generation (seeded, valid plans only,
every step kind reachable) and shrinking (minimal, valid, bounded)."""

from __future__ import annotations

from collections import Counter

from harness.fuzz.generate import KINDS, POLICIES, generate
from harness.fuzz.shrink import shrink
from harness.model.spec import MachineSpec
from harness.scenario import build_scenario


def test_the_same_seed_gives_the_same_sequence_and_every_one_is_a_valid_plan() -> None:
    seen: Counter[str] = Counter()
    for policy, append in POLICIES.items():
        for seed in range(6):
            for machine in ("pc", "q35"):
                spec = MachineSpec(machine=machine)
                steps = generate(seed, spec, policy, 10, KINDS)
                assert steps == generate(seed, spec, policy, 10, KINDS)
                assert len(steps) >= 10
                build_scenario(name="f", machine=machine, memory="6G,slots=32,maxmem=32G",
                               numa="3G,3G", steps=steps, append=list(append))
                seen.update(s.action for s in steps)
    assert set(seen) == {"add", "resize", "remove", "online", "offline", "reset", "reboot",
                         "pause", "resume", "migrate", "workload"}, seen
    assert generate(1, MachineSpec(), "manual", 10) != generate(2, MachineSpec(), "manual", 10)


def test_shrinking_keeps_the_culprits_and_only_valid_candidates() -> None:
    """A failure needs 3 and 7 in that order; odd numbers right after an
    even one are 'invalid plans'."""
    def fails(xs: list[int]) -> bool:
        return 3 in xs and 7 in xs and xs.index(3) < xs.index(7)

    def valid(xs: list[int]) -> bool:
        return all(not (a % 2 == 0 and b % 2) for a, b in zip(xs, xs[1:], strict=False))

    runs: list[list[int]] = []

    def counted(xs: list[int]) -> bool:
        runs.append(xs)
        return fails(xs)

    start = [1, 5, 3, 9, 11, 13, 7, 15]
    smallest, spent, exhausted = shrink(start, counted, valid, budget=50)
    assert smallest == [3, 7] and not exhausted and spent == len(runs)
    assert all(valid(r) for r in runs)
    few, spent, exhausted = shrink(start, counted, valid, budget=2)
    assert spent == 2 and exhausted and fails(few)


def test_a_shrunk_scenario_is_never_written_through_a_link(tmp_path) -> None:
    """A checked-out pull request may plant a link at memhp fuzz's default
    output: neither a linked file nor a linked directory is followed."""
    import pytest

    from harness.errors import UsageError
    from harness.files import write_text_no_link

    victim = tmp_path / "victim"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fuzz-0-0.toml").symlink_to(victim)
    with pytest.raises(UsageError, match="cannot be written"):
        write_text_no_link(out / "fuzz-0-0.toml", "x", "--out")
    (tmp_path / "linked").symlink_to(out)
    with pytest.raises(UsageError, match="symbolic link"):
        write_text_no_link(tmp_path / "linked" / "new.toml", "x", "--out")
    assert victim.read_text() == "keep" and not (out / "new.toml").exists()
    write_text_no_link(out / "real.toml", "ok", "--out")
    assert (out / "real.toml").read_text() == "ok"
