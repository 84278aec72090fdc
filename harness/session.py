"""Run a scenario on a real VM and check every step against the model.

The flow of ``memhp run``: predict the whole plan (refusals end the run
before any VM starts), boot, take the guest's baseline, then for each step
act (QMP for DIMMs, SSH for block states), wait for the guest to reflect
the action, observe all three views once and compare them.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.devices.pc_dimm.model import PlacedDimm
from harness.devices.virtio_mem.rules import PlacedVirtioMem
from harness.errors import HarnessError, UsageError, VMError
from harness.guest.splats import LogMark, Splat, find_splats, mark_of, newer_than
from harness.guest.workload import (
    WorkloadSpec,
)
from harness.model.kernel import KernelMemory, KernelPolicy, UnmodelledKernel
from harness.model.predict import Prediction, predict
from harness.qemu.vm import VM
from harness.retry import wait_for
from harness.scenario import Scenario, Step
from harness.steps import ACTS
from harness.steps.workload import check_workloads, stop_workloads
from harness.verify import (
    ExpectedBlock,
    ExpectedVirtioMem,
    Mismatch,
    compare_blocks,
    compare_qemu,
    compare_totals,
)

log = logging.getLogger("harness.session")
SCHEMA_VERSION = 1


@dataclass
class StepResult:
    """What one step expected, what was observed, and how they differ."""

    index: int
    action: str
    expected: dict[str, Any]
    observed: dict[str, Any]
    mismatches: list[Mismatch]
    seconds: float
    latencies: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    splats: list[Splat] = field(default_factory=list)

    @property
    def unexpected_splats(self) -> list[Splat]:
        return [s for s in self.splats if not s.expected]

    @property
    def passed(self) -> bool:
        return not self.mismatches and self.error is None and not self.unexpected_splats

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "action": self.action, "passed": self.passed,
            "expected": self.expected, "observed": self.observed,
            "mismatches": [m.to_json() for m in self.mismatches],
            "seconds": round(self.seconds, 4),
            "latencies": {k: round(v, 4) for k, v in self.latencies.items()},
            "error": self.error,
            "splats": [sp.to_json() for sp in self.splats],
        }


@dataclass
class ExecResult:
    command: str
    status: int
    output: str
    findings: list[str] = field(default_factory=list)  # output patterns missed or forbidden
    changes: list[str] = field(default_factory=list)  # block changes the guest shows after it
    mismatches: list[Mismatch] = field(default_factory=list)  # model vs guest after it

    @property
    def passed(self) -> bool:
        return self.status == 0 and not self.findings and not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "status": self.status, "output": self.output,
                "passed": self.passed, "findings": list(self.findings),
                "changes": list(self.changes),
                "mismatches": [m.to_json() for m in self.mismatches]}


@dataclass
class RunResult:
    """The machine-readable outcome of a run (``memhp run --json``)."""

    scenario: str
    accel: str
    accel_reason: str
    qemu_version: str
    kernel: str
    steps: list[StepResult] = field(default_factory=list)
    exec: ExecResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    artifacts: str | None = None
    layout: dict[str, Any] = field(default_factory=dict)
    map: str | None = None
    policy: dict[str, Any] | None = None  # the guest kernel's hotplug policy inputs
    splats: list[Splat] = field(default_factory=list)  # at boot and after the last step
    # How the guest started: {"warm": bool, "state": key or None, "reason": ...}
    start: dict[str, Any] | None = None
    # The model's standing (harness.calibrate.ModelStatus): extrapolated
    # rules, calibrations, and on failure why the model may be behind
    model: dict[str, Any] | None = None

    @property
    def unexpected_splats(self) -> list[Splat]:
        return [s for s in self.splats if not s.expected]

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and not self.unexpected_splats
            and all(s.passed for s in self.steps)
            and (self.exec is None or self.exec.passed)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "result": "pass" if self.passed else "fail",
            "scenario": self.scenario,
            "accel": {"name": self.accel, "reason": self.accel_reason},
            "qemu_version": self.qemu_version,
            "kernel": self.kernel,
            "layout": self.layout,
            "policy": self.policy,
            "splats": [sp.to_json() for sp in self.splats],
            "steps": [s.to_json() for s in self.steps],
            "exec": None if self.exec is None else self.exec.to_json(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "start": self.start,
            "error": self.error,
            "artifacts": self.artifacts,
            "map": self.map,
            "model": self.model,
        }


def qemu_version(binary: str) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version`` (or ``unknown``)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    if len(words) > 3 and words[:3] == ["QEMU", "emulator", "version"]:
        return words[3]
    return "unknown"


def layout_json(prediction: Prediction) -> dict[str, Any]:
    """The model's layout (RAM split, device-memory region, block size)."""
    from dataclasses import asdict, is_dataclass

    layout = prediction.layout
    return asdict(layout) if is_dataclass(layout) else dict(vars(layout))


def _dimm_json(d: Any) -> dict[str, Any]:
    out = {"id": d.id, "addr": d.addr, "size": d.size, "node": d.node, "slot": d.slot}
    if hasattr(d, "blocks"):
        out["blocks"] = list(d.blocks)
        out["guest_accepts"] = d.guest_accepts
        if not d.guest_accepts:
            out["reason"] = d.reason
    return out


def block_states(vm: VM, numbers: list[int]) -> dict[int, str | None]:
    """The ``state`` of each block (None if absent), in one guest process."""
    paths = [f"/sys/devices/system/memory/memory{int(n)}/state" for n in numbers]
    res = vm.shell.run(["grep", "-sH", ".", *paths], timeout=vm.timeouts.s("command"),
                       check=False)
    out: dict[int, str | None] = dict.fromkeys(numbers)
    for line in res.stdout.splitlines():
        path, _, state = line.partition(":")
        num = int(path.split("/memory")[-1].split("/")[0])
        out[num] = state.strip()
    return out


def wait_blocks(vm: VM, numbers: list[int], *, present: bool = True,
                state: str | None = None, timeout: float | None = None) -> None:
    """Wait (bounded, one guest round trip per poll) until every block in
    ``numbers`` is present (in ``state`` if given), or all are gone
    (within ``timeout``, default the hot-add timeout)."""
    if not numbers:
        return

    def ready() -> bool | None:
        states = block_states(vm, numbers)
        if not present:
            return True if all(s is None for s in states.values()) else None
        if any(s is None for s in states.values()):
            return None
        if state is not None and any(s != state for s in states.values()):
            return None
        return True

    wait_for(ready, what=f"memory blocks {numbers[0]}..{numbers[-1]} to "
             f"{'appear' if present else 'go'}" + (f" {state}" if state else ""),
             timeout=timeout or vm.timeouts.s("hot_add"), first_interval=0.005,
             max_interval=0.1, abort=vm.check_alive, phase="hotplug",
             serial_tail=vm.serial_tail)


class Runner:
    """Executes a :class:`Scenario` on a started :class:`VM`.

    Two models predict every step: the QEMU side (:func:`harness.model.predict`:
    addresses, slots, blocks) and the kernel side
    (:class:`harness.model.kernel.KernelMemory`: block states, zones, what
    each ``state`` write answers, the bytes MemTotal gains), fed with the
    policy the guest reports at baseline.  Each step kind acts in its own
    module (:mod:`harness.steps`) and tells the kernel model what happened;
    observing and comparing is the same for all, so this stays a loop.
    """

    def __init__(self, scenario: Scenario, vm: VM, *, on_step: Callable[[StepResult], None]
                 | None = None) -> None:
        self.scenario = scenario
        self.vm = vm
        self.on_step = on_step
        self.prediction: Prediction = scenario.predict()
        self.block_size = self.prediction.layout.block_size
        self.policy: KernelPolicy | None = None
        self.kernel: KernelMemory | None = None
        self.boot_blocks: set[int] = set()
        self.baseline_nodes: dict[int, int] = {}
        self.baseline_total = 0
        self.steps: list[StepResult] = []
        self.steps_done: list[Step] = []
        self.dropped_removes: set[int] = set()  # indices of removes the guest refused
        # A removal that took effect later than its step: op index -> the op
        # index after which it happened (an unplug request a reset left
        # pending in QEMU is carried out at the next hot-add's GPE)
        self.op_after: dict[int, int] = {}
        self.log_mark = LogMark()  # where the last scan of the kernel log stopped
        self.boot_splats: list[Splat] = []
        self.step_expects: list[str] = []  # splats the kernel's answer in this step explains
        self.workloads: dict[str, WorkloadSpec] = {}
        self.refusals = scenario.expected_refusals()  # step index -> QEMU's predicted refusal
        self.step_notes: dict[str, Any] = {}  # what a step's act reports (e.g. migration)
        # Plugged while paused: the guest learns of them at resume
        self.pending_adds: list[str] = []
        # device_del sent, DEVICE_DELETED not yet seen: id -> (request, the
        # DIMM, the removal's index among the model's operations)
        self.pending_unplugs: dict[str, tuple[Any, PlacedDimm, int]] = {}
        self.reset_while_paused = False  # the guest boots at the next resume
        # virtio-mem resized while paused: id -> request, the guest acts at resume
        self.pending_resizes: dict[str, int] = {}
        # eject requests a reset left set in QEMU: id -> (request, op index)
        self.stale_unplugs: dict[str, tuple[Any, int]] = {}

    # -- baseline -----------------------------------------------------------
    def take_baseline(self) -> None:
        """Record the boot state and the kernel's hotplug policy; adopt the
        guest's block size if it differs from the model's default."""
        guest = self.vm.guest
        view = guest.snapshot()
        if not view.sysfs.blocks or not view.nodes:
            raise VMError(
                "the guest's baseline is empty (no memory blocks or no node meminfo): "
                "the guest cannot report its memory; see its dmesg", phase="observe")
        observed_bs = view.sysfs.block_size
        if observed_bs != self.block_size:
            log.warning("guest block size %d differs from the model's default %d; "
                        "re-predicting with the observed value", observed_bs, self.block_size)
            self.block_size = observed_bs
            self.repredict()
        self.policy = guest.kernel_policy()
        try:
            self.kernel = KernelMemory(self.policy, self.block_size)
        except UnmodelledKernel as exc:
            raise VMError(str(exc), phase="model") from exc
        # Cold-plugged DIMMs are the model's, not boot RAM: the ACPI driver
        # added them at boot as it adds a hot-added one (see KernelMemory.reboot).
        cold = sorted((d for d in self.prediction.boot.of("pc-dimm") if d.guest_accepts),
                      key=lambda d: d.slot)
        self.kernel.reboot((d.id, d.node, d.blocks, d.size) for d in cold)
        cold_blocks = {n for d in cold for n in d.blocks}
        self.boot_blocks = {b.number for b in view.sysfs.blocks} - cold_blocks
        self.set_baseline_totals(view)
        records = guest.kernel_log()
        self.log_mark = mark_of(records)
        self.boot_splats = find_splats(records, self.scenario.expect_splats)

    def scan_log(self, expected: tuple[str, ...] = ()) -> list[Splat]:
        """Kernel splats logged since the last scan (see harness.guest.splats)."""
        records = self.vm.guest.kernel_log()
        new, self.log_mark = newer_than(records, self.log_mark), mark_of(records)
        return find_splats(new, (*self.scenario.expect_splats, *expected))

    def set_baseline_totals(self, view: Any) -> None:
        online = self._online_bytes_by_node()
        self.baseline_nodes = {
            n: info.values["MemTotal"] - online.get(n, 0) for n, info in view.nodes.items()
        }
        self.baseline_total = view.meminfo["MemTotal"] - sum(online.values())

    def _effective_ops(self) -> list[int]:
        """The model's operations (indices) in the order they took effect."""
        n = len(self.scenario.model_ops())
        keep = [i for i in range(n) if i not in self.dropped_removes]
        return sorted(keep, key=lambda i: (self.op_after[i], 1) if i in self.op_after
                      else (i, 0))

    def repredict(self) -> None:
        ops = self.scenario.model_ops()
        spec = replace(self.scenario.machine, block_size=self.block_size)
        self.prediction = predict(spec, [ops[i] for i in self._effective_ops()])

    # -- expectations ---------------------------------------------------------
    def _ops_done(self) -> int:
        done = sum(1 for s in self.steps_done if s.is_model_op)  # ops 0..done-1 acted
        return sum(1 for i in self._effective_ops()
                   if i < done and self.op_after.get(i, i) < done)

    def current_dimms(self) -> tuple[PlacedDimm, ...]:
        done = self._ops_done()
        return (self.prediction.steps[done - 1] if done else self.prediction.boot).of("pc-dimm")

    def current_vmems(self) -> tuple[PlacedVirtioMem, ...]:
        done = self._ops_done()
        return self.prediction.steps[done - 1].of("virtio-mem") if done else ()

    def expected_vmems(self) -> list[ExpectedVirtioMem]:
        """QEMU's view of each virtio-mem: the model's placement and request,
        and the size the guest driver's model has plugged."""
        drivers = self.kernel.virtio_mem if self.kernel is not None else {}
        emptied = self.reset_while_paused  # virtio_mem_system_reset() unplugged all
        return [ExpectedVirtioMem(v.id, v.addr, v.size, v.block_size, v.node, v.requested,
                                  drivers[v.id].plugged_size
                                  if v.id in drivers and not emptied else 0)
                for v in self.current_vmems()]

    def expected_blocks(self) -> list[ExpectedBlock]:
        if self.kernel is None:
            return []
        k = self.kernel
        return [ExpectedBlock(b.number, b.node, b.state, b.zone, k.managed_bytes(b.number),
                              b.valid_zones) for b in k.block_view()]

    def _online_bytes_by_node(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for b in self.expected_blocks():
            if b.state == "online":
                out[b.node] = out.get(b.node, 0) + (b.managed_bytes or 0)
        return out

    # -- observation -------------------------------------------------------------
    def observe(self) -> tuple[dict[str, Any], list[Mismatch]]:
        if self.vm.paused or self.pending_unplugs:
            return self.observe_qemu_only()
        guest = self.vm.guest
        qemu_dimms, qemu_vmems = self.vm.query_memory()
        view = guest.snapshot()
        numactl = guest.numactl()
        free = guest.free()
        expected = self.expected_blocks()
        mism = compare_qemu(self.current_dimms(), qemu_dimms,
                            virtio_mem=self.expected_vmems(), observed_virtio_mem=qemu_vmems)
        mism += compare_blocks(expected, self.boot_blocks, view.sysfs.blocks)
        node_totals = {n: info.values["MemTotal"] for n, info in view.nodes.items()}
        mism += compare_totals(
            block_size=view.sysfs.block_size, expected=expected,
            baseline_nodes=self.baseline_nodes, observed_nodes=node_totals,
            baseline_total=self.baseline_total, observed_total=view.meminfo["MemTotal"],
            observed_free_total=free.total,
            observed_numactl_mib={n.node: n.size_mib for n in numactl.nodes},
        )
        observed = {
            "dimms": [_dimm_json(d) | {"addr": d.addr} for d in qemu_dimms],
            "virtio_mem": [asdict(v) for v in qemu_vmems],
            "blocks": [
                {"number": b.number, "state": b.state, "node": b.node, "zone": b.zone,
                 "valid_zones": list(b.valid_zones)}
                for b in view.sysfs.blocks if b.number not in self.boot_blocks
            ],
            "nodes": [{"node": n, "bytes": v} for n, v in sorted(node_totals.items())],
            "mem_total": view.meminfo["MemTotal"],
            "free_total": free.total,
            "numactl_mib": {str(n.node): n.size_mib for n in numactl.nodes},
        }
        return observed, mism

    def observe_qemu_only(self) -> tuple[dict[str, Any], list[Mismatch]]:
        """While the VM is paused the guest cannot answer: only QEMU's view
        is observed and compared.  A DIMM whose unplug is pending is still
        QEMU's until the guest ejects it (while paused: for sure; while the
        guest runs: maybe, so it is left out of the comparison)."""
        qemu_dimms, qemu_vmems = self.vm.query_memory()
        expected = list(self.current_dimms())
        seen = list(qemu_dimms)
        if self.vm.paused:
            expected += [d for _, d, _ in self.pending_unplugs.values()]
            why = "the VM is paused (QMP stop): the guest cannot be observed"
        else:
            seen = [d for d in seen if d.id not in self.pending_unplugs]
            why = "an unplug is in flight: the guest's view is a race until the next step"
        observed = {
            "dimms": [_dimm_json(d) for d in qemu_dimms],
            "guest": f"not observed: {why}; only QEMU's view is compared",
            "run_state": self.vm.execute("query-status", phase="observe").get("status"),
            "pending_unplugs": sorted(self.pending_unplugs),
        }
        # virtio-mem: requested-size is QEMU's at once, size the guest's
        # doing (unchanged while paused, 0 after a reset while paused)
        observed["virtio_mem"] = [asdict(v) for v in qemu_vmems]
        return observed, compare_qemu(expected, seen, virtio_mem=self.expected_vmems(),
                                      observed_virtio_mem=qemu_vmems)

    def expected_json(self) -> dict[str, Any]:
        online = self._online_bytes_by_node()
        nodes = sorted(set(self.baseline_nodes) | set(online))
        return {
            "dimms": [_dimm_json(d) for d in self.current_dimms()]
            + [_dimm_json(d) | {"unplug_pending": True}
               for _, d, _ in self.pending_unplugs.values()],
            "virtio_mem": [asdict(v) for v in self.expected_vmems()],
            "blocks": [
                {"number": b.number, "state": b.state, "node": b.node, "zone": b.zone,
                 "managed_bytes": b.managed_bytes, "valid_zones": list(b.valid_zones)}
                for b in self.expected_blocks()
            ],
            "nodes": [
                {"node": n, "bytes": self.baseline_nodes.get(n, 0) + online.get(n, 0),
                 "hotplug_online_bytes": online.get(n, 0)}
                for n in nodes
            ],
            "block_size": self.block_size,
        }

    # -- actions: one method per step kind -----------------------------------------
    def dimm(self, dimm_id: str) -> PlacedDimm:
        for d in self.current_dimms():
            if d.id == dimm_id:
                return d
        raise UsageError(f"DIMM {dimm_id!r} is not plugged at this step", value=dimm_id)

    def km(self) -> KernelMemory:
        if self.kernel is None:
            raise UsageError("take_baseline() must run before the steps")
        return self.kernel

    def adopt_guest_blocks(self, group: str | None = None) -> tuple[list[str], list[Mismatch]]:
        """Tell the model what the guest shows for blocks changed outside a
        step's own writes (``--exec``; an ACPI eject the guest refused, which
        re-onlines what it had offlined): an offlined block, or an onlined one
        in a zone one of the online types gives it.  A block in a zone no
        online type would give is a mismatch."""
        km = self.km()
        sysfs = self.vm.guest.memory_sysfs()
        changes: list[str] = []
        mism: list[Mismatch] = []
        for b in km.block_view():
            seen = sysfs.block(b.number)
            if (group is not None and b.group != group) or seen is None \
                    or (seen.state, seen.zone) == (b.state, b.zone):
                continue
            if seen.state == "offline":
                km.sync(b.number, "offline", None)
                changes.append(f"memory{b.number}: offlined (was {b.zone})")
                continue
            zones = {km.zone_for(t, b) for t in ("online", "online_kernel", "online_movable")}
            if seen.zone in zones:
                km.sync(b.number, "online", seen.zone)
                changes.append(f"memory{b.number}: onlined in {seen.zone}")
            else:
                mism.append(Mismatch("zone", f"memory{b.number}", "|".join(sorted(zones)),
                                     seen.zone, "guest"))
        return changes, mism

    def reconcile(self) -> tuple[list[str], list[Mismatch]]:
        """After ``--exec``: adopt what it did to the blocks, then compare
        everything again (a block that appeared or went is a mismatch there)."""
        changes, mism = self.adopt_guest_blocks()
        _, observed_mism = self.observe()
        return changes, mism + observed_mism

    def run_step(self, index: int, step: Step) -> StepResult:
        t0 = time.monotonic()
        lat: dict[str, float] = {}
        error: str | None = None
        mism: list[Mismatch] = []
        observed: dict[str, Any] = {}
        self.step_expects = []
        self.step_notes = {}
        splats: list[Splat] = []
        try:
            write_mism = ACTS[step.action](self, step, lat)
            observed, mism = self.observe()
            observed.update(self.step_notes)
            mism = write_mism + mism
            if self.workloads and "guest" not in observed:
                observed["workloads"], wl_mism = check_workloads(self)
                mism += wl_mism
        except HarnessError as exc:
            if isinstance(exc, VMError) and exc.phase in ("qemu", "guest", "launch"):
                raise
            error = f"{exc.phase} error: {exc}"
            try:
                observed, mism = self.observe()
            except HarnessError:
                observed, mism = {}, []
        try:
            if not self.vm.paused:  # the kernel log is read at the next step otherwise
                splats = self.scan_log((*step.expect_splat, *self.step_expects))
        except HarnessError as exc:
            error = error or f"{exc.phase} error: cannot read the kernel log: {exc}"
        result = StepResult(index, step.describe(), self.expected_json(), observed, mism,
                            time.monotonic() - t0, lat, error, splats)
        self.steps.append(result)
        if self.on_step:
            self.on_step(result)
        return result

    def run(self) -> list[StepResult]:
        self.steps_done = []
        self.take_baseline()
        try:
            for i, step in enumerate(self.scenario.steps):
                self.run_step(i, step)
        finally:
            if self.workloads:
                with contextlib.suppress(HarnessError):
                    stop_workloads(self)
        return self.steps


def grade_output(output: str, expect: tuple[str, ...], forbid: tuple[str, ...]) -> list[str]:
    """The output patterns a command's output misses (expect) or shows (forbid)."""
    import re

    out = [f"expected output not found: /{p}/" for p in expect
           if not re.search(p, output, re.M)]
    for p in forbid:
        m = re.search(p, output, re.M)
        if m:
            line = output[:m.start()].count("\n") + 1
            out.append(f"forbidden output /{p}/ at line {line}: "
                       f"{output.splitlines()[line - 1] if output.splitlines() else ''}")
    return out


def run_exec(vm: VM, command: str | None, script: Path | None) -> ExecResult | None:
    """Run the user's command or script in the guest after the steps."""
    if script is not None:
        remote = "/tmp/memhp-user-script"
        vm.shell.write_file(remote, script.read_bytes(), mode=0o755)
        res = vm.shell.run(["bash", remote], timeout=vm.timeouts.s("command") * 10,
                           check=False)
        return ExecResult(f"bash {shlex.quote(str(script))}", res.status,
                          res.stdout + res.stderr)
    if command is not None:
        res = vm.shell.run(["sh", "-c", command], timeout=vm.timeouts.s("command") * 10,
                           check=False)
        return ExecResult(command, res.status, res.stdout + res.stderr)
    return None
