"""A fake VM for unit tests of the run loop (harness.run), as QEMU's python
tests use a null protocol: no QEMU, no guest, no I/O.

FakeVM answers what the runner and the pc-dimm acts ask of a VM.  Its
"QEMU" places DIMMs with memhp's own model (so it agrees with the model by
construction: these tests check the loop's bookkeeping, never the model);
its "guest" adds a DIMM's blocks offline (no auto-online), onlines them in
Movable or Normal as asked, and can be told to refuse an eject
(``refuse_eject``) or a block's offline (``busy``).  Real QEMU and real
guests are the end-to-end suite's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fakes import SEED_ZONES

from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import HotplugRefused
from harness.guest.parsers import (
    FreeMemory,
    MemoryBlock,
    MemorySysfs,
    NodeMeminfo,
    NumaHardware,
    NumaNodeInfo,
)
from harness.guest.readers import BlockChange, GuestMemoryView
from harness.guest.ssh import CommandResult
from harness.model.kernel import KernelPolicy
from harness.model.predict import predict
from harness.model.spec import MachineSpec, Operation, RemoveDevice

BLOCK = 128 << 20
BOOT_BLOCKS = tuple(range(0, 24)) + tuple(range(32, 56))  # 3G below 4G split, 3G above
NODE_TOTAL = 3 << 30


@dataclass
class _Block:
    node: int
    state: str = "offline"
    zone: str | None = None


class FakeTimeouts:
    def s(self, name: str) -> float:
        return 0.5


class FakeQMP:
    def cursor(self) -> int:
        return 0

    def events(self, since: int) -> list[Any]:
        return []


@dataclass
class FakeShell:
    vm: FakeVM

    def run(self, argv: list[str], **_: Any) -> CommandResult:
        assert argv[:3] == ["grep", "-sH", "."], argv  # block_states()
        lines = []
        for path in argv[3:]:
            number = int(path.split("/memory")[-1].split("/")[0])
            block = self.vm.blocks.get(number)
            if block is not None:
                lines.append(f"{path}:{block.state}")
        return CommandResult(argv, 0, "\n".join(lines), "", 0.0)


@dataclass
class FakeGuest:
    vm: FakeVM

    def kernel_policy(self) -> KernelPolicy:
        return KernelPolicy(release="6.1.0-56-cloud-amd64", zones=SEED_ZONES)

    def kernel_log(self) -> list[Any]:
        return []

    def memory_sysfs(self) -> MemorySysfs:
        blocks = [MemoryBlock(n, "online", 0 if n < 32 else 1, ("Normal",), True, n)
                  for n in BOOT_BLOCKS]
        blocks += [MemoryBlock(n, b.state, b.node, (b.zone,) if b.zone else
                               ("Normal", "Movable"), True, n)
                   for n, b in sorted(self.vm.blocks.items())]
        return MemorySysfs(BLOCK, "offline", tuple(sorted(blocks, key=lambda b: b.number)))

    def _totals(self) -> dict[int, int]:
        totals = {0: NODE_TOTAL, 1: NODE_TOTAL}
        for b in self.vm.blocks.values():
            if b.state == "online":
                totals[b.node] += BLOCK
        return totals

    def snapshot(self) -> GuestMemoryView:
        totals = self._totals()
        return GuestMemoryView(self.memory_sysfs(),
                               {n: NodeMeminfo(n, {"MemTotal": t}) for n, t in totals.items()},
                               {"MemTotal": sum(totals.values())})

    def numactl(self) -> NumaHardware:
        return NumaHardware(tuple(NumaNodeInfo(n, (), t >> 20, 0)
                                  for n, t in self._totals().items()), ())

    def free(self) -> FreeMemory:
        return FreeMemory(sum(self._totals().values()), 0, 0, 0, 0, 0, 0, 0, 0)

    def online_blocks(self, numbers: list[int], policy: str) -> list[BlockChange]:
        for n in numbers:
            self.vm.blocks[n].state = "online"
            self.vm.blocks[n].zone = "Movable" if policy == "online_movable" else "Normal"
        return [BlockChange(n, True) for n in numbers]

    def offline_blocks(self, numbers: list[int]) -> list[BlockChange]:
        out = []
        for n in numbers:
            if n in self.vm.busy:
                out.append(BlockChange(n, False, "Device or resource busy"))
                continue
            self.vm.blocks[n].state, self.vm.blocks[n].zone = "offline", None
            out.append(BlockChange(n, True))
        return out


@dataclass
class FakeVM:
    spec: MachineSpec
    refuse_eject: set[str] = field(default_factory=set)
    busy: set[int] = field(default_factory=set)  # blocks whose offline answers EBUSY
    paused: bool = False
    pid: int | None = None
    ops: list[Operation] = field(default_factory=list)  # what "QEMU" carried out
    blocks: dict[int, _Block] = field(default_factory=dict)
    memory_devices: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.guest = FakeGuest(self)
        self.shell = FakeShell(self)
        self.qmp = FakeQMP()
        self.timeouts = FakeTimeouts()

    def _placed(self) -> tuple[Any, ...]:
        return predict(self.spec, self.ops).final.of("pc-dimm")

    def check_alive(self) -> None:
        pass

    def serial_tail(self) -> str:
        return ""

    def execute(self, command: str, args: dict[str, Any] | None = None, **_: Any) -> Any:
        self.commands.append(command)
        if command == "query-status":
            return {"status": "paused" if self.paused else "running"}
        assert command == "query-memory-devices", command
        return [{"type": "dimm", "data": {"id": d.id, "addr": d.addr, "size": d.size,
                                          "node": d.node, "slot": d.slot, "memdev": "m",
                                          "hotplugged": True}} for d in self._placed()]

    def hot_add(self, dimm_id: str, size: int, node: int, addr: int | None = None,
                backend: Any = None) -> None:
        self.commands.append(f"device_add {dimm_id}")
        self.ops.append(AddDimm(dimm_id, size, node, addr))
        if not self.paused:
            self._guest_adds(dimm_id)

    def _guest_adds(self, dimm_id: str) -> None:
        d = next(d for d in self._placed() if d.id == dimm_id)
        for n in d.blocks:
            self.blocks[n] = _Block(d.node)

    def hot_remove(self, dimm_id: str) -> None:
        self.commands.append(f"device_del {dimm_id}")
        if dimm_id in self.refuse_eject:
            raise HotplugRefused(dimm_id, 1, "the fake guest keeps it")
        d = next(d for d in self._placed() if d.id == dimm_id)
        self.ops.append(RemoveDevice(dimm_id))
        for n in d.blocks:
            self.blocks.pop(n, None)

    def request_unplug(self, dimm_id: str) -> Any:
        """device_del while paused (or wait = false): QEMU keeps the DIMM
        until the guest ejects it (wait_unplugged)."""
        self.commands.append(f"device_del {dimm_id} (request)")
        return dimm_id

    def wait_unplugged(self, request: Any, timeout: float | None = None) -> None:
        d = next(d for d in self._placed() if d.id == request)
        self.ops.append(RemoveDevice(request))
        for n in d.blocks:
            self.blocks.pop(n, None)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        for d in self._placed():
            if d.blocks and d.blocks[0] not in self.blocks:
                self._guest_adds(d.id)
