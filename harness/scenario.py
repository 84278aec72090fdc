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
    reset = true                             # also migrate, pause, resume, reboot
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
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.devices.pc_dimm.ops import (
    BACKEND_KEYS,
    AddDimm,
    backend_spec,
    parse_dimm_option,
)
from harness.devices.virtio_mem.ops import AddVirtioMem
from harness.errors import PlanRefused, UsageError
from harness.files import check_readable_file, read_small_file
from harness.guest.workload import WorkloadSpec
from harness.model.backend import BackendSpec
from harness.model.predict import Prediction, predict
from harness.model.qemu_rules import CpuSpec, parse_machine_type
from harness.model.qemu_rules.host import HostMemory
from harness.model.spec import (
    SEED_MACHINE,
    SEED_MEMORY,
    SEED_NUMA,
    MachineSpec,
    Operation,
    parse_memory_option,
    parse_numa_option,
)
from harness.run.steps import (
    AddStep,
    MigrateStep,
    OfflineStep,
    OnlineStep,
    PauseStep,
    PlanCheck,
    RebootStep,
    RemoveStep,
    ResetStep,
    ResizeStep,
    ResumeStep,
    Step,
    WorkloadStep,
    check_plan,
    parse_step,
)
from harness.run.steps.blocks import POLICIES, Policy, check_policy
from harness.run.steps.timing import OpTiming, op_timing
from harness.toml_keys import expect, splat_patterns, unknown
from harness.units import parse_size

# Bounds on what a scenario may ask for (a scenario file is input, maybe hostile).
MAX_STEPS = 1000
MAX_SMP = 64
MAX_SCENARIO_BYTES = 1 << 20
MAX_SCRIPT_BYTES = 16 << 20
_NAME_FIX = "use letters, digits, '-', '.' and '_' (at most 64), e.g. remove-readd"


@dataclass(frozen=True)
class Scenario:
    """A validated plan; ``machine`` is the model's description of the VM.
    The plan is predicted once (:attr:`prediction`), when it is built."""

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

    @cached_property
    def timing(self) -> OpTiming:
        """When each operation takes effect (:func:`op_timing`)."""
        return op_timing(self.steps)

    def effective_ops(self) -> list[Operation]:
        """The operations in the order they take effect in QEMU."""
        ops = self.model_ops()
        return [ops[i] for i in self.timing.order(len(ops))]

    @cached_property
    def prediction(self) -> Prediction:
        """The model's prediction of every operation, in the order they take
        effect (PlanRefused if QEMU refuses one)."""
        return predict(self.machine, self.effective_ops())

    @cached_property
    def refusals(self) -> dict[int, PlanRefused]:
        """For each step expected to be refused: the model's refusal (step
        index -> error with QEMU's words).  A UsageError when the model
        predicts that QEMU accepts it, or refuses it in other words than
        the step expects."""
        out: dict[int, PlanRefused] = {}
        for i, step in enumerate(self.steps):
            op = step.model_op()
            refusal = getattr(step, "expect_refusal", None)
            if refusal is None or op is None:
                continue
            before = replace(self, steps=self.steps[:i]).effective_ops()
            try:
                predict(self.machine, [*before, op])
            except PlanRefused as exc:
                words = getattr(exc, "qemu_message", "") or str(exc)
                if refusal and not re.search(refusal, words):
                    raise UsageError(
                        f"step {i + 1}: expects QEMU to refuse with {refusal!r}, "
                        f"but the model predicts {words!r}", value=refusal,
                        fix="match QEMU's words (see `memhp model`)") from None
                out[i] = exc
                continue
            raise UsageError(f"step {i + 1}: expects QEMU to refuse {step.describe()}, but the "
                             "model predicts QEMU accepts it", value=step.subject,
                             fix="drop expect_refusal, or change the DIMM")
        return out

    def adds(self, kind: str) -> list[Any]:
        """Every add of ``kind`` the plan has: cold-plugged, then by a step."""
        return [op for op in (*self.machine.coldplug,
                              *(s.op for s in self.steps if isinstance(s, AddStep)))
                if op.kind == kind]

    @property
    def migrates(self) -> bool:
        return any(isinstance(s, MigrateStep) for s in self.steps)

    def predict(self, block_size: int | None = None) -> Prediction:
        """The prediction, for another memory block size if given."""
        if block_size is None or block_size == self.machine.block_size:
            return self.prediction
        return predict(replace(self.machine, block_size=block_size), self.effective_ops())


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
    check_plan(PlanCheck(spec), list(steps))
    if script is not None:
        check_readable_file(script, "script", "give the path of a shell script to run in the "
                            "guest", max_bytes=MAX_SCRIPT_BYTES)
    scenario = Scenario(
        name=name, machine=spec, steps=tuple(steps), smp=smp, append=tuple(append),
        exec_cmd=exec_cmd, script=script, auto_online=auto_online_from_append(append),
    )
    scenario.prediction  # noqa: B018 - raises PlanRefused before any VM starts
    scenario.refusals  # noqa: B018 - and every expected refusal must be predicted
    return scenario


def default_steps(
    adds: Sequence[str], removes: Sequence[str], online: str | None, auto: bool,
) -> list[Step]:
    """CLI order: every --add (each onlined with ``online`` unless the guest
    auto-onlines or ``online`` is None), then every --remove."""
    steps: list[Step] = []
    for text in adds:
        dimm = parse_dimm_option(text)
        steps.append(AddStep(dimm))
        if online is not None and not auto:
            steps.append(OnlineStep(dimm.id, check_policy(online, "--online")))
    for dimm_id in removes:
        steps.append(RemoveStep(dimm_id))
    return steps


_TOP = {"name", "machine", "guest", "step", "exec", "script", "exec_expect", "exec_forbid"}
_MACHINE = {"type", "memory", "numa", "smp", "coldplug"}
_GUEST = {"append", "expect_splats"}


#: The deepest dotted key a scenario may have (its tables nest two deep:
#: tomllib takes time quadratic in a key's parts, 61 s for 20001 of them).
MAX_KEY_PARTS = 8

_KEY_LINE = re.compile(rb"^\s*\[{0,2}\s*([A-Za-z0-9_\-\s.\"']+?)\s*(?:\]{1,2}|=)", re.M)


def check_key_depth(raw: bytes, path: Path) -> None:
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
    unknown(raw, {"dimm", *BACKEND_KEYS, "seal"}, where)
    if "dimm" not in raw:
        raise UsageError(f"{where} has no dimm key", value=raw,
                         fix='e.g. {dimm = "cold0:512M@0", backend = "memfd"}')
    dimm = parse_dimm_option(expect(raw, "dimm", str, where))
    return replace(dimm, backend=backend_spec(raw, where))


def load_scenario(path: Path, *, qemu_version: tuple[int, int] | None = None,
                  host: HostMemory | None = None, cpu: CpuSpec | None = None) -> Scenario:
    """Load and validate a scenario TOML file (``host``: the host's memory
    facts, when the caller read them; ``cpu``: the vCPU the plan is checked
    for, None for memhp's TCG default)."""
    fix = "give a TOML scenario file (see the format in the README)"
    raw = read_small_file(path, "scenario", fix, max_bytes=MAX_SCENARIO_BYTES)
    check_key_depth(raw, path)
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
    unknown(data, _TOP, "scenario")
    machine = data.get("machine", {})
    guest = data.get("guest", {})
    for name, table in (("machine", machine), ("guest", guest)):
        if not isinstance(table, dict):
            raise UsageError(f"[{name}] must be a table", value=table)
    unknown(machine, _MACHINE, "[machine]")
    unknown(guest, _GUEST, "[guest]")
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
    numa = machine.get("numa", SEED_NUMA)
    if not isinstance(numa, str):
        raise UsageError("[machine].numa must be a string like \"3G,3G\"", value=numa)
    scenario = build_scenario(
        name=expect(data, "name", str, "scenario") if "name" in data else path.stem,
        machine=expect(machine, "type", str, "[machine]") if "type" in machine else SEED_MACHINE,
        memory=(expect(machine, "memory", str, "[machine]") if "memory" in machine
                else SEED_MEMORY),
        numa=numa or None,
        smp=expect(machine, "smp", int, "[machine]") if "smp" in machine else 2,
        steps=[parse_step(i, s) for i, s in enumerate(steps_raw)],
        append=append,
        exec_cmd=expect(data, "exec", str, "scenario") if "exec" in data else None,
        script=Path(expect(data, "script", str, "scenario")) if "script" in data else None,
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
    return AddStep(dimm, expect_refusal)


def online(dimm_id: str, policy: str = "online_movable") -> Step:
    return OnlineStep(dimm_id, check_policy(policy, "online()"))


def offline(dimm_id: str) -> Step:
    return OfflineStep(dimm_id)


def remove(dimm_id: str, wait: bool = True, expect_refusal: str | None = None) -> Step:
    """Hot-remove a DIMM or a virtio-mem; ``wait=False`` only sends
    ``device_del`` (a ``reset`` must follow); ``expect_refusal``: QEMU must
    refuse it, in words matching this regex."""
    return RemoveStep(dimm_id, wait, expect_refusal)


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
    return AddStep(vmem, expect_refusal)


def resize(vmem_id: str, requested: str, expect_refusal: str | None = None) -> Step:
    """``resize("vmem0", "3G")``: qom-set the virtio-mem's requested-size."""
    return ResizeStep(vmem_id, parse_size(requested, allow_zero=True), expect_refusal)


def pause() -> Step:
    """QMP ``stop``: until ``resume``, only QEMU's view is observed."""
    return PauseStep()


def resume() -> Step:
    """QMP ``cont``: what was plugged or unplugged while paused completes."""
    return ResumeStep()


def reboot() -> Step:
    """Reboot from inside the guest (``reboot -f``), wait until it is back."""
    return RebootStep()


def reset() -> Step:
    return ResetStep()


def migrate() -> Step:
    """Live-migrate the VM to a new QEMU (same machine, every plugged device
    pinned); later steps run on the destination."""
    return MigrateStep()


def workload(workload_id: str, node: int = 0, size: str = "256M") -> Step:
    """Start a workload: ``size`` of random data in tmpfs on ``node``, kept
    dirty, its checksum and liveness checked after every later step."""
    return WorkloadStep(WorkloadSpec(workload_id, node, parse_size(size)))

