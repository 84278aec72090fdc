"""Bringing a guest up: its boot configuration and SSH keys, the wait for
its ready marker (a hung boot recorded and retried), the SSH connection,
and the wait after a reset."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import GuestUnreachable, HarnessError, VMError, WaitTimeout
from harness.qemu.config import FwCfgFile, KernelBoot, VMConfig
from harness.qemu.qmp import QMPEvent, QMPSession
from harness.qemu.timeouts import Timeouts
from harness.retry import NotYet, wait_for

if TYPE_CHECKING:
    from harness.guest.ssh import GuestShell
    from harness.image import GuestImage
    from harness.image.keys import GuestKeys

# x86-64 Linux maps its text at or above __START_KERNEL_map (arch/x86/
# include/asm/page_64_types.h), KASLR included: an instruction pointer below
# it is firmware, the boot loader or the decompressor.
KERNEL_TEXT_BASE = 0xFFFFFFFF80000000
# What the default guest's /init prints when SSH cannot come up, and why.
UNREACHABLE = (
    ("memhp-init: no eth0", "no network interface (the kernel lacks the virtio-net driver: "
     "build it in, CONFIG_VIRTIO_NET=y, or pass --modules with virtio_net.ko)"),
    ("memhp-init: no keys in fw_cfg", "no SSH keys from QEMU fw_cfg (the kernel lacks "
     "CONFIG_FW_CFG_SYSFS: build it in, or pass --modules with qemu_fw_cfg.ko)"),
)


class Booting(Protocol):
    """What the boot waits use of a VM.  ``launch``, ``wait_for_console``
    and ``system_reset`` are called through it, so a test may wrap them."""

    ready_marker: str | None
    shell: Any  # harness.guest.ssh.GuestShell | None
    boot_attempts: int
    boot_retries: list[dict[str, Any]]
    timeouts: Timeouts
    timings: dict[str, float]
    log: logging.Logger

    def launch(self) -> None: ...
    def end_attempt(self, label: str) -> None: ...
    def wait_for_console(self, needle: str, *, what: str,
                         timeout: float | None = None) -> None: ...
    def system_reset(self) -> int: ...
    def connect_ssh(self) -> None: ...
    def cpu_state(self) -> str: ...
    def serial_text(self) -> str: ...
    def serial_tail(self, lines: int = 40) -> str: ...
    def check_alive(self, serial: str | None = None) -> None: ...
    def qmp_session(self) -> QMPSession: ...
    def ssh(self, argv: list[str], *, timeout: float | None = None,
            check: bool = True) -> Any: ...


def describe_cpu_positions(registers: str) -> list[str]:
    """Where each CPU is, from HMP ``info registers -a`` (QEMU's
    target/i386/cpu-dump.c: a ``CPU#N`` header, then ``RIP=`` in long mode,
    ``EIP=`` otherwise, and ``HLT=1`` for a halted CPU)."""
    found = []
    registers = registers.replace("\r\n", "\n")  # HMP through QMP ends lines CRLF
    for m in re.finditer(r"^CPU#(\d+)\n(.*?)(?=^CPU#|\Z)", registers, re.M | re.S):
        cpu, body = m.group(1), m.group(2)
        ip = re.search(r"^(RIP|EIP)=([0-9a-fA-F]+)", body, re.M)
        if ip is None:
            continue
        text = f"CPU{cpu} {ip.group(1)}={ip.group(2)}"
        if ip.group(1) == "EIP":
            text += " (not in long mode: firmware or boot loader)"
        elif int(ip.group(2), 16) < KERNEL_TEXT_BASE:
            text += " (below the kernel's text mapping)"
        if re.search(r"\bHLT=1\b", body):
            text += " halted"
        found.append(text)
    return found


def cpu_state(qmp: QMPSession | None) -> str:
    """QEMU's run state and each guest CPU's instruction pointer, in one
    line (for a hung boot: firmware, decompressor or kernel?)."""
    if qmp is None:
        return "no QMP connection to ask where the guest's CPUs are"
    try:
        status = qmp.execute("query-status", timeout=5.0)
        regs = qmp.execute("human-monitor-command",
                           {"command-line": "info registers -a"}, timeout=5.0)
    except HarnessError as exc:
        return f"QEMU did not say where the guest's CPUs are ({exc.message})"
    where = ", ".join(describe_cpu_positions(str(regs))) or "no CPU registers"
    return f"QEMU {status.get('status', '?')}; {where}"


def boot_config(cfg: VMConfig, image: GuestImage | None, keys: GuestKeys | None) -> VMConfig:
    """``cfg`` as a memhp image boots it: the image's kernel (unless the
    config names one) and the SSH ``keys`` handed to the guest over fw_cfg."""
    if image is None or keys is None:
        return cfg
    fw = (
        FwCfgFile("opt/memhp/host_key", keys.host_key_path),
        FwCfgFile("opt/memhp/authorized_keys", keys.authorized_keys_path),
    )
    boot = cfg.boot
    if not isinstance(boot, KernelBoot):
        boot = KernelBoot(image.kernel, image.initrd, tuple(image.cmdline))
    return replace(cfg, boot=boot, fw_cfg=cfg.fw_cfg + fw)


def guest_keys(directory: Path, inherit: GuestKeys | None,
               make: Callable[[Path], GuestKeys] | None = None) -> GuestKeys:
    """The guest's SSH keys in ``directory``: made by ``make`` (e.g. a saved
    state's keys), else copies of ``inherit`` (a migration destination runs
    its source's guest), else new ones."""
    from harness.image.keys import copy_guest_keys, write_guest_keys

    if make is not None:
        return make(directory)
    if inherit is not None:
        return copy_guest_keys(inherit, directory)
    return write_guest_keys(directory)


def boot(vm: Booting) -> None:
    """Launch QEMU, wait for the ready marker, connect SSH.

    A boot that hangs (QEMU alive, no panic, no ready marker by the boot
    deadline) is recorded in ``vm.boot_retries``, with the console tail
    and where the guest's CPUs were, and tried again with a fresh QEMU,
    up to ``vm.boot_attempts`` boots in all.  Under TCG a boot of an
    unchanged guest now and then never finishes (Debian 6.1 on QEMU 7.2:
    once in 115 boots, bench/RESULTS.md); what the retry hides is kept.
    A panic or a QEMU exit is an answer, not a hang: never retried."""
    t0 = time.monotonic()
    vm.launch()
    if vm.ready_marker:
        def relaunch(attempt: int) -> None:
            nonlocal t0
            vm.end_attempt(f"boot-attempt-{attempt}")
            t0 = time.monotonic()
            vm.launch()

        until_ready(vm, lambda: vm.wait_for_console(vm.ready_marker or "",
                                                    what="the guest's ready marker"),
                    again=relaunch, when="boot")
        vm.timings["boot_to_ready_s"] = time.monotonic() - t0
    vm.connect_ssh()
    vm.timings["boot_to_ssh_s"] = time.monotonic() - t0


def until_ready(vm: Booting, wait: Callable[[], object], *, again: Callable[[int], None],
                when: str) -> None:
    """``wait`` (a bounded wait for the ready marker) until it succeeds;
    each time it expires the hang is recorded (``vm.boot_retries``) and
    ``again(attempt)`` starts the guest afresh, ``vm.boot_attempts`` in all."""
    for attempt in range(1, vm.boot_attempts + 1):
        t0 = time.monotonic()
        try:
            wait()
            return
        except WaitTimeout as exc:
            hang = {"attempt": attempt, "when": when,
                    "seconds": round(time.monotonic() - t0, 3), "error": exc.message,
                    "cpus": vm.cpu_state(), "serial_tail": vm.serial_tail(20)}
            vm.boot_retries.append(hang)
            if attempt == vm.boot_attempts:
                exc.message += f"; {hang['cpus']}"
                if attempt > 1:
                    exc.message += (f" (boot attempt {attempt} of "
                                    f"{vm.boot_attempts}: every one hung)")
                raise
            vm.log.warning("%s, boot attempt %d of %d hung (%s; %s); starting again",
                           when, attempt, vm.boot_attempts, exc.message, hang["cpus"])
            again(attempt)


def wait_back(vm: Booting, mark: int) -> None:
    """The ready marker after serial offset ``mark``, then SSH.  A boot
    after the reset that hangs (see :func:`boot`) is recorded in
    ``vm.boot_retries`` and the machine reset again, up to
    ``vm.boot_attempts`` boots: a second ``system_reset`` of a guest that
    has not reached /init changes nothing the model predicts (the
    machine's devices are the same; the guest starts from firmware)."""
    if vm.ready_marker:
        marker = vm.ready_marker

        def back() -> None:
            at = mark
            wait_for(
                lambda: True if marker in vm.serial_text()[at:] else None,
                what="the ready marker after the reset", timeout=vm.timeouts.s("boot"),
                first_interval=0.05, max_interval=0.2, abort=vm.check_alive,
                phase="reset", serial_tail=vm.serial_tail,
            )

        def reset_again(attempt: int) -> None:
            nonlocal mark
            mark = vm.system_reset()

        until_ready(vm, back, again=reset_again, when="after a reset")
    vm.connect_ssh()


def reboot_guest(vm: Booting) -> QMPEvent:
    """Reboot from inside the guest (``reboot -f``: the kernel resets the
    machine at once, no init scripts) and wait until it is back on SSH.
    Returns QEMU's ``RESET`` event (``guest: true``)."""
    shell = vm.shell
    if shell is None:
        raise VMError("no SSH session to the guest", phase="reboot")
    qmp = vm.qmp_session()
    mark = len(vm.serial_text())
    cursor = qmp.cursor()
    # Detached, a moment later, so that this command's exit status still
    # reaches us before the guest goes.
    vm.ssh(["sh", "-c", "(sleep 0.2; reboot -f) </dev/null >/dev/null 2>&1 &"])
    event = qmp.wait_event(lambda ev: ev.name == "RESET", since=cursor,
                           timeout=vm.timeouts.s("command"), what="RESET after reboot -f",
                           abort=vm.check_alive, phase="reboot")
    shell.close()
    vm.shell = None
    wait_back(vm, mark)
    return event


def wait_for_console(vm: Booting, needle: str, *, what: str,
                     timeout: float | None = None) -> None:
    """Wait for ``needle`` on the serial console."""
    def seen() -> bool | None:
        serial = vm.serial_text()  # one read per poll, for both checks
        vm.check_alive(serial)
        return True if needle in serial else None

    wait_for(
        seen, what=what, timeout=timeout or vm.timeouts.s("boot"),
        # The console log is small and local: a short constant interval
        # costs little and the marker is seen within ~20 ms.
        first_interval=0.01, max_interval=0.02, phase="boot",
        serial_tail=vm.serial_tail,
    )


def check_reachable(vm: Booting) -> None:
    """Raise at once when the default guest's /init reported that SSH
    cannot come up, instead of waiting out the SSH timeout."""
    serial = vm.serial_text()
    vm.check_alive(serial)
    for needle, why in UNREACHABLE:
        if needle in serial:
            raise GuestUnreachable(f"the guest cannot be reached over SSH: {why}",
                                   serial_tail=vm.serial_tail(30))


def open_shell(vm: Booting, port: int, user: str, key: Path | None, host_line: str | None,
               *, diagnose: Callable[..., None]) -> GuestShell:
    """Log in to the guest over SSH on 127.0.0.1:``port`` (bounded, retried
    while sshd is not up; stops at once when /init said it cannot come up).
    Every later guest command stops at once when QEMU dies or is stopped,
    and a timeout is explained (``diagnose``: QEMU or guest hung)."""
    from harness.guest.ssh import GuestShell

    if key is None:
        raise VMError("no SSH key for this guest (use --ssh-key)", phase="ssh")
    shell = GuestShell("127.0.0.1", port, user, key, host_line,
                       connect_timeout=vm.timeouts.s("ssh"), logger=vm.log)
    shell.abort = vm.check_alive
    shell.diagnose = diagnose

    def attempt() -> bool:
        try:
            shell.connect()
        except (OSError, EOFError) as exc:  # guest sshd not up yet
            raise NotYet(str(exc)) from exc
        return True

    wait_for(attempt, what="SSH login to the guest", timeout=vm.timeouts.s("ssh"),
             first_interval=0.02, max_interval=0.2, abort=lambda: check_reachable(vm),
             retry_on=(ConnectionError,), phase="ssh", serial_tail=vm.serial_tail)
    return shell
