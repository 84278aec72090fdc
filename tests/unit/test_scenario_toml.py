"""A scenario written as TOML reads back as the same plan: every step
kind's table (Step.to_table) is what its parser reads."""

from __future__ import annotations

from pathlib import Path

from harness.scenario import (
    add,
    add_virtio_mem,
    build_scenario,
    load_scenario,
    migrate,
    offline,
    online,
    pause,
    reboot,
    remove,
    reset,
    resize,
    resume,
    workload,
)
from harness.scenario_toml import scenario_toml


def test_every_step_kind_reads_back_the_same(tmp_path: Path) -> None:
    steps = [
        add("a:512M@0"), add("b:1G@1:0x240000000"), online("a", "online_kernel"),
        add("h:256M@1", backend="memfd", share=True), add("c:3M@0", expect_refusal=""),
        add_virtio_mem("v:2G@1", "256M", block_size="4M"), resize("v", "512M"),
        workload("w", 1, "64M"), offline("a"), pause(), resume(), remove("b"),
        remove("a", wait=False), reset(), reboot(), migrate(),
    ]
    s = build_scenario(name="round-trip", machine="pc-i440fx-7.2",
                       memory="6G,slots=8,maxmem=32G", numa="3G,3G", steps=steps,
                       append=["memhp_default_state=offline"],
                       coldplug=["c0:128M@1"])
    path = tmp_path / "s.toml"
    path.write_text(scenario_toml(s, "written by a test\nline two"))
    text = path.read_text()
    assert text.startswith("# written by a test\n# line two\n")
    back = load_scenario(path)
    assert back.steps == s.steps
    assert back.machine == s.machine and back.append == s.append and back.name == s.name
    assert back.prediction == s.prediction
