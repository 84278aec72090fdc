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
import subprocess
import tempfile
from pathlib import Path

import pytest
from _qemu import log, paused_qemu, qemu_argv
from _qemu import refusal as model_refusal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError, QMPCommandError
from harness.model import AddDimm, MachineSpec, predict
from harness.model.predict import DIMM_BACKEND
from harness.model.qemu_rules import CpuSpec, parse_machine_type
from harness.model.qemu_rules.host import parse_meminfo
from harness.qemu.qmp import QMPSession
from harness.retry import wait_for
from harness.session import qemu_version
from harness.units import GiB, MiB


def check_start(binary: str, spec: MachineSpec) -> bool:
    """QEMU starts exactly when the model predicts it does, and a refusal
    is QEMU's own text; True when it started."""
    refusal = model_refusal(spec, [])
    with tempfile.TemporaryDirectory(prefix="memhp-modelq-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(qemu_argv(binary, spec, sock), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        qmp = QMPSession(sock)
        try:
            wait_for(lambda: True if sock.exists() or proc.poll() is not None else None,
                     what="QMP socket", timeout=20)
            # The socket exists before the machine is built: only an answer
            # over QMP proves that QEMU got through start-up.
            def exited_during_start_up() -> None:
                if proc.poll() is not None:  # a refusal: no 10 s of connect retries
                    raise HarnessError(f"QEMU exited with code {proc.returncode}")

            try:
                qmp.connect(abort=exited_during_start_up)
                qmp.execute("query-status")
            except (HarnessError, OSError):
                proc.wait(timeout=20)
            exited = proc.poll() is not None
        finally:
            qmp.close()
            proc.kill()
            _, err = proc.communicate()
    errors = [line.split(": ", 1)[-1] for line in err.splitlines()
              if "qemu-system-x86_64: " in line and "deprecated" not in line]
    log({"qemu": qemu_version(binary), "what": "start", "refused": refusal is not None,
         "agree": exited == (refusal is not None)
         and (refusal is None or refusal.qemu_message in errors)})
    if refusal is None:
        assert not exited, err
        return True
    assert exited, f"QEMU started; the model refused: {refusal}"
    assert refusal.qemu_message in errors, (refusal.kind, err)
    return False


def check_plan(binary: str, spec: MachineSpec, plan: list[AddDimm]) -> None:
    """Plug ``plan`` one by one; model and QEMU must agree on every outcome."""
    version = qemu_version(binary)
    with paused_qemu(binary, spec) as qmp:
        accepted: list[AddDimm] = []
        for i, d in enumerate(plan):
            refusal = model_refusal(spec, [*accepted, d])
            if refusal is None:
                plug(qmp, i, d)
                accepted.append(d)
            else:
                with pytest.raises(QMPCommandError) as qemu_err:
                    plug(qmp, i, d)
                # the model cannot know the backend id the driver picks (b{i} here)
                words = refusal.qemu_message.replace(DIMM_BACKEND, f"b{i}")
                log({"qemu": version, "what": "refusal", "agree": qemu_err.value.desc == words})
                assert qemu_err.value.desc == words, refusal.kind
        seen = {x["data"]["id"]: x["data"] for x in qmp.execute("query-memory-devices")}
        for d in predict(spec, accepted).final.dimms:
            got = seen.pop(d.id)
            same = (got["addr"], got["slot"], got["node"], got["size"]) == (
                d.addr, d.slot, d.node, d.size)
            log({"qemu": version, "what": "placement", "agree": same})
            assert same, (d.id, got, d)
        assert not seen


def plug(qmp: QMPSession, i: int, d: AddDimm) -> None:
    qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": f"b{i}",
                               "size": d.size})
    args = {"driver": "pc-dimm", "id": d.id, "memdev": f"b{i}", "node": d.node}
    if d.addr is not None:
        args["addr"] = d.addr
    try:
        qmp.execute("device_add", args)
    except QMPCommandError:
        qmp.execute("object-del", {"id": f"b{i}"})
        raise


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


def test_seed_refusals_carry_qemus_words(qemu: tuple[str, tuple[int, int]]) -> None:
    binary, version = qemu
    spec = spec_for(version, machine="pc", ram_size=6 * GiB, slots=3, maxmem=8 * GiB)
    check_plan(binary, spec, [
        AddDimm("d0", 130 * MiB, 0), AddDimm("d1", 128 * MiB, 1), AddDimm("d1", 128 * MiB, 0),
        AddDimm("d2", GiB, 5), AddDimm("d3", 129 * MiB, 0),
        AddDimm("d4", 128 * MiB, 0, 0x1C0000000), AddDimm("d5", 2 * GiB, 0),
        AddDimm("d6", 128 * MiB, 0), AddDimm("d7", 128 * MiB, 0),
    ])


def test_check_order_address_zero_and_no_slots(qemu: tuple[str, tuple[int, int]]) -> None:
    binary, version = qemu
    # misaligned address *and* size: 7.2 names the address, 10.0 the size
    check_plan(binary, spec_for(version, machine="q35", ram_size=2 * GiB, slots=3,
                                maxmem=5 * GiB, numa=()),
               [AddDimm("d0", 129 * MiB, 0, 0x100000001), AddDimm("d0", 128 * MiB, 0, 0x100000001),
                AddDimm("z", 128 * MiB, 0, 0),  # address 0 = first fit
                AddDimm("d1", 128 * MiB, 1), AddDimm("d2", 128 * MiB, 0, 0x100000000)])
    check_plan(binary, spec_for(version, ram_size=2 * GiB, slots=0, maxmem=0, numa=()),
               [AddDimm("d0", 128 * MiB)])
    # maxmem without slots: QEMU starts, and refuses every DIMM
    spec = spec_for(version, ram_size=2 * GiB, slots=0, maxmem=4 * GiB, numa=())
    assert check_start(binary, spec)
    check_plan(binary, spec, [AddDimm("d0", 128 * MiB)])


@pytest.mark.parametrize("kw", [
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 2 * GiB},     # slots, maxmem == RAM
    {"ram_size": 2 * GiB, "slots": 257, "maxmem": 4 * GiB},   # > ACPI_MAX_RAM_SLOTS
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": GiB},         # maxmem below RAM
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 0},           # slots without maxmem
    {"ram_size": 2 * GiB, "slots": 256, "maxmem": 4 * GiB},   # the limit itself starts
    # phys-bits: AMD (TCG's qemu64/max) relocates to 1 TiB, then is beyond 40 bits
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 988 * GiB},
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 976 * GiB},
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 970 * GiB},
    {"machine": "pc", "ram_size": 512 * MiB, "slots": 1, "maxmem": 1000 * GiB},
    {"machine": "pc", "ram_size": 512 * MiB, "slots": 1, "maxmem": 1008 * GiB},
    # Intel: no relocation, the 32 GiB q35 hole decides
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 980 * GiB,
     "cpu": CpuSpec("Intel", 40, "Skylake-Client")},
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 1000 * GiB,
     "cpu": CpuSpec("Intel", 40, "Skylake-Client")},
    # machine type 7.0: no AMD relocation either
    {"machine": "q35", "machine_version": (7, 0), "ram_size": 512 * MiB, "slots": 1,
     "maxmem": 976 * GiB},
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB, "numa": (GiB, 2 * GiB)},
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items() if k != "cpu"))
def test_start_up_refusals(qemu: tuple[str, tuple[int, int]], kw: dict[str, object]) -> None:
    binary, version = qemu
    check_start(binary, spec_for(version, **{"numa": (), **kw}))


@pytest.mark.parametrize("machine", ["pc-i440fx-4.0", "pc-i440fx-5.1", "pc-q35-5.0",
                                     "pc-i440fx-5.2", "pc-q35-5.2"])
def test_removed_machine_types(qemu: tuple[str, tuple[int, int]], machine: str) -> None:
    """QEMU 10.1+ no longer has six-year-old machine types (11.1: 4.0-5.1
    gone, 5.2 kept): QEMU refuses them at start-up with the model's words."""
    binary, version = qemu
    mtype = parse_machine_type(machine)
    spec = spec_for(version, machine=mtype.family, machine_version=mtype.version,
                    ram_size=2 * GiB, slots=2, maxmem=4 * GiB, numa=())
    started = check_start(binary, spec)
    oldest = spec.rules.oldest_machine
    assert started == (oldest is None or mtype.version >= oldest)  # type: ignore[operator]


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
