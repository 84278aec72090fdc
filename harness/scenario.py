"""A run's plan: the machine, the guest options and the steps.

Built from CLI options (:func:`scenario_from_options`) or a TOML file
(:func:`load_scenario`), validated once: unknown keys, wrong types and bad
values are :class:`UsageError` naming the key and the fix, before any VM
starts.  The model is consulted for the whole plan here too, so a plan QEMU
would refuse is refused up front (exit 2).

TOML format::

    name = "seed"
    [machine]
    type = "pc"                              # or "q35"
    memory = "6G,slots=32,maxmem=32G"        # as QEMU's -m
    numa = "3G,3G"                           # boot memory per node
    smp = 2
    coldplug = ["cold0:512M@0"]              # pc-dimms on the command line, or tables
    # coldplug = [{dimm = "cold0:512M@0", backend = "memfd", share = true}]
    [guest]
    append = ["memhp_default_state=online_movable"]   # extra kernel cmdline
    [[step]]
    add = "dimm0:1G@1"                       # id:size@node[:addr]
    [[step]]
    add = "h0:1G@1"
    backend = "memfd"                        # ram (default) | file | memfd
    hugepages = "2M"                         # none (default) | 2M | 1G
    share = true                             # and prealloc, reserve, dump, merge
    prealloc = true
    prealloc_threads = 2
    host_nodes = "0"                         # host NUMA nodes ("0-1", "0,2")
    policy = "bind"                          # default | bind | preferred | interleave
    # file backends: mem_path = "/dir/or/file", discard_data = true
    [[step]]
    online = "dimm0"
    policy = "online_movable"                # online | online_kernel | online_movable
    [[step]]
    offline = "dimm0"
    [[step]]
    remove = "dimm0"
    [[step]]
    reset = true                             # system_reset, wait for the guest
    [[step]]
    migrate = true                           # live-migrate to a new QEMU
    [[step]]
    pause = true                             # QMP stop (then resume = true: cont)
    [[step]]
    reboot = true                            # reboot -f inside the guest
    [[step]]
    remove = "dimm0"
    wait = false                             # device_del only; reset must follow
    [[step]]
    add = "vmem0:4G@1"                       # a virtio-mem-pci of max-size 4G on node 1
    device = "virtio-mem"                    # (optional: block_size, memaddr,
    requested = "1G"                         #  unplugged_inaccessible, dynamic_memslots)
    [[step]]
    resize = "vmem0"                         # qom-set requested-size
    requested = "3G"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness.devices.pc_dimm.ops import AddDimm, parse_dimm_option
from harness.devices.virtio_mem.ops import AddVirtioMem, ResizeVirtioMem
from harness.errors import PlanRefused, UsageError, check_readable_file, read_small_file
from harness.guest.workload import WorkloadSpec
from harness.model.backend import RAM, BackendSpec, parse_host_nodes, parse_hugepages
from harness.model.predict import Prediction, predict
from harness.model.qemu_rules import CpuSpec, parse_machine_type
from harness.model.qemu_rules.host import HostMemory
from harness.model.spec import (
    MachineSpec,
    Operation,
    RemoveDevice,
    parse_memory_option,
    parse_numa_option,
)
from harness.units import parse_size

Policy = Literal["online", "online_kernel", "online_movable"]
POLICIES: tuple[str, ...] = ("online", "online_kernel", "online_movable")
ACTIONS = ("add", "resize", "online", "offline", "remove", "reset", "workload", "migrate",
           "pause", "resume", "reboot")
# Steps written ``KEY = true`` (no DIMM, no other keys)
FLAG_ACTIONS = ("reset", "migrate", "pause", "resume", "reboot")
# Steps that need the guest running (they act over SSH)
GUEST_ACTIONS = ("online", "offline", "workload", "reboot")
DEVICES = ("pc-dimm", "virtio-mem")
_VMEM_KEYS = {"device", "requested", "block_size", "memaddr", "unplugged_inaccessible",
              "dynamic_memslots"}
# Bounds on what a scenario may ask for (a scenario file is input, maybe hostile).
MAX_STEPS = 1000
MAX_SMP = 64
MAX_SCENARIO_BYTES = 1 << 20
MAX_SCRIPT_BYTES = 16 << 20
_NAME_FIX = "use letters, digits, '-', '.' and '_' (at most 64), e.g. remove-readd"


@dataclass(frozen=True)
class Step:
    """One action of the plan."""

    action: Literal["add", "resize", "online", "offline", "remove", "reset", "workload",
                    "migrate", "pause", "resume", "reboot"]
    dimm: str = ""
    add: AddDimm | None = None
    vmem: AddVirtioMem | None = None  # add of a virtio-mem-pci
    requested: int | None = None  # resize: the new requested-size
    policy: Policy | None = None
    workload: WorkloadSpec | None = None
    # An add QEMU is expected to refuse ("" = any refusal, else a regex of its words)
    expect_refusal: str | None = None
    # remove: wait for DEVICE_DELETED (False: only send device_del; the next
    # step, a reset, decides what becomes of the request)
    wait: bool = True

    @property
    def is_model_op(self) -> bool:
        """An operation that changes the memory devices (a refused one changes nothing)."""
        return self.action in ("add", "remove", "resize") and self.expect_refusal is None
    expect_splat: tuple[str, ...] = ()  # regexes of kernel splats this step may print

    def model_op(self) -> Operation | None:
        """The model's operation for this step (refused or not)."""
        if self.action == "add":
            return self.vmem if self.vmem is not None else self.add
        if self.action == "remove":
            return RemoveDevice(self.dimm)
        if self.action == "resize" and self.requested is not None:
            return ResizeVirtioMem(self.dimm, self.requested)
        return None

    def describe(self) -> str:
        if self.action == "add" and self.vmem is not None:
            v = self.vmem
            where = f" at {v.addr:#x}" if v.addr is not None else ""
            return (f"add virtio-mem {self.dimm} ({v.size >> 20} MiB, node {v.node}{where}, "
                    f"requested {v.requested >> 20} MiB)")
        if self.action == "resize" and self.requested is not None:
            return f"resize {self.dimm} to {self.requested >> 20} MiB"
        if self.action == "add" and self.add is not None:
            where = f" at {self.add.addr:#x}" if self.add.addr is not None else ""
            be = f", {self.add.backend.describe()}" if self.add.backend != RAM else ""
            return (f"add {self.dimm} ({self.add.size >> 20} MiB, node {self.add.node}{where}"
                    f"{be})")
        if self.action == "online":
            return f"{self.policy} {self.dimm}"
        if self.action == "reset":
            return "system_reset"
        if self.action == "migrate":
            return "migrate to a new QEMU"
        if self.action == "pause":
            return "pause (QMP stop)"
        if self.action == "resume":
            return "resume (QMP cont)"
        if self.action == "reboot":
            return "reboot from inside the guest"
        if self.action == "remove" and not self.wait:
            return f"remove {self.dimm} (device_del only)"
        if self.action == "workload" and self.workload is not None:
            w = self.workload
            return f"workload {w.id} ({w.size >> 20} MiB on node {w.node})"
        return f"{self.action} {self.dimm}"


@dataclass(frozen=True)
class Scenario:
    """A validated plan; ``machine`` is the model's description of the VM."""

    name: str
    machine: MachineSpec
    steps: tuple[Step, ...]
    smp: int = 2
    append: tuple[str, ...] = ()
    exec_cmd: str | None = None
    script: Path | None = None
    auto_online: Policy | None = field(default=None)
    expect_splats: tuple[str, ...] = ()  # regexes of kernel splats any step may print
    exec_expect: tuple[str, ...] = ()  # regexes the --exec/--script output must show
    exec_forbid: tuple[str, ...] = ()  # regexes it must not show

    def model_ops(self) -> list[Operation]:
        ops: list[Operation] = []
        for step in self.steps:
            op = step.model_op() if step.is_model_op else None
            if op is not None:
                ops.append(op)
        return ops

    def expected_refusals(self) -> dict[int, PlanRefused]:
        """For each add expected to be refused: the model's refusal (step index ->
        error with QEMU's words).  A UsageError when the model predicts that
        QEMU accepts it, or refuses it in other words than the step expects."""
        out: dict[int, PlanRefused] = {}
        for i, step in enumerate(self.steps):
            op = step.model_op()
            if step.expect_refusal is None or op is None:
                continue
            before = replace(self, steps=self.steps[:i]).model_ops()
            try:
                predict(self.machine, [*before, op])
            except PlanRefused as exc:
                words = getattr(exc, "qemu_message", "") or str(exc)
                if step.expect_refusal and not re.search(step.expect_refusal, words):
                    raise UsageError(
                        f"step {i + 1}: expects QEMU to refuse with {step.expect_refusal!r}, "
                        f"but the model predicts {words!r}", value=step.expect_refusal,
                        fix="match QEMU's words (see `memhp model`)") from None
                out[i] = exc
                continue
            raise UsageError(f"step {i + 1}: expects QEMU to refuse {step.describe()}, but the "
                             "model predicts QEMU accepts it", value=step.dimm,
                             fix="drop expect_refusal, or change the DIMM")
        return out

    def predict(self, block_size: int | None = None) -> Prediction:
        spec = self.machine
        if block_size is not None and block_size != spec.block_size:
            from dataclasses import replace

            spec = replace(spec, block_size=block_size)
        return predict(spec, self.model_ops())


def auto_online_from_append(append: Sequence[str]) -> Policy | None:
    """The policy ``memhp_default_state=`` asks for, if any (last one wins)."""
    policy: str | None = None
    for word in append:
        if word.startswith("memhp_default_state="):
            policy = word.split("=", 1)[1]
    if policy is None or policy == "offline":
        return None
    if policy not in POLICIES:
        raise UsageError(
            f"memhp_default_state={policy!r} is not a kernel online type", value=policy,
            fix="use online, online_kernel, online_movable or offline",
        )
    return policy  # type: ignore[return-value]


def _check_policy(value: object, where: str) -> Policy:
    if value not in POLICIES:
        raise UsageError(f"{where}: online policy {value!r} unknown", value=value,
                         fix="use online, online_kernel or online_movable")
    return value  # type: ignore[return-value]


def build_scenario(
    *,
    name: str,
    machine: str,
    memory: str,
    numa: str | None,
    steps: Sequence[Step],
    smp: int = 2,
    append: Sequence[str] = (),
    exec_cmd: str | None = None,
    script: Path | None = None,
    qemu_version: tuple[int, int] | None = None,
    host: HostMemory | None = None,
    cpu: CpuSpec | None = None,
    coldplug: Sequence[str | AddDimm] = (),
) -> Scenario:
    """Validate everything and ask the model whether QEMU accepts the plan.
    ``machine`` is pc, q35 or a versioned pc-i440fx-X.Y/pc-q35-X.Y; ``host``
    the host's memory facts, when the caller read them."""
    mtype = parse_machine_type(machine)
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name, re.ASCII):
        raise UsageError(f"scenario name {name!r} is not a valid name", value=name,
                         fix=_NAME_FIX)
    if isinstance(smp, bool) or not isinstance(smp, int) or not 1 <= smp <= MAX_SMP:
        raise UsageError(f"smp {smp!r} is out of range", value=smp,
                         fix=f"give 1 to {MAX_SMP} vCPUs")
    if len(steps) > MAX_STEPS:
        raise UsageError(f"{len(steps)} steps exceed the limit of {MAX_STEPS}", value=len(steps),
                         fix=f"split the scenario into files of at most {MAX_STEPS} steps")
    ram, slots, maxmem = parse_memory_option(memory)
    nodes = parse_numa_option(numa) if numa else ()
    kwargs: dict[str, Any] = {}
    if qemu_version is not None:
        kwargs["qemu_version"] = qemu_version
    if cpu is not None:
        kwargs["cpu"] = cpu
    cold = tuple(c if isinstance(c, AddDimm) else parse_dimm_option(c) for c in coldplug)
    for d in cold:
        if d.backend.kind == "file":
            raise UsageError(f"cold-plugged DIMM {d.id!r}: a file backend is only for hot-added "
                             "DIMMs (its file is chosen and checked when it is plugged)",
                             value=d.id, fix='use backend = "memfd" or "ram", or add it with '
                                             "a step")
    spec = MachineSpec(machine=mtype.family, ram_size=ram, slots=slots, maxmem=maxmem,
                       numa=tuple(nodes), machine_version=mtype.version, host=host,
                       coldplug=cold, **kwargs)
    known: set[str] = {d.id for d in cold}
    vmems: set[str] = set()
    for i, step in enumerate(steps):
        if step.action == "add" and step.expect_refusal is None:
            known.add(step.dimm)
            if step.vmem is not None:
                vmems.add(step.dimm)
        elif step.action in ("online", "offline") and step.dimm in vmems:
            raise UsageError(
                f"step {i + 1}: {step.action} of virtio-mem {step.dimm!r} is not modelled "
                "(onlining its blocks lets the driver plug more, see "
                "harness.devices.virtio_mem.driver)", value=step.dimm,
                fix="choose the online policy with [guest].append memhp_default_state=")
        elif step.action in ("online", "offline", "resize") and step.dimm not in known:
            raise UsageError(f"step {i + 1}: {step.action} of {step.dimm!r}, which no earlier "
                             "step adds", value=step.dimm, fix="add the device first")
        elif step.action == "resize" and step.dimm not in vmems:
            raise UsageError(f"step {i + 1}: resize of {step.dimm!r}, which is not a "
                             "virtio-mem device", value=step.dimm,
                             fix='add it with device = "virtio-mem"')
    check_lifecycle(steps)
    check_virtio_mem_lifecycle(steps, vmems)
    check_workloads(steps, spec)
    if script is not None:
        check_readable_file(script, "script", "give the path of a shell script to run in the "
                            "guest", max_bytes=MAX_SCRIPT_BYTES)
    scenario = Scenario(
        name=name, machine=spec, steps=tuple(steps), smp=smp, append=tuple(append),
        exec_cmd=exec_cmd, script=script, auto_online=auto_online_from_append(append),
    )
    scenario.predict()  # raises PlanRefused before any VM starts
    scenario.expected_refusals()  # and every expected refusal must be predicted
    return scenario


def check_workloads(steps: Sequence[Step], spec: MachineSpec) -> None:
    """Workloads before any VM: a node the machine has, an id used once, and
    a size below what the node can ever hold (its boot memory and every
    device the plan adds there up to that step: the data sits in tmpfs
    bound to that node)."""
    seen: set[str] = set()
    nodes = spec.node_boot_bytes()
    room = list(nodes)
    for d in spec.coldplug:
        if 0 <= d.node < len(room):
            room[d.node] += d.size
    for i, step in enumerate(steps):
        if step.action == "add" and step.add is not None and 0 <= step.add.node < len(room):
            room[step.add.node] += step.add.size
        w = step.workload
        if step.action != "workload" or w is None:
            continue
        where = f"step {i + 1} (workload {w.id!r})"
        if w.id in seen:
            raise UsageError(f"{where}: the id is used by an earlier workload", value=w.id,
                             fix="give each workload its own id")
        seen.add(w.id)
        if not 0 <= w.node < len(nodes):
            raise UsageError(f"{where}: node {w.node} does not exist (the machine has "
                             f"{len(nodes)} node(s))", value=w.node,
                             fix=f"use a node from 0 to {len(nodes) - 1}")
        if w.size >= room[w.node]:
            raise UsageError(f"{where}: {w.size >> 20} MiB is not below the "
                             f"{room[w.node] >> 20} MiB node {w.node} can hold by then (boot "
                             "memory and the devices added there)", value=w.size,
                             fix="make the workload smaller than the node's memory")


def check_virtio_mem_lifecycle(steps: Sequence[Step], vmems: set[str]) -> None:
    """virtio-mem devices are added and removed with the guest running (the
    driver plugs; memhp waits on the guest's blocks): no add or remove of
    one while paused or with ``wait = false``.  A ``resize`` while paused is
    QEMU's at once (requested-size) and the guest's after ``resume``
    (:mod:`harness.steps.virtio_mem`); a ``migrate`` carries every
    virtio-mem to the destination, pinned (:data:`harness.qemu.devices.PINNED_PROPS`)."""
    paused = False
    resized: list[str] = []  # resized while paused, the guest not told yet
    for i, step in enumerate(steps):
        where = f"step {i + 1} ({step.action})"
        if step.action in ("pause", "resume"):
            paused = step.action == "pause"
            resized = []
        is_vmem = step.vmem is not None or (step.action == "remove" and step.dimm in vmems)
        if is_vmem and (paused or not step.wait):
            raise UsageError(f"{where}: a virtio-mem is added and removed with the guest "
                             "running (its driver acts, memhp waits on it)", value=step.dimm,
                             fix="resume first, and leave wait at its default")
        if step.action == "resize" and paused and step.expect_refusal is None:
            resized.append(step.dimm)
        if step.action == "migrate" and resized:
            # The config-change interrupt raised while paused would have to
            # travel in the interrupt controller's state: not checked live.
            raise UsageError(f"{where}: the resize of {', '.join(resized)} while paused has "
                             "not reached the guest yet; migrating it is not modelled",
                             value=resized, fix="resume before migrating")


def check_lifecycle(steps: Sequence[Step]) -> None:
    """The order of pause/resume, unwaited removals and migrations.

    - ``pause`` only when running, ``resume`` only when paused, and nothing
      that needs the guest (online, offline, workload, reboot) in between;
      a ``reset`` while paused resets the machine, which boots at ``resume``
      (no ``migrate`` in between: the machine has not booted);

    - a removal while paused, or one with ``wait = false``, is pending until
      ``resume`` (paused) or the next ``reset``; ``wait = false`` on a
      running guest must be followed by ``reset`` at once (what the guest
      does meanwhile is a race the reset step reads from QEMU's events);
    - the run ends running (the exec, the workloads' end and the kernel log
      need the guest);
    - no ``migrate`` while an unplug is pending: QEMU does not migrate the
      request (``is_removing`` is not in ``vmstate_memhp_sts``,
      hw/acpi/memory_hotplug.c v7.2.0), so the destination would forget it.
    """
    paused_at: int | None = None
    reset_paused = False
    pending: list[str] = []
    for i, step in enumerate(steps):
        where = f"step {i + 1} ({step.action})"
        if step.action == "pause" and paused_at is not None:
            raise UsageError(f"{where}: the VM is already paused (step {paused_at + 1})",
                             value=step.action, fix="resume before pausing again")
        if step.action == "resume" and paused_at is None:
            raise UsageError(f"{where}: the VM is not paused", value=step.action,
                             fix="pause before resume")
        if step.action in GUEST_ACTIONS and paused_at is not None:
            raise UsageError(f"{where} needs the guest running, but the VM is paused since "
                             f"step {paused_at + 1}", value=step.action,
                             fix="put resume = true before it")
        if step.action == "migrate" and reset_paused:
            raise UsageError(f"{where}: the machine was reset while paused and has not "
                             "booted", value=step.action, fix="resume before migrating")
        if step.action == "migrate" and pending:
            raise UsageError(f"{where}: the unplug of {', '.join(pending)} is pending, and QEMU "
                             "does not migrate an unplug request", value=pending,
                             fix="resume (or reset) before migrating")
        if pending and paused_at is None and step.action != "reset":
            raise UsageError(f"{where}: remove with wait = false must be followed by reset",
                             value=pending, fix="add reset = true right after it")
        if step.action == "pause":
            paused_at = i
        elif step.action == "resume":
            paused_at, pending, reset_paused = None, [], False
        elif step.action == "reset":
            pending, reset_paused = [], paused_at is not None
        elif step.action == "remove" and (paused_at is not None or not step.wait):
            pending.append(step.dimm)
    if paused_at is not None:
        raise UsageError(f"the run ends paused (since step {paused_at + 1})", value="pause",
                         fix="end with resume = true")
    if pending:
        raise UsageError(f"the unplug of {', '.join(pending)} (wait = false) ends the run "
                         "unresolved", value=pending, fix="add reset = true after it")


def default_steps(
    adds: Sequence[str], removes: Sequence[str], online: str | None, auto: bool,
) -> list[Step]:
    """CLI order: every --add (each onlined with ``online`` unless the guest
    auto-onlines or ``online`` is None), then every --remove."""
    steps: list[Step] = []
    for text in adds:
        dimm = parse_dimm_option(text)
        steps.append(Step("add", dimm.id, add=dimm))
        if online is not None and not auto:
            steps.append(Step("online", dimm.id, policy=_check_policy(online, "--online")))
    for dimm_id in removes:
        steps.append(Step("remove", dimm_id))
    return steps


_TOP = {"name", "machine", "guest", "step", "exec", "script", "exec_expect", "exec_forbid"}
_MACHINE = {"type", "memory", "numa", "smp", "coldplug"}
_GUEST = {"append", "expect_splats"}


def _expect(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{where}.{key} must be a {kind.__name__}, got {value!r}",
                         value=value, fix=f"write {key} as a TOML {kind.__name__}")
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise UsageError(f"{where}: unknown key(s) {', '.join(extra)}", value=extra,
                         fix=f"allowed keys: {', '.join(sorted(allowed))}")


# Backend keys of an ``add`` step (TOML name -> BackendSpec field); on an
# ``add`` step ``policy`` is the host NUMA policy, not an online policy.
BACKEND_KEYS: tuple[str, ...] = (
    "backend", "hugepages", "share", "prealloc", "prealloc_threads", "host_nodes", "policy",
    "mem_path", "discard_data", "reserve", "dump", "merge",
)
_BOOL_KEYS = ("share", "prealloc", "discard_data", "reserve", "dump", "merge", "seal")


def backend_spec(raw: Mapping[str, Any], where: str = "add") -> BackendSpec:
    """A :class:`BackendSpec` from an ``add`` step's backend keys (TOML or
    the keyword arguments of :func:`add`); RAM when none is given."""
    if not any(k in raw for k in (*BACKEND_KEYS, "seal")):
        return RAM
    kind = raw.get("backend", "ram")
    if not isinstance(kind, str):
        raise UsageError(f"{where}.backend must be a string, got {kind!r}", value=kind,
                         fix='backend = "ram", "file" or "memfd"')
    kwargs: dict[str, Any] = {"kind": kind}
    for key in _BOOL_KEYS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise UsageError(f"{where}.{key} must be true or false, got {raw[key]!r}",
                                 value=raw[key], fix=f"{key} = true")
            kwargs[key] = raw[key]
    if "hugepages" in raw:
        kwargs["hugepages"] = parse_hugepages(raw["hugepages"], f"{where}.hugepages")
    if "prealloc_threads" in raw:
        t = raw["prealloc_threads"]
        if isinstance(t, bool) or not isinstance(t, int):
            raise UsageError(f"{where}.prealloc_threads must be an integer, got {t!r}",
                             value=t, fix="prealloc_threads = 2")
        kwargs["prealloc_threads"] = t
    if "host_nodes" in raw:
        kwargs["host_nodes"] = parse_host_nodes(raw["host_nodes"], f"{where}.host_nodes")
    if "policy" in raw:
        if not isinstance(raw["policy"], str):
            raise UsageError(f"{where}.policy must be a string, got {raw['policy']!r}",
                             value=raw["policy"], fix='policy = "bind"')
        kwargs["policy"] = raw["policy"]
    if "mem_path" in raw:
        if not isinstance(raw["mem_path"], str):
            raise UsageError(f"{where}.mem_path must be a string", value=raw["mem_path"],
                             fix='mem_path = "/dev/hugepages"')
        kwargs["mem_path"] = raw["mem_path"]
    try:
        return BackendSpec(**kwargs)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", value=exc.value) from None


def _parse_step(i: int, raw: object) -> Step:
    where = f"step[{i}]"
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a table", value=raw, fix="use [[step]] tables")
    actions = [a for a in ACTIONS if a in raw]
    if len(actions) != 1:
        raise UsageError(f"{where} needs exactly one of {', '.join(ACTIONS)}", value=raw,
                         fix='e.g. add = "dimm0:1G@1"')
    action = actions[0]
    allowed = {action, "expect_splat"} | ({"policy"} if action == "online" else set())
    if action == "workload":
        allowed |= {"node", "size"}
    if action in ("add", "remove", "resize"):
        allowed |= {"expect_refusal"}
    if action == "add" and raw.get("device") == "virtio-mem":
        allowed |= _VMEM_KEYS
    elif action == "add":
        allowed |= {"device", *BACKEND_KEYS}
    if action == "resize":
        allowed |= {"requested"}
    if action == "remove":
        allowed |= {"wait"}
    _unknown(raw, allowed, where)
    refusal = raw.get("expect_refusal")
    if refusal is not None and not (refusal is True or isinstance(refusal, str)):
        raise UsageError(f"{where}.expect_refusal must be true or a string", value=refusal,
                         fix='e.g. expect_refusal = "no free slots"')
    if refusal is not None:
        splat_patterns(refusal if isinstance(refusal, str) else "", f"{where}.expect_refusal")
    expect_refusal = None if refusal is None else ("" if refusal is True else refusal)
    splats = splat_patterns(raw.get("expect_splat", []), f"{where}.expect_splat")
    if action == "workload":
        wid = _expect(raw, "workload", str, where)
        node = _expect(raw, "node", int, where) if "node" in raw else 0
        size = parse_size(_expect(raw, "size", str, where)) if "size" in raw else 256 << 20
        return Step("workload", wid, workload=WorkloadSpec(wid, node, size), expect_splat=splats)
    if action in FLAG_ACTIONS:
        if raw[action] is not True:
            raise UsageError(f"{where}.{action} must be true", value=raw[action],
                             fix=f"write {action} = true")
        return Step(action, expect_splat=splats)  # type: ignore[arg-type]
    value = _expect(raw, action, str, where)
    if action == "add":
        device = raw.get("device", "pc-dimm")
        if device not in DEVICES:
            raise UsageError(f"{where}.device {device!r} is not a memory device memhp plugs",
                             value=device, fix=f"use one of {', '.join(DEVICES)}")
        dimm = parse_dimm_option(value)
        if device == "virtio-mem":
            vmem = _parse_vmem(raw, dimm, where)
            return Step("add", vmem.id, add=dimm, vmem=vmem, expect_splat=splats,
                        expect_refusal=expect_refusal)
        dimm = replace(dimm, backend=backend_spec(raw, where))
        return Step("add", dimm.id, add=dimm, expect_splat=splats,
                    expect_refusal=expect_refusal)
    if action == "resize":
        if "requested" not in raw:
            raise UsageError(f"{where}: resize needs requested", value=raw,
                             fix='e.g. requested = "3G"')
        requested = parse_size(_expect(raw, "requested", str, where),
                               what=f"{where}.requested", allow_zero=True)
        return Step("resize", value, requested=requested, expect_splat=splats,
                    expect_refusal=expect_refusal)
    if action == "online":
        policy = _check_policy(raw.get("policy", "online_movable"), where)
        return Step("online", value, policy=policy, expect_splat=splats)
    if action == "remove":
        wait = _expect(raw, "wait", bool, where) if "wait" in raw else True
        return Step("remove", value, expect_splat=splats, wait=wait,
                    expect_refusal=expect_refusal)
    return Step(action, value, expect_splat=splats)  # type: ignore[arg-type]


def _parse_vmem(raw: Mapping[str, Any], dimm: AddDimm, where: str) -> AddVirtioMem:
    """The virtio-mem keys of an add step (``ID:SIZE@NODE`` gives id, max-size, node)."""
    if dimm.addr is not None:
        raise UsageError(f"{where}: a virtio-mem takes its address as memaddr, not :ADDR",
                         value=dimm.addr, fix='e.g. memaddr = "0x240000000"')

    def size_key(key: str, allow_zero: bool = False) -> int | None:
        if key not in raw:
            return None
        return parse_size(_expect(raw, key, str, where), what=f"{where}.{key}",
                          allow_zero=allow_zero)

    def bool_key(key: str) -> bool | None:
        return _expect(raw, key, bool, where) if key in raw else None

    addr = None
    if "memaddr" in raw:
        text = _expect(raw, "memaddr", str, where).strip()
        if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}", text, re.ASCII):
            raise UsageError(f"{where}.memaddr {text!r} is not a number", value=text,
                             fix='give it in hex, e.g. memaddr = "0x240000000"')
        addr = int(text, 16) if text.lower().startswith("0x") else int(text)
    return AddVirtioMem(dimm.id, dimm.size, dimm.node,
                        requested=size_key("requested", allow_zero=True) or 0,
                        block_size=size_key("block_size"), addr=addr,
                        unplugged_inaccessible=bool_key("unplugged_inaccessible"),
                        dynamic_memslots=bool_key("dynamic_memslots"))


def splat_patterns(value: object, where: str) -> tuple[str, ...]:
    """A string or list of strings, each a valid regular expression."""
    import re

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise UsageError(f"{where} must be a string or a list of strings", value=value,
                         fix='e.g. expect_splat = "page dumped because: unmovable page"')
    for v in items:
        try:
            re.compile(v)
        except re.error as exc:
            raise UsageError(f"{where}: {v!r} is not a regular expression ({exc})",
                             value=v, fix="escape special characters with a backslash") \
                from None
    return tuple(items)


#: The deepest dotted key a scenario may have (its tables nest two deep:
#: tomllib takes time quadratic in a key's parts, 61 s for 20001 of them).
MAX_KEY_PARTS = 8
_KEY_LINE = re.compile(rb"^\s*\[{0,2}\s*([A-Za-z0-9_\-\s.\"']+?)\s*(?:\]{1,2}|=)", re.M)


def _check_key_depth(raw: bytes, path: Path) -> None:
    for m in _KEY_LINE.finditer(raw):
        parts = m.group(1).count(b".") + 1
        if parts > MAX_KEY_PARTS:
            raise UsageError(f"scenario {str(path)!r} has a key of {parts} dotted parts "
                             f"(at most {MAX_KEY_PARTS})", value=path,
                             fix="write the tables as in the README's format")


def _coldplug_list(machine: Mapping[str, Any]) -> list[Any]:
    coldplug = machine.get("coldplug", [])
    if not isinstance(coldplug, list) or len(coldplug) > MAX_STEPS:
        raise UsageError("[machine].coldplug must be a list of DIMMs", value=coldplug,
                         fix='e.g. coldplug = ["cold0:512M@0"] (ID:SIZE@NODE[:ADDR])')
    return coldplug


def _coldplug_entry(raw: object, i: int) -> str | AddDimm:
    """``"cold0:512M@0"``, or a table ``{dimm = "cold0:512M@0", backend = ...}``
    with the backend keys of an ``add`` step."""
    where = f"[machine].coldplug[{i}]"
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a DIMM string or a table", value=raw,
                         fix='e.g. {dimm = "cold0:512M@0", backend = "memfd"}')
    _unknown(raw, {"dimm", *BACKEND_KEYS, "seal"}, where)
    if "dimm" not in raw:
        raise UsageError(f"{where} has no dimm key", value=raw,
                         fix='e.g. {dimm = "cold0:512M@0", backend = "memfd"}')
    dimm = parse_dimm_option(_expect(raw, "dimm", str, where))
    return replace(dimm, backend=backend_spec(raw, where))


def load_scenario(path: Path, *, qemu_version: tuple[int, int] | None = None,
                  host: HostMemory | None = None, cpu: CpuSpec | None = None) -> Scenario:
    """Load and validate a scenario TOML file (``host``: the host's memory
    facts, when the caller read them; ``cpu``: the vCPU the plan is checked
    for, None for memhp's TCG default)."""
    fix = "give a TOML scenario file (see the format in the README)"
    raw = read_small_file(path, "scenario", fix, max_bytes=MAX_SCENARIO_BYTES)
    _check_key_depth(raw, path)
    try:
        data = tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise UsageError(f"scenario {str(path)!r} is not UTF-8 text: {exc.reason}", value=path,
                         fix=fix) from exc
    except RecursionError:
        raise UsageError(f"scenario {str(path)!r} nests too deeply", value=path,
                         fix=fix) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"scenario {str(path)!r} is not valid TOML: {exc}", value=path,
                         fix="see the format in the README") from exc
    _unknown(data, _TOP, "scenario")
    machine = data.get("machine", {})
    guest = data.get("guest", {})
    for name, table in (("machine", machine), ("guest", guest)):
        if not isinstance(table, dict):
            raise UsageError(f"[{name}] must be a table", value=table)
    _unknown(machine, _MACHINE, "[machine]")
    _unknown(guest, _GUEST, "[guest]")
    steps_raw = data.get("step", [])
    if not isinstance(steps_raw, list) or not steps_raw:
        raise UsageError("scenario has no [[step]] tables", value=path,
                         fix='add at least one [[step]] with add = "dimm0:1G@1"')
    if len(steps_raw) > MAX_STEPS:
        raise UsageError(f"scenario {str(path)!r} has {len(steps_raw)} steps, over the limit "
                         f"of {MAX_STEPS}", value=path,
                         fix=f"split it into files of at most {MAX_STEPS} steps")
    append = guest.get("append", [])
    if not isinstance(append, list) or not all(isinstance(a, str) for a in append) \
            or len(append) > 256:
        raise UsageError("[guest].append must be a list of strings", value=append,
                         fix='e.g. append = ["memhp_default_state=online"] (at most 256)')
    expect_splats = splat_patterns(guest.get("expect_splats", []), "[guest].expect_splats")
    coldplug = [_coldplug_entry(c, i) for i, c in enumerate(_coldplug_list(machine))]
    numa = machine.get("numa", "3G,3G")
    if not isinstance(numa, str):
        raise UsageError("[machine].numa must be a string like \"3G,3G\"", value=numa)
    scenario = build_scenario(
        name=_expect(data, "name", str, "scenario") if "name" in data else path.stem,
        machine=_expect(machine, "type", str, "[machine]") if "type" in machine else "pc",
        memory=(_expect(machine, "memory", str, "[machine]") if "memory" in machine
                else "6G,slots=32,maxmem=32G"),
        numa=numa or None,
        smp=_expect(machine, "smp", int, "[machine]") if "smp" in machine else 2,
        steps=[_parse_step(i, s) for i, s in enumerate(steps_raw)],
        append=append,
        exec_cmd=_expect(data, "exec", str, "scenario") if "exec" in data else None,
        script=Path(_expect(data, "script", str, "scenario")) if "script" in data else None,
        qemu_version=qemu_version,
        host=host,
        cpu=cpu,
        coldplug=coldplug,
    )
    return replace(scenario, expect_splats=expect_splats,
                   exec_expect=splat_patterns(data.get("exec_expect", []), "exec_expect"),
                   exec_forbid=splat_patterns(data.get("exec_forbid", []), "exec_forbid"))


# -- step constructors (for tests and scripts) -------------------------------------

def add(text: str, expect_refusal: str | None = None, *,
        backend: BackendSpec | str | None = None, **options: Any) -> Step:
    """``add("dimm0:1G@1")``: hot-add a DIMM (same syntax as ``--add``);
    ``expect_refusal`` ("" or a regex of QEMU's words): QEMU must refuse it.
    The backend is a :class:`BackendSpec`, or its kind and the TOML keys:
    ``add("h0:1G@1", backend="memfd", hugepages="2M", prealloc=True)``."""
    dimm = parse_dimm_option(text)
    if isinstance(backend, BackendSpec):
        if options:
            raise UsageError("add(): give a BackendSpec or backend options, not both",
                             value=sorted(options), fix="put them in the BackendSpec")
        dimm = replace(dimm, backend=backend)
    else:
        unknown = sorted(set(options) - set(BACKEND_KEYS) - {"seal"})
        if unknown:
            raise UsageError(f"add(): unknown backend option(s) {', '.join(unknown)}",
                             value=unknown, fix=f"use {', '.join(BACKEND_KEYS)}")
        raw = dict(options)
        if backend is not None:
            raw["backend"] = backend
        dimm = replace(dimm, backend=backend_spec(raw, "add()"))
    return Step("add", dimm.id, add=dimm, expect_refusal=expect_refusal)


def online(dimm_id: str, policy: str = "online_movable") -> Step:
    return Step("online", dimm_id, policy=_check_policy(policy, "online()"))


def offline(dimm_id: str) -> Step:
    return Step("offline", dimm_id)


def remove(dimm_id: str, wait: bool = True, expect_refusal: str | None = None) -> Step:
    """Hot-remove a DIMM or a virtio-mem; ``wait=False`` only sends
    ``device_del`` (a ``reset`` must follow); ``expect_refusal``: QEMU must
    refuse it, in words matching this regex."""
    return Step("remove", dimm_id, wait=wait, expect_refusal=expect_refusal)


def add_virtio_mem(text: str, requested: str = "0", *, block_size: str | None = None,
                   memaddr: int | None = None, unplugged_inaccessible: bool | None = None,
                   dynamic_memslots: bool | None = None, expect_refusal: str | None = None
                   ) -> Step:
    """``add_virtio_mem("vmem0:4G@1", "1G")``: a virtio-mem-pci of max-size 4G
    on node 1 asking for 1G (the TOML ``device = "virtio-mem"`` step)."""
    dimm = parse_dimm_option(text)
    vmem = AddVirtioMem(
        dimm.id, dimm.size, dimm.node, requested=parse_size(requested, allow_zero=True),
        block_size=None if block_size is None else parse_size(block_size), addr=memaddr,
        unplugged_inaccessible=unplugged_inaccessible, dynamic_memslots=dynamic_memslots)
    return Step("add", dimm.id, add=dimm, vmem=vmem, expect_refusal=expect_refusal)


def resize(vmem_id: str, requested: str, expect_refusal: str | None = None) -> Step:
    """``resize("vmem0", "3G")``: qom-set the virtio-mem's requested-size."""
    return Step("resize", vmem_id, requested=parse_size(requested, allow_zero=True),
                expect_refusal=expect_refusal)


def pause() -> Step:
    """QMP ``stop``: until ``resume``, only QEMU's view is observed."""
    return Step("pause")


def resume() -> Step:
    """QMP ``cont``: what was plugged or unplugged while paused completes."""
    return Step("resume")


def reboot() -> Step:
    """Reboot from inside the guest (``reboot -f``), wait until it is back."""
    return Step("reboot")


def reset() -> Step:
    return Step("reset")


def migrate() -> Step:
    """Live-migrate the VM to a new QEMU (same machine, every plugged device
    pinned); later steps run on the destination."""
    return Step("migrate")


def workload(workload_id: str, node: int = 0, size: str = "256M") -> Step:
    """Start a workload: ``size`` of random data in tmpfs on ``node``, kept
    dirty, its checksum and liveness checked after every later step."""
    return Step("workload", workload_id, workload=WorkloadSpec(workload_id, node,
                                                               parse_size(size)))
