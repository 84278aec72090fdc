"""``memhp run``: the seed session (or any plan) on a real VM, checked
step by step against the model.

Exit codes: 0 pass, 1 mismatch or failure, 2 usage or refused plan,
3 environment (no QEMU, no image), 130 interrupted.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from harness.cli.options import MACHINE_OPTIONS, QEMU_OPTIONS
from harness.errors import HarnessError, HostEnvironmentError, UsageError
from harness.machines import machine
from harness.model.spec import SEED_DIMM

if TYPE_CHECKING:
    from harness.run.results import RunResult
    from harness.scenario import Scenario



def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _parse_version(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"([0-9]{1,3})\.([0-9]{1,3})(?:\.[0-9]{1,5})?", text, re.ASCII)
    if m is None:
        raise UsageError(f"QEMU version {text!r} is not MAJOR.MINOR", value=text,
                         fix="e.g. --qemu-version 7.2 (ASCII digits)")
    return int(m.group(1)), int(m.group(2))


def _finite_scale(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number (fix: e.g. 2 to double "
                                 "every timeout)", ctx=ctx, param=param)
    return value


def check_keep_dir(path: Path | None, option: str = "--keep") -> None:
    """``--keep`` (or ``option``) must be a directory, or creatable as one
    (nothing is created here: a refused run leaves nothing behind)."""
    if path is None:
        return
    fix = f"give a directory (it is created if missing), e.g. {option} ./artifacts"
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UsageError(f"{option} {str(path)!r} exists and is not a directory",
                             value=path, fix=fix)
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {str(path)!r} is not writable", value=path, fix=fix)
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(path)!r} cannot be created under {str(parent)!r}",
                         value=path, fix=fix)


def check_qemu(binary: str, detected: str) -> None:
    """An environment error (exit 3) unless ``binary`` is a QEMU that says so."""
    if detected != "unknown":
        return
    if shutil.which(binary) is None:
        raise HostEnvironmentError(f"QEMU binary {binary!r} not found (fix: apt-get install "
                                   "qemu-system-x86, or pass --qemu PATH)")
    raise HostEnvironmentError(f"--qemu {binary!r} is not QEMU: its --version does not say "
                               "'QEMU emulator version' (fix: pass --qemu PATH of "
                               "qemu-system-x86_64)")


def scenario_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that describe a scenario and how to run it (shared by
    run, compare and bisect)."""
    for deco in reversed(_SCENARIO_OPTIONS):
        f = deco(f)
    return f


_SCENARIO_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    *MACHINE_OPTIONS,
    click.option("--add", "adds", multiple=True, metavar="ID:SIZE@NODE[:ADDR]",
                  help=f"Hot-add a DIMM (repeatable). Default: {SEED_DIMM}."),
    click.option("--remove", "removes", multiple=True, metavar="ID",
                  help="Hot-remove a DIMM after the adds (repeatable)."),
    click.option("--online", default="online_movable", show_default=True,
                  type=click.Choice(["online", "online_kernel", "online_movable", "none"]),
                  help="How to online each added DIMM's blocks ('none' leaves them offline)."),
    click.option("--append", "append", multiple=True,
                  help="Extra guest kernel parameter (repeatable), e.g. "
                       "memhp_default_state=online_movable for auto-online."),
    click.option("--smp", default=2, show_default=True, type=click.IntRange(1, 64)),
    click.option("--accel", default="auto", show_default=True,
                  type=click.Choice(["auto", "kvm", "tcg"]),
                  help="auto probes KVM for real and falls back to TCG."),
    *QEMU_OPTIONS,
    click.option("--allow-mem-path", "allow_mem_path", multiple=True, metavar="DIR",
                 help="Let a scenario's file backends (mem_path) use this directory "
                      "(repeatable; none by default: memhp picks private files)."),
    click.option("--keep", type=click.Path(path_type=Path),
                  help="Keep artifacts (argv, serial log, QMP transcript, dmesg) in this dir."),
    click.option("--timeout-scale", default=1.0, show_default=True,
                 type=click.FloatRange(0.1, 100), callback=_finite_scale),
    click.option("--boot-attempts", default=2, show_default=True, type=click.IntRange(1, 10),
                 help="Boots in all when a boot hangs (no ready marker by the deadline, no "
                      "panic): each hung one is reported, with where the CPUs were."),
]


_KERNEL_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--kernel", type=click.Path(path_type=Path),
                 help="Boot this bzImage instead of the default guest kernel."),
    click.option("--modules", type=click.Path(path_type=Path),
                 help="Modules tree for --kernel (lib/modules/VERSION or an INSTALL_MOD_PATH); "
                      "default: <root>/lib/modules/VER beside <root>/boot/vmlinuz-VER."),
    click.option("--kernel-config", type=click.Path(path_type=Path),
                 help="The build config of --kernel (default: found beside it, in its source "
                      "tree, or IKCONFIG); tells the model the kernel's online policy."),
    click.option("--kernel-package", metavar="NAME[/SUITE]",
                 help="Boot a Debian kernel package (fetched, never installed), e.g. "
                      "linux-image-amd64/trixie-backports for Debian's 7.3."),
    click.option("--suite", help="Debian suite of --kernel-package (any: bookworm-backports, "
                 "trixie-backports, sid, experimental, ...)."),
]


def kernel_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose the guest kernel (shared by run and calibrate)."""
    for deco in reversed(_KERNEL_OPTIONS):
        f = deco(f)
    return f


@click.command("run")
@scenario_options
@kernel_options
@click.option("--disk", type=click.Path(path_type=Path),
              help="Boot your own disk image (raw/qcow2, opened in snapshot mode).")
@click.option("--ssh-user", default="root", show_default=True, help="SSH user for --disk.")
@click.option("--ssh-key", type=click.Path(path_type=Path), help="SSH private key for --disk.")
@click.option("--ssh-host-key", type=click.Path(path_type=Path),
              help="The --disk guest's public host key (ssh_host_ed25519_key.pub) to pin; "
                   "without it the first key the VM presents is pinned.")
@click.option("--exec", "exec_cmd", help="Run this shell command in the guest after the steps.")
@click.option("--script", type=click.Path(path_type=Path),
              help="Copy this script into the guest and run it with bash after the steps.")
@click.option("--expect-output", "exec_expect", multiple=True, metavar="REGEX",
              help="The --exec/--script output must match this (repeatable).")
@click.option("--forbid-output", "exec_forbid", multiple=True, metavar="REGEX",
              help="The --exec/--script output must not match this (repeatable), e.g. "
                   "'unexpected fail'.")
@click.option("--cold-boot", is_flag=True,
              help="Always boot the guest; never start it from a saved state (warm start "
                   "is the default for memhp's images; a --kernel or --disk always boots).")
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON.")
@click.option("--map", "map_path", type=click.Path(path_type=Path),
              help="Draw the guest-physical memory map after the run to this SVG file.")
@click.option("--ktap", "ktap_path", type=click.Path(path_type=Path),
              help="Also write the result as KTAP version 1 to this file (one test, a "
                   "subtest per step).")
def run_cmd(**opts: Any) -> int:
    """Boot a guest, hot-add memory over QMP, online it over SSH, check it all."""
    old = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return _run(**opts)
    finally:
        signal.signal(signal.SIGTERM, old)


def _scenario(opts: dict[str, Any], version: tuple[int, int] | None,
              kernel_policy: str | None = None) -> Scenario:
    scenario = _scenario_plan(opts, version, kernel_policy)
    from harness.scenario import splat_patterns

    expect = splat_patterns(list(opts.get("exec_expect") or ()), "--expect-output")
    forbid = splat_patterns(list(opts.get("exec_forbid") or ()), "--forbid-output")
    if expect or forbid:
        scenario = replace(scenario, exec_expect=scenario.exec_expect + expect,
                           exec_forbid=scenario.exec_forbid + forbid)
    return scenario


def _scenario_plan(opts: dict[str, Any], version: tuple[int, int] | None,
                   kernel_policy: str | None = None) -> Scenario:
    from harness.scenario import (
        auto_online_from_append,
        build_scenario,
        default_steps,
        load_scenario,
    )

    if opts["scenario_file"] is not None:
        if opts["adds"] or opts["removes"]:
            raise UsageError("--scenario cannot be combined with --add/--remove",
                             fix="put the steps in the scenario file")
        loaded = load_scenario(opts["scenario_file"], qemu_version=version,
                               host=read_host_memory(), cpu=_vcpu(opts["accel"], opts))
        if kernel_policy is not None and loaded.auto_online is None:
            return replace(loaded, auto_online=kernel_policy)  # type: ignore[arg-type]
        return loaded
    adds = opts["adds"] or (SEED_DIMM,)
    append = tuple(opts["append"])
    from_cmdline = auto_online_from_append(append)
    auto = from_cmdline is not None or kernel_policy is not None
    online = None if opts["online"] == "none" else opts["online"]
    name = "seed" if not opts["adds"] else "cli"
    scenario = build_scenario(
        name=name, machine=opts["machine"], memory=opts["memory"], numa=opts["numa"] or None,
        steps=default_steps(adds, opts["removes"], online, auto), smp=opts["smp"],
        append=append, exec_cmd=opts.get("exec_cmd"), script=opts.get("script"),
        qemu_version=version, host=read_host_memory(), cpu=_vcpu(opts["accel"], opts),
    )
    if from_cmdline is None and kernel_policy is not None:
        scenario = replace(scenario, auto_online=kernel_policy)  # type: ignore[arg-type]
    return scenario


def _vcpu(accel: str, opts: dict[str, Any] | None = None) -> Any:
    """The vCPU the model assumes: memhp's TCG ``-cpu max`` (AMD, 40 bits), or
    under ``--accel kvm`` ``-cpu host``: this host's vendor and phys-bits.
    (``auto`` models TCG's; it matters only for layouts near 1 TiB.)  An
    arm64 guest is modelled with ``max`` (52 bits; under KVM the host's IPA
    limit, which the model does not know); asking KVM for another
    architecture's guest is refused here, before the plan."""
    if accel != "kvm":
        return None
    from harness.qemu.accel import foreign_kvm, host_arch

    opts = opts or {}
    board = machine(opts.get("machine_family") or _machine_family(opts))
    if board.arch != host_arch():
        raise foreign_kvm(board.arch, host_arch())
    if board.arch != "x86_64":
        return None
    from harness.model.qemu_rules.cpu import host_cpu_from_cpuinfo

    try:
        return host_cpu_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def read_host_memory() -> Any:
    """This host's memory facts for the model (None when /proc is unreadable):
    RAM and overcommit, and the host NUMA nodes (for ``host_nodes``).  The
    hugepage pools are left out (unknown): memhp reserves what the plan
    needs before the VM starts (harness.host.hugepages.reserved_for)."""
    from dataclasses import replace

    from harness.host.hugepages import host_memory

    try:
        return replace(host_memory(), hugepages=None)
    except OSError:
        return None


def kernel_online_policy(guest: Any) -> tuple[str | None, str]:
    """The online policy the guest kernel's build config gives new memory
    (None: stays offline, or the config is unknown), and where that came from.
    Read from the image's recorded config, else IKCONFIG in the kernel."""
    from harness.errors import KconfigError
    from harness.kconfig import check_config, read_config

    image = guest.image
    if image is None:
        return None, "no kernel config (disk image)"
    try:
        if image.config is not None and Path(image.config).exists():
            text = Path(image.config).read_text(errors="replace")
        else:
            text, _ = read_config(Path(image.kernel))
    except (KconfigError, OSError):
        return None, "kernel config unknown (no IKCONFIG): assuming offline"
    report = check_config(text)
    policy = report.online_policy
    return (None if policy == "offline" else policy), report.policy_source


def execute_with(opts: dict[str, Any], scenario: Scenario, guest: Any,
                 **hooks: Any) -> RunResult:
    """:func:`harness.workflow.execute` with the run options of ``scenario_options``
    (cold boot unless ``warm=True`` is passed: compare and bisect boot)."""
    from harness.workflow import execute

    return execute(scenario, guest, accel=opts["accel"], qemu_binary=opts["qemu_binary"],
                   keep=opts["keep"], timeout_scale=opts["timeout_scale"],
                   boot_attempts=opts.get("boot_attempts", 2),
                   allowed_mem_paths=opts.get("allowed_mem_paths", ()), **hooks)


def warm_allowed(opts: dict[str, Any]) -> bool:
    """``memhp run`` starts warm unless --cold-boot, or a kernel under test
    (--kernel: a bzImage being developed) or a --disk is booted."""
    return not (opts.get("cold_boot") or opts.get("kernel") is not None
                or opts.get("disk") is not None)


def _machine_family(opts: dict[str, Any]) -> str:
    """The machine the run boots (pc, q35, virt), before the scenario is
    checked: --machine, or a scenario file's [machine].type (pc when the file
    does not say or cannot be read: loading it says why, in full)."""
    from harness.model.qemu_rules import parse_machine_type

    text = opts.get("machine") or "pc"
    if opts.get("scenario_file") is not None:
        import tomllib

        from harness.files import read_small_file
        from harness.scenario import MAX_SCENARIO_BYTES, check_key_depth

        try:
            raw = read_small_file(opts["scenario_file"], "scenario", "",
                                  max_bytes=MAX_SCENARIO_BYTES)
            check_key_depth(raw, opts["scenario_file"])  # before tomllib: a 20001-part key
            text = tomllib.loads(raw.decode()).get("machine", {}).get("type", "pc")
        except (HarnessError, ValueError, RecursionError, AttributeError):
            return "pc"
    try:
        return parse_machine_type(str(text)).family
    except UsageError:
        return "pc"


def plan(opts: dict[str, Any]) -> tuple[Scenario, tuple[int, int] | None]:
    """The options' scenario and the QEMU version it is modelled for, every
    check that needs no guest done (UsageError before any build or VM)."""
    from harness.qemu.fetch import resolve_qemu
    from harness.qemu.version import qemu_version

    opts["machine_family"] = family = _machine_family(opts)  # the scenario file read once
    if opts["qemu_binary"] is None:  # the machine's own: qemu-system-aarch64 for virt
        opts["qemu_binary"] = machine(family).qemu_binary
    opts["qemu_binary"] = resolve_qemu(opts["qemu_binary"],  # debian:X.Y -> its launcher
                                       arch=machine(family).arch)
    version = _parse_version(opts["qemu_version"])
    detected = qemu_version(opts["qemu_binary"])
    if version is None and detected != "unknown":
        version = _parse_version(".".join(detected.split(".")[:2]))
    scenario = _scenario(opts, version)
    check_qemu(opts["qemu_binary"], detected)
    from harness.host.hugepages import check_room, needs_of
    from harness.host.paths import allowed_dirs, check_scenario

    opts["allowed_mem_paths"] = allowed_dirs(opts.get("allow_mem_path") or ())
    check_scenario(scenario, opts["allowed_mem_paths"])
    check_room(needs_of(scenario.adds("pc-dimm"), copies=2 if scenario.migrates else 1))
    # ... before any image build or VM
    return scenario, version


def prepare(opts: dict[str, Any], kernel: Path | None = None) -> tuple[Scenario, Any]:
    """Validate the options into a scenario and a guest (UsageError before any VM)."""
    from harness.launch import GuestSource, resolve_guest

    check_keep_dir(opts.get("keep"))
    if opts.get("modules") is not None and (kernel or opts.get("kernel")) is None:
        raise UsageError("--modules is only for --kernel", value=opts["modules"],
                         fix="pass --kernel BZIMAGE too, or drop --modules (the default "
                             "guest brings its own)")
    if opts.get("modules") is not None and not Path(opts["modules"]).is_dir():
        raise UsageError(f"--modules {str(opts['modules'])!r} is not a directory",
                         value=opts["modules"], fix="give lib/modules/VERSION or an "
                         "INSTALL_MOD_PATH directory")
    scenario, version = plan(opts)
    source = GuestSource(kernel=kernel or opts.get("kernel"), modules=opts.get("modules"),
                         kernel_package=opts.get("kernel_package"), suite=opts.get("suite"),
                         kernel_config=opts.get("kernel_config"),
                         disk=opts.get("disk"), ssh_user=opts.get("ssh_user", "root"),
                         ssh_key=opts.get("ssh_key"), ssh_host_key=opts.get("ssh_host_key"),
                         arch=machine(scenario.machine.machine).debian_arch)
    guest = resolve_guest(source)
    if not any(w.startswith("memhp_default_state=") for w in scenario.append):
        # Without memhp_default_state= the kernel's build config decides
        # whether new memory comes online by itself: the model must know.
        policy, why = kernel_online_policy(guest)
        if policy is not None:
            click.echo(f"memhp: the guest kernel onlines new memory by itself ({policy}: "
                       f"{why}); no online steps", err=True)
            scenario = _scenario(opts, version, kernel_policy=policy)
    return scenario, guest


def start_line(start: dict[str, Any] | None) -> str:
    """One line on how the guest started (warm from which state, or why cold)."""
    if not start:
        return "cold boot"
    if start.get("warm"):
        return (f"warm start from saved state {start['state']} ({start['state_dir']}, "
                f"{start['state_bytes'] / 2**20:.1f} MiB); --cold-boot to boot")
    line = f"cold boot: {start.get('reason', '')}"
    for hang in start.get("boot_retries", ()):
        line += (f"\nmemhp: {hang['when']}, boot attempt {hang['attempt']} hung after "
                 f"{hang['seconds']:.0f}s ({hang['error']}; {hang['cpus']}); booted again")
    return line


def _check_map_path(path: Path | None) -> None:
    if path is not None:
        from harness.files import check_output_file

        check_output_file(path, "--map", "give a file name such as map.svg")


def _error_json(exc: HarnessError) -> str:
    kind = getattr(exc, "kind", type(exc).__name__)
    return json.dumps({"error": {"kind": kind, "phase": exc.phase, "message": str(exc)}})


def _run(**opts: Any) -> int:
    # Imported here so that `memhp --help` and the other commands stay fast.
    from harness.report import print_model_status, print_run_report, print_step

    as_json: bool = opts["as_json"]
    out = sys.stderr if as_json else sys.stdout
    try:
        _check_map_path(opts.get("map_path"))
        if opts.get("ktap_path") is not None:
            from harness.files import check_output_file

            check_output_file(opts["ktap_path"], "--ktap", "give a file name such as run.ktap")
        scenario, guest = prepare(opts)
    except HarnessError as exc:
        if as_json:
            click.echo(_error_json(exc))
        click.echo(f"memhp: {exc.phase} error: {exc}", err=True)
        if getattr(exc, "qemu_message", ""):
            click.echo(f"memhp: QEMU would refuse: {exc.qemu_message}", err=True)  # type: ignore[attr-defined]
        return exc.exit_code

    def booted(result: RunResult) -> None:
        click.echo(f"memhp: {result.accel.upper()} ({result.accel_reason}); guest up over SSH "
                   f"in {result.timings.get('boot_to_ssh_s', 0):.2f}s", file=out)
        click.echo(f"memhp: {start_line(result.start)}", file=out)

    try:
        result = execute_with(opts, scenario, guest, on_boot=booted, warm=warm_allowed(opts),
                              on_step=lambda s: print_step(s, file=out),
                              on_model=lambda status: print_model_status(status, file=out))
    except KeyboardInterrupt:
        click.echo("memhp: interrupted; the VM was shut down", err=True)
        return 130
    if result.error:
        click.echo(f"memhp: {result.error['phase']} error: {result.error['message']}", err=True)
    if opts.get("map_path") is not None:
        from harness.workflow import save_map

        if save_map(result, opts["map_path"]) is not None:
            click.echo(f"memhp: memory map {opts['map_path']}", file=out)
    if opts.get("ktap_path") is not None:
        from harness.export.ktap import ktap

        opts["ktap_path"].write_text(ktap([result.to_json()]))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        from harness.report import verdict_line

        click.echo(verdict_line(result), err=True)
    else:
        print_run_report(result, file=out)
    if result.error and not result.steps and not result.error.get("booted"):
        return 3 if result.error["phase"] in ("environment",) else 1
    return 0 if result.passed else 1


COMMANDS: list[click.Command] = [run_cmd]
