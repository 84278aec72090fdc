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


def test_sequences_on_virt_are_valid_plans_and_virtio_mem_expects_the_refusal() -> None:
    """arm64 virt: the same generator, the machine's own refusals (a
    bus-less virtio-mem-pci meets pcie.0) become steps expecting them."""
    spec = MachineSpec(machine="virt", qemu_version=(7, 2), machine_version=None)
    expecting = 0
    for seed in range(20):
        steps = generate(seed, spec, "manual", 10)
        build_scenario(name="f", machine="virt", memory="6G,slots=32,maxmem=32G",
                       numa="3G,3G", steps=steps, append=list(POLICIES["manual"]),
                       qemu_version=(7, 2))
        expecting += sum(1 for s in steps if getattr(getattr(s, "op", None), "kind", "")
                         == "virtio-mem" and s.expect_refusal is not None)
    assert expecting > 0


def test_compare_reports_the_steps_whose_views_differ() -> None:
    """--compare's difference of two runs of one sequence (fakes: objects
    with a result's step fields, nothing run)."""
    from types import SimpleNamespace as Fake

    from harness.fuzz.engine import _differences

    def run(*views: dict, passed: tuple[bool, ...] = ()) -> Fake:
        return Fake(steps=[Fake(index=i, action="add", observed=v,
                                passed=passed[i] if passed else True)
                           for i, v in enumerate(views)])

    same = {"dimms": [{"id": "a", "addr": 1}], "blocks": [], "virtio_mem": None}
    other = same | {"dimms": [{"id": "a", "addr": 2}]}
    assert _differences(0, run(same, same), run(same, same)) == []
    [d] = _differences(3, run(same, same), run(same, other))
    assert d == {"sequence": 3, "step": 2, "action": "add", "passed": [True, True],
                 "differ": ["dimms"]}
    [p, n] = _differences(0, run(same, passed=(True,)), run(same, same, passed=(False, True)))
    assert p["passed"] == [True, False] and n == {"sequence": 0, "steps_run": [1, 2]}
