"""A scenario written back as the TOML ``memhp run --scenario`` reads
(``memhp fuzz`` writes the sequences it shrank this way); reading the text
back gives the same plan (tests/unit/test_scenario_toml.py)."""

from __future__ import annotations

from typing import Any

import tomli_w

from harness.devices import ops_of
from harness.scenario import Scenario
from harness.units import size_text


def memory_text(ram: int, slots: int, maxmem: int) -> str:
    """QEMU's ``-m`` text: ``6G,slots=32,maxmem=32G``."""
    text = size_text(ram)
    if slots:
        text += f",slots={slots}"
    if maxmem:
        text += f",maxmem={size_text(maxmem)}"
    return text


def scenario_table(scenario: Scenario) -> dict[str, Any]:
    spec = scenario.machine
    machine: dict[str, Any] = {
        "type": spec.machine_name,
        "memory": memory_text(spec.ram_size, spec.slots, spec.maxmem),
        "numa": ",".join(size_text(n) for n in spec.numa),
        "smp": scenario.smp,
    }
    if spec.coldplug:
        machine["coldplug"] = [
            (lambda t: t["add"] if len(t) == 1 else {"dimm": t.pop("add"), **t})(
                ops_of(d.kind).to_table(d)) for d in spec.coldplug]
    table: dict[str, Any] = {"name": scenario.name, "machine": machine}
    guest: dict[str, Any] = {}
    if scenario.append:
        guest["append"] = list(scenario.append)
    if scenario.expect_splats:
        guest["expect_splats"] = list(scenario.expect_splats)
    if guest:
        table["guest"] = guest
    if scenario.exec_cmd is not None:
        table["exec"] = scenario.exec_cmd
    table["step"] = [step.to_table() for step in scenario.steps]
    return table


def scenario_toml(scenario: Scenario, comment: str = "") -> str:
    """The scenario as TOML text, under ``comment`` lines (``# ...``)."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + tomli_w.dumps(scenario_table(scenario))
