"""The model against real QEMU: no guest, just QEMU's placement and refusals.

QEMU is started paused (-S) with the machine's memory options; DIMMs are
hot-added over QMP and ``query-memory-devices`` must report exactly the
model's address, slot and node; refusals must come with the error text the
model predicts.  Random plans come from hypothesis.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import PlanRefused, QMPCommandError
from harness.model import AddDimm, MachineSpec, predict
from harness.qemu.qmp import QMPSession
from harness.retry import wait_for
from harness.units import GiB, MiB

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 is not installed")


@contextmanager
def paused_qemu(spec: MachineSpec) -> Iterator[QMPSession]:
    with tempfile.TemporaryDirectory(prefix="memhp-modelq-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        mem = f"{spec.ram_size >> 20}M"
        if spec.slots:
            mem += f",slots={spec.slots},maxmem={spec.maxmem >> 20}M"
        argv = ["qemu-system-x86_64", "-S", "-nodefaults", "-no-user-config", "-display",
                "none", "-accel", "tcg", "-machine", spec.machine, "-m", mem,
                "-qmp", f"unix:{sock},server=on,wait=off"]
        for i, size in enumerate(spec.numa):
            argv += ["-object", f"memory-backend-ram,id=m{i},size={size >> 20}M",
                     "-numa", f"node,nodeid={i},memdev=m{i}"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        qmp = QMPSession(sock)
        try:
            wait_for(lambda: True if sock.exists() or proc.poll() is not None else None,
                     what="QMP socket", timeout=20)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            qmp.connect()
            yield qmp
        finally:
            qmp.close()
            proc.kill()
            proc.wait()


def plug(qmp: QMPSession, i: int, d: AddDimm) -> None:
    qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": f"b{i}",
                               "size": d.size})
    args = {"driver": "pc-dimm", "id": d.id, "memdev": f"b{i}", "node": d.node}
    if d.addr is not None:
        args["addr"] = d.addr
    qmp.execute("device_add", args)


def check_plan(spec: MachineSpec, plan: list[AddDimm]) -> None:
    """Plug ``plan`` one by one; model and QEMU must agree on every outcome."""
    with paused_qemu(spec) as qmp:
        accepted: list[AddDimm] = []
        for i, d in enumerate(plan):
            try:
                predict(spec, [*accepted, d])
                refusal = None
            except PlanRefused as exc:
                refusal = exc
            if refusal is None:
                plug(qmp, i, d)
                accepted.append(d)
            else:
                with pytest.raises(QMPCommandError) as qemu_err:
                    plug(qmp, i, d)
                assert qemu_err.value.desc == refusal.qemu_message, refusal.kind  # type: ignore[attr-defined]
        seen = {x["data"]["id"]: x["data"] for x in qmp.execute("query-memory-devices")}
        for d in predict(spec, accepted).final.dimms:
            got = seen.pop(d.id)
            assert (got["addr"], got["slot"], got["node"], got["size"]) == (
                d.addr, d.slot, d.node, d.size), d.id
        assert not seen


@pytest.mark.parametrize("machine", ["pc", "q35"])
@pytest.mark.parametrize("ram", [2 * GiB, 2816 * MiB, 3 * GiB, 3584 * MiB, 6 * GiB])
def test_layout_matches_qemu_for_memory_sizes(machine: str, ram: int) -> None:
    spec = MachineSpec(machine=machine, ram_size=ram, slots=4, maxmem=ram + 4 * GiB,
                       numa=(ram // 2, ram - ram // 2))
    check_plan(spec, [AddDimm("a", GiB, 1), AddDimm("b", 130 * MiB, 0),
                      AddDimm("c", 128 * MiB, 1)])


def test_seed_refusals_carry_qemus_words() -> None:
    spec = MachineSpec(machine="pc", ram_size=6 * GiB, slots=3, maxmem=8 * GiB)
    check_plan(spec, [
        AddDimm("d0", 130 * MiB, 0), AddDimm("d1", 128 * MiB, 1), AddDimm("d1", 128 * MiB, 0),
        AddDimm("d2", GiB, 5), AddDimm("d3", 129 * MiB, 0),
        AddDimm("d4", 128 * MiB, 0, 0x1C0000000), AddDimm("d5", 2 * GiB, 0),
        AddDimm("d6", 128 * MiB, 0), AddDimm("d7", 128 * MiB, 0),
    ])


def test_no_slots_and_bad_addresses() -> None:
    check_plan(MachineSpec(ram_size=2 * GiB, slots=0, maxmem=0, numa=()),
               [AddDimm("d0", 128 * MiB)])
    check_plan(MachineSpec(machine="q35", ram_size=2 * GiB, slots=2, maxmem=4 * GiB, numa=()),
               [AddDimm("d0", 128 * MiB, 0, 0x100000001), AddDimm("d0", 128 * MiB, 0, GiB),
                AddDimm("d1", 128 * MiB, 1), AddDimm("d2", 128 * MiB, 0, 0x100000000)])


dimm_sizes = st.sampled_from([2 * MiB, 128 * MiB, 130 * MiB, 256 * MiB, 512 * MiB, GiB])


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    machine=st.sampled_from(["pc", "q35"]),
    ram_gib=st.integers(1, 6),
    plan=st.lists(st.tuples(dimm_sizes, st.integers(0, 2), st.booleans()), min_size=1,
                  max_size=6),
)
def test_random_plans_match_qemu(machine: str, ram_gib: int,
                                 plan: list[tuple[int, int, bool]]) -> None:
    ram = ram_gib * GiB
    spec = MachineSpec(machine=machine, ram_size=ram, slots=4, maxmem=ram + 2 * GiB,
                       numa=(ram // 2, ram - ram // 2))
    dimms = []
    for i, (size, node, explicit) in enumerate(plan):
        base = predict(spec, []).layout.device_base
        dimms.append(AddDimm(f"d{i}", size, node, base + 2 * GiB if explicit else None))
    check_plan(spec, dimms)
