"""The model against real QEMU 7.2 (the system's), 10.0 and 11.1 (Debian's,
fetched into memhp's cache; 11.1 on its own libraries): no guest, just
QEMU's placement and refusals.

QEMU is started paused (-S) with the machine's memory options.  A plan the
model refuses at start-up must make QEMU exit with the model's text on
stderr; otherwise DIMMs are hot-added over QMP and ``query-memory-devices``
must report exactly the model's address, slot, node and size, and every
refusal must come with the error text the model predicts for that version.
Random plans come from hypothesis.  With ``MEMHP_AGREEMENT_LOG=FILE`` each
comparison is appended to FILE as one JSON line (the counts of the README).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _qemu import log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.calibrate import qemu as calibrate
from harness.calibrate.qemu import Comparison
from harness.devices.pc_dimm.ops import AddDimm
from harness.model.predict import predict
from harness.model.qemu_rules import CpuSpec
from harness.model.qemu_rules.host import parse_meminfo
from harness.model.spec import MachineSpec
from harness.qemu.version import qemu_version
from harness.units import GiB, MiB


def _checked(version: str, comparisons: list[Comparison]) -> None:
    for c in comparisons:
        log({"qemu": version, "what": c.what, "agree": c.agree})
    bad = [f"{c.what}: {c.detail}\n  reproduce: {c.reproducer}" for c in comparisons
           if not c.agree]
    assert not bad, "\n".join(bad)


def check_start(binary: str, spec: MachineSpec) -> bool:
    """QEMU starts exactly when the model predicts it does, and a refusal
    is QEMU's own text (harness.calibrate.qemu); True when it started."""
    c = calibrate.check_start(binary, spec, calibrate.Tally())
    _checked(qemu_version(binary), [c])
    return c.detail == "started"


def check_plan(binary: str, spec: MachineSpec, plan: list[AddDimm]) -> None:
    """Plug ``plan`` one by one; model and QEMU must agree on every outcome."""
    comparisons = calibrate.check_plan(binary, spec, plan, calibrate.Tally())
    assert comparisons
    _checked(qemu_version(binary), comparisons)


def spec_for(version: tuple[int, int], **kw: object) -> MachineSpec:
    return MachineSpec(qemu_version=version, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("machine", ["pc", "q35"])
@pytest.mark.parametrize("ram", [2 * GiB, 2816 * MiB, 3584 * MiB, 6 * GiB])
def test_layout_matches_qemu_for_memory_sizes(qemu: tuple[str, tuple[int, int]], machine: str,
                                              ram: int) -> None:
    binary, version = qemu
    spec = spec_for(version, machine=machine, ram_size=ram, slots=4, maxmem=ram + 4 * GiB,
                    numa=(ram // 2, ram - ram // 2))
    check_plan(binary, spec, [AddDimm("a", GiB, 1), AddDimm("b", 130 * MiB, 0),
                              AddDimm("c", 128 * MiB, 1)])


@pytest.mark.parametrize("name", list(calibrate.TARGETED))
def test_targeted_plans(qemu: tuple[str, tuple[int, int]], name: str) -> None:
    """The seed session's refusals carry QEMU's words; the check order of
    each refusal; address 0; no slots; maxmem without slots."""
    binary, version = qemu
    spec, plan = calibrate.TARGETED[name](version)
    if name == "maxmem-no-slots":
        assert check_start(binary, spec)
    check_plan(binary, spec, plan)


@pytest.mark.parametrize("kw", calibrate.START_UP,
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()
                                                 if k != "cpu"))
def test_start_up_refusals(qemu: tuple[str, tuple[int, int]], kw: dict[str, object]) -> None:
    binary, version = qemu
    check_start(binary, calibrate.start_up_case(version, kw))


def test_amd_relocated_layout(qemu: tuple[str, tuple[int, int]]) -> None:
    """Where QEMU relocates instead of refusing: DIMMs land above 1 TiB."""
    binary, version = qemu
    spec = spec_for(version, machine="q35", ram_size=512 * MiB, slots=2, maxmem=976 * GiB,
                    numa=(), cpu=CpuSpec("AMD", 48, "qemu64"))
    assert predict(spec, []).layout.above_4g_start == 1 << 40
    check_plan(binary, spec, [AddDimm("a", GiB), AddDimm("b", 128 * MiB, 0, (1 << 40) + 2 * GiB)])


def test_host_memory_refusal_at_object_add(qemu: tuple[str, tuple[int, int]]) -> None:
    """A DIMM backend larger than this host's RAM + swap (overcommit heuristic):
    QEMU's object-add fails "Cannot allocate memory", as the model predicts
    from /proc/meminfo; one that fits is mapped (never touched: -S)."""
    binary, version = qemu
    host = parse_meminfo(Path("/proc/meminfo").read_text(),
                         Path("/proc/sys/vm/overcommit_memory").read_text())
    if host.overcommit != 0:
        pytest.skip(f"vm.overcommit_memory={host.overcommit}: the test needs the heuristic (0)")
    limit = host.mem_total + host.swap_total
    too_big = (limit // GiB + 1) * GiB
    fits = (host.mem_total // 2) // GiB * GiB
    spec = spec_for(version, ram_size=GiB, slots=2, maxmem=GiB + too_big + fits, numa=(),
                    host=host)
    check_plan(binary, spec, [AddDimm("big", too_big), AddDimm("ok", fits)])


dimm_sizes = st.sampled_from([2 * MiB, 128 * MiB, 130 * MiB, 129 * MiB, 256 * MiB, 512 * MiB,
                              GiB])


# MEMHP_RANDOM_PLANS=N runs N random plans per QEMU (20 keep `make test` short)
@settings(max_examples=int(os.environ.get("MEMHP_RANDOM_PLANS", "20")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(
    machine=st.sampled_from(["pc", "q35"]),
    ram_gib=st.integers(1, 6),
    plan=st.lists(st.tuples(dimm_sizes, st.integers(0, 2), st.sampled_from([None, 0, 1, 3])),
                  min_size=1, max_size=6),
)
def test_random_plans_match_qemu(qemu: tuple[str, tuple[int, int]], machine: str, ram_gib: int,
                                 plan: list[tuple[int, int, int | None]]) -> None:
    binary, version = qemu
    ram = ram_gib * GiB
    spec = spec_for(version, machine=machine, ram_size=ram, slots=4, maxmem=ram + 2 * GiB,
                    numa=(ram // 2, ram - ram // 2))
    base = predict(spec, []).layout.device_base
    dimms = []
    for i, (size, node, where) in enumerate(plan):
        addr = None if where is None else 0 if where == 0 else base + where * GiB - \
            (MiB if where == 3 else 0)
        dimms.append(AddDimm(f"d{i}", size, node, addr))
    check_plan(binary, spec, dimms)


@pytest.mark.parametrize("family", ["pc", "q35"])
def test_32bit_vcpu_on_old_machine_types(qemu: tuple[str, tuple[int, int]],
                                          family: str) -> None:
    """lm=off on machine type 8.1 (broken_32bit_mem_addr_check: 2^36 - 1
    is never beyond 36 bits) and 8.2 (the end of device memory is) --
    QEMU 8.2+ only (7.2 has neither machine type)."""
    binary, version = qemu
    if version < (8, 2):
        pytest.skip(f"QEMU {version[0]}.{version[1]} has no machine type 8.1/8.2")
    cpu = CpuSpec("AMD", 36, "qemu64", False)
    for mver in ((8, 1), (8, 2)):
        spec = spec_for(version, machine=family, machine_version=mver, ram_size=2 * GiB,
                        slots=2, maxmem=80 * GiB, numa=(), cpu=cpu)
        assert check_start(binary, spec) == (mver == (8, 1))
