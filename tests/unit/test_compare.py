"""memhp compare's rows: node deltas (not absolute totals) and the policy
inputs that explain a difference (pure; results built by hand)."""

from __future__ import annotations

from types import SimpleNamespace

from harness.cli.regress import _node_deltas, comparison, policy_differences

GiB = 1 << 30


def step(boot: int, online: int, observed_extra: int, passed: bool = True) -> SimpleNamespace:
    """A step whose node 1 booted with ``boot`` bytes (kernels differ there)."""
    return SimpleNamespace(
        passed=passed, seconds=1.0, action="add d0",
        expected={"nodes": [{"node": 1, "bytes": boot + online, "hotplug_online_bytes": online}]},
        observed={"blocks": [], "nodes": [{"node": 1, "bytes": boot + observed_extra}]})


def test_node_deltas_ignore_boot_reservations() -> None:
    a = step(3 * GiB - (50 << 20), GiB, GiB)
    b = step(3 * GiB - (70 << 20), GiB, GiB)
    assert _node_deltas(a) == _node_deltas(b) == "node1 +1024M"
    rows, regressed = comparison(SimpleNamespace(steps=[a], passed=True),
                                 SimpleNamespace(steps=[b], passed=True))
    assert rows[0]["differs"] == set() and not regressed


def test_a_real_total_difference_is_shown() -> None:
    a, b = step(3 * GiB, GiB, GiB), step(3 * GiB, GiB, GiB - (16 << 20), passed=False)
    rows, regressed = comparison(SimpleNamespace(steps=[a], passed=True),
                                 SimpleNamespace(steps=[b], passed=False))
    assert rows[0]["differs"] == {"passed", "nodes"} and regressed


def test_policy_differences_name_the_inputs() -> None:
    a = SimpleNamespace(policy={"auto_online_blocks": "offline", "rules": "6.1-6.5",
                                "memmap_on_memory": "N"})
    b = SimpleNamespace(policy={"auto_online_blocks": "online", "rules": "6.6-7.2",
                                "memmap_on_memory": "N"})
    assert policy_differences(a, b) == [
        "auto_online_blocks: offline (A) vs online (B)", "rules: 6.1-6.5 (A) vs 6.6-7.2 (B)"]
