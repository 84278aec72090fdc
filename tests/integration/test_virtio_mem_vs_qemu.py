"""The virtio-mem model against real QEMU 7.2 and 10.0, no guest: QEMU is
started paused and every virtio-mem-pci (beside pc-dimms) is hot-added over
QMP; ``query-memory-devices`` must report the model's memaddr, max-size,
block-size, node and requested-size, and every refusal (device_add,
qom-set of requested-size, device_del) must carry the words the model
predicts for that version.  The guest's side (plugged size, blocks) is
checked by tests/scenarios/test_virtio_mem.py."""

from __future__ import annotations

import pytest
from _qemu import log, paused_qemu
from _qemu import refusal as model_refusal

from harness.devices.memory_device import same_words
from harness.devices.pc_dimm.ops import AddDimm
from harness.devices.virtio_mem.ops import AddVirtioMem, ResizeVirtioMem
from harness.errors import QMPCommandError
from harness.model.predict import predict
from harness.model.spec import MachineSpec, Operation, RemoveDevice
from harness.qemu.devices import pc_dimm, ram_backend, virtio_mem
from harness.qemu.qmp import QMPSession
from harness.units import GiB, MiB


def act(qmp: QMPSession, op: Operation) -> None:
    """Do ``op`` on the paused QEMU as memhp's VM driver would."""
    if isinstance(op, AddVirtioMem | AddDimm):
        be = ram_backend(op.size)
        if isinstance(op, AddDimm):
            dev = pc_dimm(op.id, be, op.node, op.addr)
        else:
            dev = virtio_mem(op.id, be, op.node, op.requested, block_size=op.block_size,
                             memaddr=op.addr, unplugged_inaccessible=op.unplugged_inaccessible,
                             dynamic_memslots=op.dynamic_memslots)
        qmp.execute("object-add", dev.backend.qmp_args())
        try:
            qmp.execute("device_add", dev.device.qmp_args())
        except QMPCommandError:
            qmp.execute("object-del", {"id": be.id})
            raise
    elif isinstance(op, ResizeVirtioMem):
        qmp.execute("qom-set", {"path": f"/machine/peripheral/{op.id}",
                                "property": "requested-size", "value": op.requested})
    else:
        qmp.execute("device_del", {"id": op.id})


def run_plan(binary: str, spec: MachineSpec, plan: list[Operation]) -> list[str]:
    """Each op in turn; the model and QEMU agree on each outcome.  Returns
    QEMU's refusals (for the test to name what it covered)."""
    refused: list[str] = []
    with paused_qemu(binary, spec) as qmp:
        done: list[Operation] = []
        for op in plan:
            refusal = model_refusal(spec, [*done, op])
            version = ".".join(map(str, spec.qemu_version))
            if refusal is None:
                act(qmp, op)  # a refusal here fails the test
                log({"qemu": version, "what": "virtio-mem", "outcome": "accepted",
                     "agree": True})
                done.append(op)
                continue
            with pytest.raises(QMPCommandError) as qemu_err:
                act(qmp, op)
            words = refusal.qemu_message
            agree = same_words(words, qemu_err.value.desc)
            log({"qemu": version, "what": "virtio-mem", "outcome": refusal.kind,
                 "agree": agree})
            assert agree, (op, refusal.kind, qemu_err.value.desc)
            refused.append(words)
        final = predict(spec, done).final
        seen = {x["data"]["id"]: x for x in qmp.execute("query-memory-devices")}
        for v in final.of("virtio-mem"):
            got = seen.pop(v.id)
            assert got["type"] == "virtio-mem"
            d = got["data"]
            assert (d["memaddr"], d["max-size"], d["block-size"], d["node"],
                    d["requested-size"], d["size"]) == (
                v.addr, v.size, v.block_size, v.node, v.requested, 0), v.id
        for dimm in final.of("pc-dimm"):
            assert seen.pop(dimm.id)["data"]["addr"] == dimm.addr
        for op in done:  # an accepted device_del waits for the guest (none: -S)
            if isinstance(op, RemoveDevice):
                seen.pop(op.id, None)
        assert not seen
    return refused


SPEC = dict(ram_size=2 * GiB, slots=4, maxmem=12 * GiB, numa=(GiB, GiB))


def test_placement_and_add_refusals(qemu: tuple[str, tuple[int, int]]) -> None:
    binary, version = qemu
    spec = MachineSpec(qemu_version=version, **SPEC)  # type: ignore[arg-type]
    refused = run_plan(binary, spec, [
        AddVirtioMem("vm1", 130 * MiB),
        AddVirtioMem("bad", GiB, requested=MiB),
        AddVirtioMem("bad", GiB, block_size=4096),
        AddVirtioMem("bad", GiB, block_size=3 * MiB),
        AddVirtioMem("bad", GiB + 2 * MiB, block_size=4 * MiB),
        AddVirtioMem("bad", GiB, node=5),
        AddVirtioMem("bad", GiB, node=7, requested=MiB),
        AddVirtioMem("bad", GiB, addr=4 * GiB + 2 * MiB),
        AddVirtioMem("bad", GiB, addr=5 * GiB + MiB),
        AddVirtioMem("vm2", GiB, block_size=4 * MiB, requested=8 * MiB),
        AddDimm("d0", 512 * MiB, 1),
        AddVirtioMem("vm3", GiB + 8 * MiB, 1, block_size=8 * MiB),
        AddVirtioMem("vm1", GiB),
        AddVirtioMem("bad", 8 * GiB),
        AddVirtioMem("dm", GiB, dynamic_memslots=True),
        AddVirtioMem("vui", GiB, unplugged_inaccessible=False),
    ])
    assert len(refused) == 10 + (version == (7, 2))  # 7.2: no dynamic-memslots


def test_q35_refuses_the_hot_add(qemu: tuple[str, tuple[int, int]]) -> None:
    binary, version = qemu
    spec = MachineSpec(machine="q35", qemu_version=version, **SPEC)  # type: ignore[arg-type]
    assert run_plan(binary, spec, [AddDimm("x", GiB), AddVirtioMem("x", GiB)]) == [
        "Bus 'pcie.0' does not support hotplugging"]


def test_resize_and_device_del(qemu: tuple[str, tuple[int, int]]) -> None:
    binary, version = qemu
    spec = MachineSpec(qemu_version=version, **SPEC)  # type: ignore[arg-type]
    refused = run_plan(binary, spec, [
        AddVirtioMem("v", GiB, block_size=4 * MiB),
        ResizeVirtioMem("v", 2 * GiB),
        ResizeVirtioMem("v", 2 * GiB + MiB),
        ResizeVirtioMem("v", 2 * MiB),
        ResizeVirtioMem("v", 512 * MiB),
        AddVirtioMem("w", GiB, unplugged_inaccessible=False),
        RemoveDevice("w"),
    ])
    assert len(refused) == 4


def test_without_device_memory(qemu: tuple[str, tuple[int, int]]) -> None:
    """No maxmem: memory_device_pre_plug() refuses first (words per version)."""
    binary, version = qemu
    spec = MachineSpec(qemu_version=version, ram_size=2 * GiB, slots=0, maxmem=0,
                       numa=(GiB, GiB))
    refused = run_plan(binary, spec, [AddVirtioMem("v", GiB),
                                      AddVirtioMem("w", GiB + MiB, node=7)])
    assert len(refused) == 2 and all("maxmem option" in r for r in refused)


def test_check_order(qemu: tuple[str, tuple[int, int]]) -> None:
    """Two faults at once: which one QEMU names (issue 26's virtio-mem gaps)."""
    binary, version = qemu
    spec = MachineSpec(qemu_version=version, **SPEC)  # type: ignore[arg-type]
    refused = run_plan(binary, spec, [
        AddVirtioMem("bad", GiB, block_size=3 * MiB, dynamic_memslots=True),
        AddVirtioMem("bad", GiB, block_size=4096, dynamic_memslots=True),
        AddVirtioMem("bad", GiB + MiB, block_size=4 * MiB),
        AddVirtioMem("bad", GiB + MiB, requested=MiB),
        AddVirtioMem("bad", GiB + MiB, node=7),
        AddVirtioMem("bad", GiB + MiB, addr=4 * GiB + MiB),
        AddVirtioMem("bad", GiB + 2 * MiB, block_size=4 * MiB, node=7),
        AddVirtioMem("bad", GiB, dynamic_memslots=True, unplugged_inaccessible=False),
        AddVirtioMem("bad", GiB, node=7, dynamic_memslots=True, unplugged_inaccessible=False),
    ])
    assert len(refused) == 9


@pytest.mark.parametrize("mver", [(7, 0), (8, 0), (8, 1)])
def test_unplugged_inaccessible_default(qemu: tuple[str, tuple[int, int]],
                                        mver: tuple[int, int]) -> None:
    """unplugged-inaccessible's default per machine type, seen through
    device_del and dynamic-memslots (QEMU 8.1+ only has the 8.x types)."""
    binary, version = qemu
    if mver > version:
        pytest.skip(f"QEMU {version[0]}.{version[1]} has no machine type {mver}")
    spec = MachineSpec(qemu_version=version, machine_version=mver,
                       **SPEC)  # type: ignore[arg-type]
    run_plan(binary, spec, [AddVirtioMem("v", GiB), RemoveDevice("v"),
                            AddVirtioMem("w", GiB, dynamic_memslots=True), RemoveDevice("w")])
