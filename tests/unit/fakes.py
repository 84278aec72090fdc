"""Fakes for unit tests of pure logic (reports, maps): result documents
whose "observed" half is the model's own prediction, not a guest's."""

from __future__ import annotations

import copy
from typing import Any

from harness.devices.pc_dimm.qemu import dimm_json as _dimm_json
from harness.model.kernel import ZoneInfo
from harness.run.results import layout_json
from harness.scenario import build_scenario, default_steps


def fake_result_doc(machine: str, memory: str, numa: str, adds: tuple[str, ...]) -> dict[str, Any]:
    """A result document whose observation is the model's own prediction."""
    scenario = build_scenario(name="fake", machine=machine, memory=memory, numa=numa,
                              steps=default_steps(adds, (), "online_movable", False))
    prediction = scenario.predict()
    layout = layout_json(prediction) | {"node_ram": list(scenario.machine.node_boot_bytes())}

    last = prediction.steps[-1]
    blocks = [{"number": n, "state": "online", "node": d.node, "zone": "Movable"}
              for d in last.of("pc-dimm") for n in d.blocks]
    step = {"index": 0, "action": "online_movable", "passed": True, "seconds": 0.5,
            "mismatches": [], "latencies": {}, "error": None,
            "expected": {"dimms": [_dimm_json(d) for d in last.of("pc-dimm")], "blocks": blocks},
            "observed": {"blocks": copy.deepcopy(blocks)}}
    return {"schema": 1, "scenario": "fake", "result": "pass", "kernel": "k",
            "qemu_version": "7.2", "layout": layout, "steps": [step]}


# The seed machine's boot zones (pc, -m 6G, nodes 3G+3G), as the 6.1 guest's
# /proc/zoneinfo reports them.
SEED_ZONES = (
    ZoneInfo(0, "DMA", 1, 4095, 3998, 3840),
    ZoneInfo(0, "DMA32", 4096, 782304, 782304, 753523),
    ZoneInfo(0, "Normal", 0, 0, 0, 0),
    ZoneInfo(0, "Movable", 0, 0, 0, 0),
    ZoneInfo(1, "Normal", 1048576, 786432, 786432, 765483),
    ZoneInfo(1, "Movable", 0, 0, 0, 0),
)
