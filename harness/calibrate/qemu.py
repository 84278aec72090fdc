"""The QEMU half of ``memhp calibrate``: the model against a QEMU binary
started paused (``-S``, no guest), shared with the project's model-vs-QEMU
tests (tests/integration).

A plan the model refuses at start-up must make QEMU exit with the model's
text on stderr; otherwise DIMMs are hot-added over QMP and
``query-memory-devices`` must report exactly the model's address, slot,
node and size, and every refused ``device_add`` must carry the error text
the model predicts for that version.  Each comparison is one
:class:`Comparison`; a disagreement carries the ``memhp model`` command
line that reproduces the model's side.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.devices.memory_device import DIMM_BACKEND
from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import HarnessError, PlanRefused, QMPCommandError
from harness.model.predict import predict
from harness.model.qemu_rules import CpuSpec
from harness.model.spec import MachineSpec, Operation
from harness.qemu.devices import backend_object, pc_dimm
from harness.qemu.qmp import QMPSession
from harness.retry import wait_for
from harness.units import GiB, MiB, format_size

KINDS = ("start", "placement", "refusal")


@dataclass(frozen=True)
class Comparison:
    """One thing the model and QEMU both answered."""

    what: str  # one of KINDS
    agree: bool
    detail: str = ""  # on disagreement: what each side said
    reproducer: str = ""  # `memhp model ...` giving the model's side

    def to_json(self) -> dict[str, object]:
        return {"what": self.what, "agree": self.agree, "detail": self.detail,
                "reproducer": self.reproducer}


@dataclass
class Tally:
    """Comparisons by kind, and the disagreements in full."""

    comparisons: list[Comparison] = field(default_factory=list)

    def add(self, c: Comparison) -> Comparison:
        self.comparisons.append(c)
        return c

    def counts(self) -> dict[str, tuple[int, int]]:
        """kind -> (agreed, compared)."""
        out = {k: (0, 0) for k in KINDS}
        for c in self.comparisons:
            agreed, total = out[c.what]
            out[c.what] = (agreed + c.agree, total + 1)
        return out

    @property
    def disagreements(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.agree]


def qemu_argv(binary: str, spec: MachineSpec, sock: Path) -> list[str]:
    """QEMU paused, no devices, with ``spec``'s memory options and QMP on ``sock``."""
    mem = f"{spec.ram_size >> 20}M"
    if spec.slots:
        mem += f",slots={spec.slots}"
    if spec.maxmem:
        mem += f",maxmem={spec.maxmem >> 20}M" if spec.maxmem % MiB == 0 else \
            f",maxmem={spec.maxmem}"
    # a 32-bit vCPU (lm=off) takes no phys-bits (QEMU sets 36 and refuses one)
    bits = f"phys-bits={spec.cpu.phys_bits}" if spec.cpu.long_mode else "lm=off"
    cpu = f"{spec.cpu.model},{bits}"
    if spec.cpu.model in ("amd", "intel"):
        cpu = f"qemu64,vendor={'AuthenticAMD' if spec.cpu.is_amd else 'GenuineIntel'},{bits}"
    machine = spec.machine_model
    if machine.arch == "aarch64":
        cpu = spec.cpu.model  # an arm64 vCPU has its own PA bits (harness.machines.arm64)
    argv = [binary, "-S", "-nodefaults", "-no-user-config", "-display", "none", "-accel", "tcg",
            "-machine", spec.machine_name, "-cpu", cpu, "-m", mem,
            "-qmp", f"unix:{sock},server=on,wait=off"]
    if machine.firmware:  # virt's ACPI (its GED: DIMM hotplug) needs firmware
        argv += ["-bios", machine.firmware]
    for i, size in enumerate(spec.numa):
        argv += ["-object", f"memory-backend-ram,id=mem{i},size={size >> 20}M",
                 "-numa", f"node,nodeid={i},memdev=mem{i}"]
    for i, d in enumerate(spec.coldplug):  # as harness.launch.coldplug_devices()
        argv += pc_dimm(d.id, backend_object(d.size, d.backend, backend_id=f"cold{i}"),
                        d.node, d.addr).cli()
    return argv


@contextmanager
def paused_qemu(binary: str, spec: MachineSpec, *, prefix: str = "memhp-modelq-",
                timeout: float = 20) -> Iterator[QMPSession]:
    """A QEMU started paused (-S) for ``spec``, connected over QMP; killed
    on exit.  ``timeout``: how long QEMU may take to open its socket."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(qemu_argv(binary, spec, sock), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        qmp = QMPSession(sock)
        try:
            wait_for(lambda: True if sock.exists() or proc.poll() is not None else None,
                     what="QMP socket", timeout=timeout)
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise HarnessError(f"QEMU {binary} exited at start-up: {err.strip()}")
            qmp.connect()
            yield qmp
        finally:
            qmp.close()
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


def model_refusal(spec: MachineSpec, ops: Sequence[Operation]) -> PlanRefused | None:
    """The model's refusal of the plan ``ops`` (its last step, when the
    plan up to it was accepted), or None when the model accepts it."""
    try:
        predict(spec, list(ops))
    except PlanRefused as exc:
        return exc
    return None


def reproducer(spec: MachineSpec, plan: Sequence[AddDimm] = ()) -> str:
    """The ``memhp model`` command line of ``spec`` and ``plan``."""
    mem = format_size(spec.ram_size)
    if spec.slots:
        mem += f",slots={spec.slots}"
    if spec.maxmem:
        mem += f",maxmem={format_size(spec.maxmem) if spec.maxmem % MiB == 0 else spec.maxmem}"
    cpu = f"{spec.cpu.model}," + (f"phys-bits={spec.cpu.phys_bits}" if spec.cpu.long_mode
                                   else "lm=off")
    if spec.cpu.model not in ("amd", "intel"):
        cpu += f",vendor={'AuthenticAMD' if spec.cpu.is_amd else 'GenuineIntel'}"
    words = ["memhp", "model", "--qemu-version", ".".join(map(str, spec.qemu_version)),
             "--machine", spec.machine_name, "--memory", mem,
             "--numa", ",".join(format_size(n) for n in spec.numa) or "''", "--cpu", cpu]
    for d in plan:
        where = "" if d.addr is None else f":{d.addr:#x}"
        words += ["--add", f"{d.id}:{format_size(d.size)}@{d.node}{where}"]
    return " ".join(words)


def check_start(binary: str, spec: MachineSpec, tally: Tally) -> Comparison:
    """QEMU starts exactly when the model predicts it does, and a refusal
    is QEMU's own text.  ``.agree`` and, on agreement, whether it started
    (``detail`` is "started" or "refused")."""
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
              if ": " in line and "deprecated" not in line]
    # a refused -device option prefixes QEMU's words with itself
    errors += [e.split(": ", 1)[-1] for e in errors if e.startswith("-device ")]
    agree = exited == (refusal is not None) and (refusal is None
                                                 or refusal.qemu_message in errors)
    if agree:
        return tally.add(Comparison("start", True, "refused" if exited else "started"))
    model_says = "starts" if refusal is None else f"refuses: {refusal.qemu_message}"
    qemu_says = f"exited: {err.strip()}" if exited else "started"
    return tally.add(Comparison("start", False, f"model {model_says}; QEMU {qemu_says}",
                                reproducer(spec)))


def plug(qmp: QMPSession, i: int, d: AddDimm) -> None:
    """object-add a RAM backend ``b{i}`` and device_add ``d`` on it."""
    qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": f"b{i}",
                               "size": d.size})
    args: dict[str, object] = {"driver": "pc-dimm", "id": d.id, "memdev": f"b{i}",
                               "node": d.node}
    if d.addr is not None:
        args["addr"] = d.addr
    try:
        qmp.execute("device_add", args)
    except QMPCommandError:
        qmp.execute("object-del", {"id": f"b{i}"})
        raise


def check_plan(binary: str, spec: MachineSpec, plan: Sequence[AddDimm], tally: Tally
               ) -> list[Comparison]:
    """Plug ``plan`` one by one into a paused QEMU; one comparison per
    refusal and per placed DIMM."""
    out: list[Comparison] = []
    with paused_qemu(binary, spec) as qmp:
        accepted: list[AddDimm] = []
        for i, d in enumerate(plan):
            refusal = model_refusal(spec, [*accepted, d])
            try:
                plug(qmp, i, d)
            except QMPCommandError as exc:
                if refusal is None:
                    out.append(tally.add(Comparison(
                        "refusal", False, f"model accepts {d.id}; QEMU refuses: {exc.desc}",
                        reproducer(spec, [*accepted, d]))))
                    continue
                # the model cannot know the backend id the driver picks (b{i} here)
                words = refusal.qemu_message.replace(DIMM_BACKEND, f"b{i}")
                same = exc.desc == words
                out.append(tally.add(Comparison(
                    "refusal", same, "" if same else
                    f"model: {words!r} ({refusal.kind}); QEMU: {exc.desc!r}",
                    "" if same else reproducer(spec, [*accepted, d]))))
                continue
            if refusal is not None:
                why = refusal.qemu_message or refusal.kind
                out.append(tally.add(Comparison(
                    "refusal", False, f"model refuses {d.id} ({why}); QEMU accepts",
                    reproducer(spec, [*accepted, d]))))
            accepted.append(d)
        seen = {x["data"]["id"]: x["data"] for x in qmp.execute("query-memory-devices")}
    try:
        placed = predict(spec, accepted).final.of("pc-dimm")
    except PlanRefused:  # QEMU accepted what the model refuses: counted above
        return out
    for p in placed:
        got = seen.pop(p.id, None)
        mine = (p.addr, p.slot, p.node, p.size)
        theirs = None if got is None else (got["addr"], got["slot"], got["node"], got["size"])
        same = mine == theirs
        out.append(tally.add(Comparison(
            "placement", same, "" if same else
            f"{p.id}: model (addr, slot, node, size) = {mine}; QEMU {theirs}",
            "" if same else reproducer(spec, accepted))))
    for extra in seen:
        out.append(tally.add(Comparison("placement", False,
                                        f"QEMU holds {extra}, the model does not",
                                        reproducer(spec, accepted))))
    return out


# -- the plans ----------------------------------------------------------------------------

_INTEL = CpuSpec("Intel", 40, "Skylake-Client")
#: Machines at and beyond each start-up limit the model knows (MachineSpec
#: keywords; no NUMA unless given).
START_UP: tuple[dict[str, object], ...] = (
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
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 980 * GiB, "cpu": _INTEL},
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 1000 * GiB, "cpu": _INTEL},
    # phys-bits=46 holds what 40 do not (a scenario's --cpu is the one checked)
    {"machine": "q35", "ram_size": 512 * MiB, "slots": 1, "maxmem": 2000 * GiB,
     "cpu": CpuSpec("AMD", 46, "max")},
    # maxmem not a multiple of 4 KiB (TARGET_PAGE_SIZE); 4 KiB but not 1 MiB starts
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB + 1},
    {"ram_size": 2 * GiB, "slots": 0, "maxmem": 4 * GiB + 2048},
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB + 4096},
    {"ram_size": 2 * GiB, "slots": 300, "maxmem": 4 * GiB + 1},  # slots come first
    # cold-plugged DIMMs: an id given twice is refused as QEMU parses -device,
    # before the -m checks (maxmem below RAM here)
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB,
     "coldplug": (AddDimm("c0", 128 * MiB), AddDimm("c0", 128 * MiB))},
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": GiB,
     "coldplug": (AddDimm("c0", 128 * MiB), AddDimm("c1", 128 * MiB), AddDimm("c0", GiB))},
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB,
     "coldplug": (AddDimm("c0", 128 * MiB), AddDimm("c1", 256 * MiB))},
    # a 32-bit vCPU (lm=off: 36 phys-bits, set by QEMU): 7.2 checks the 64-bit
    # PCI hole's end, 8.2+ the end of device memory (machine types 8.2+)
    *(dict[str, object](ram_size=2 * GiB, slots=2, maxmem=maxmem, machine=machine,
                        cpu=CpuSpec("AMD", 36, "qemu64", False))
      for maxmem in (20 * GiB, 60 * GiB, 61 * GiB, 62 * GiB, 80 * GiB)
      for machine in ("pc", "q35")),
    # phys-bits=32 on a 64-bit vCPU: 7.2 takes it as 32-bit (never refused)
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB, "cpu": CpuSpec("AMD", 32, "qemu64")},
    {"ram_size": 2 * GiB, "slots": 0, "maxmem": 0, "cpu": CpuSpec("AMD", 32, "qemu64")},
    # machine type 7.0: no AMD relocation either
    {"machine": "q35", "machine_version": (7, 0), "ram_size": 512 * MiB, "slots": 1,
     "maxmem": 976 * GiB},
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB, "numa": (GiB, 2 * GiB)},
    # QEMU 10.1+ no longer has six-year-old machine types (11.1: 4.0-5.1 gone)
    *({"machine": family, "machine_version": mver, "ram_size": 2 * GiB, "slots": 2,
       "maxmem": 4 * GiB} for family, mver in (("pc", (4, 0)), ("pc", (5, 1)), ("q35", (5, 0)),
                                              ("pc", (5, 2)), ("q35", (5, 2)))),
)


def start_up_case(version: tuple[int, int], kw: dict[str, object]) -> MachineSpec:
    return MachineSpec(qemu_version=version, **{"numa": (), **kw})  # type: ignore[arg-type]


def start_up_cases(version: tuple[int, int]) -> list[MachineSpec]:
    return [start_up_case(version, kw) for kw in START_UP]


def _seed(version: tuple[int, int]) -> tuple[MachineSpec, list[AddDimm]]:
    """The seed session's machine and every refusal it can meet."""
    return (MachineSpec(qemu_version=version, machine="pc", ram_size=6 * GiB, slots=3,
                        maxmem=8 * GiB),
            [AddDimm("d0", 130 * MiB, 0), AddDimm("d1", 128 * MiB, 1),
             AddDimm("d1", 128 * MiB, 0), AddDimm("d2", GiB, 5), AddDimm("d3", 129 * MiB, 0),
             AddDimm("d4", 128 * MiB, 0, 0x1C0000000), AddDimm("d5", 2 * GiB, 0),
             AddDimm("d6", 128 * MiB, 0), AddDimm("d7", 128 * MiB, 0)])


def _check_order(version: tuple[int, int]) -> tuple[MachineSpec, list[AddDimm]]:
    """Misaligned address *and* size: 7.2 names the address, 9.0+ the size;
    address 0 means first fit."""
    return (MachineSpec(qemu_version=version, machine="q35", ram_size=2 * GiB, slots=3,
                        maxmem=5 * GiB, numa=()),
            [AddDimm("d0", 129 * MiB, 0, 0x100000001), AddDimm("d0", 128 * MiB, 0, 0x100000001),
             AddDimm("z", 128 * MiB, 0, 0), AddDimm("d1", 128 * MiB, 1),
             AddDimm("d2", 128 * MiB, 0, 0x100000000)])


def _no_slots(version: tuple[int, int]) -> tuple[MachineSpec, list[AddDimm]]:
    return (MachineSpec(qemu_version=version, ram_size=2 * GiB, slots=0, maxmem=0, numa=()),
            [AddDimm("d0", 128 * MiB)])


def _maxmem_no_slots(version: tuple[int, int]) -> tuple[MachineSpec, list[AddDimm]]:
    """maxmem without slots: QEMU starts, and refuses every DIMM."""
    return (MachineSpec(qemu_version=version, ram_size=2 * GiB, slots=0, maxmem=4 * GiB,
                        numa=()), [AddDimm("d0", 128 * MiB)])


def _coldplug_backends(version: tuple[int, int]) -> tuple[MachineSpec, list[AddDimm]]:
    """Cold-plugged DIMMs over memfd (shared, and merge off) and RAM
    (prealloc) backends, then a hot-added one after them."""
    from harness.model.backend import BackendSpec

    cold = (AddDimm("c0", 256 * MiB, 0, backend=BackendSpec("memfd", share=True)),
            AddDimm("c1", 128 * MiB, 1, backend=BackendSpec("memfd", merge=False)),
            AddDimm("c2", 128 * MiB, 0, backend=BackendSpec("ram", prealloc=True)))
    return (MachineSpec(qemu_version=version, ram_size=2 * GiB, slots=4, maxmem=4 * GiB,
                        numa=(GiB, GiB), coldplug=cold), [AddDimm("d0", 128 * MiB, 1)])


#: The targeted plans by name: the seed session's refusals and the check
#: order of each refusal.
TARGETED: dict[str, Callable[[tuple[int, int]], tuple[MachineSpec, list[AddDimm]]]] = {
    "seed": _seed, "check-order": _check_order, "no-slots": _no_slots,
    "maxmem-no-slots": _maxmem_no_slots, "coldplug-backends": _coldplug_backends,
}


def targeted_plans(version: tuple[int, int]) -> list[tuple[MachineSpec, list[AddDimm]]]:
    return [make(version) for make in TARGETED.values()]


SIZES = (2 * MiB, 128 * MiB, 130 * MiB, 129 * MiB, 256 * MiB, 512 * MiB, GiB)


def random_plan(version: tuple[int, int], rng: random.Random
                ) -> tuple[MachineSpec, list[AddDimm]]:
    """A machine with two nodes and up to six DIMMs: sizes aligned or not,
    first fit, address 0, aligned and misaligned explicit addresses."""
    ram = rng.randint(1, 6) * GiB
    spec = MachineSpec(qemu_version=version, machine=rng.choice(("pc", "q35")), ram_size=ram,
                       slots=4, maxmem=ram + 2 * GiB, numa=(ram // 2, ram - ram // 2))
    base = predict(spec, []).layout.device_base
    plan = []
    for i in range(rng.randint(1, 6)):
        where = rng.choice((None, 0, 1, 3))
        addr = None if where is None else 0 if where == 0 else \
            base + where * GiB - (MiB if where == 3 else 0)
        plan.append(AddDimm(f"d{i}", rng.choice(SIZES), rng.randint(0, 2), addr))
    return spec, plan


def calibrate_qemu(binary: str, version: tuple[int, int], *, plans: int = 40, seed: int = 0,
                   progress: Callable[[str], None] = lambda _: None) -> Tally:
    """Every targeted case, then ``plans`` random plans (``seed``)."""
    import logging

    # A refused start-up closes QMP mid-greeting: qemu.qmp logs that as an
    # ERROR, which here is the expected outcome, not news.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    tally = Tally()
    cases = start_up_cases(version)
    for spec in cases:
        check_start(binary, spec, tally)
    progress(f"start-up cases {len(cases)}/{len(cases)}")
    for spec, plan in targeted_plans(version):
        check_plan(binary, spec, plan, tally)
    progress("targeted plans done")
    rng = random.Random(seed)
    for i in range(plans):
        spec, plan = random_plan(version, rng)
        check_plan(binary, spec, plan, tally)
        if (i + 1) % 10 == 0 or i + 1 == plans:
            progress(f"random plans {i + 1}/{plans}")
    return tally
