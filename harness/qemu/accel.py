"""Choosing the accelerator: KVM only when it really boots a guest.

``/dev/kvm`` can exist and open fine while KVM cannot run a guest (nested or
paravirtual hosts: QEMU aborts setting MSRs, or the guest hangs early in
boot).  So the probe boots the guest kernel itself under KVM with no root
file system and a short deadline: a kernel that gets all the way to its
"VFS: Unable to mount root fs" panic has run every initcall, and with
``panic=-1 -no-reboot`` QEMU then exits by itself.  The verdict is cached
per host boot (``/proc/sys/kernel/random/boot_id``), QEMU binary and kernel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from harness import cache as store
from harness.errors import UsageError

log = logging.getLogger("harness.accel")

Requested = Literal["auto", "kvm", "tcg"]
PANIC_MARKER = "Kernel panic - not syncing"
DEFAULT_DEADLINE_S = 20.0


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator a run uses, and the reason, for reports."""

    accel: Literal["kvm", "tcg"]
    reason: str


@dataclass(frozen=True)
class KvmVerdict:
    works: bool
    reason: str


def kvm_device_problem(dev_kvm: Path = Path("/dev/kvm")) -> str | None:
    """Why ``dev_kvm`` cannot be used at all, or ``None`` if it opens."""
    if not dev_kvm.exists():
        return f"{dev_kvm} does not exist (no KVM module, or not exposed to this host)"
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {dev_kvm} read-write: {exc.strerror} (add the user to group kvm)"
    os.close(fd)
    return None


#: The guest architecture -> the probe's machine and console: the kernel
#: alone (no firmware: an arm64 Image boots straight from -kernel on virt)
PROBE_MACHINES = {"x86_64": ("pc", "ttyS0"), "aarch64": ("virt", "ttyAMA0")}


def host_arch() -> str:
    """The host's architecture as QEMU names targets (x86_64, aarch64)."""
    return platform.machine().replace("arm64", "aarch64").replace("amd64", "x86_64")


def foreign_kvm(guest_arch: str, host: str) -> UsageError:
    """``--accel kvm`` for a guest of another architecture than the host's."""
    return UsageError(f"KVM requested for an {guest_arch} guest on this {host} host: KVM "
                      "runs only guests of the host's architecture", value="kvm",
                      fix="use --accel auto or tcg (TCG emulates the guest's CPU)")


def kvm_probe_argv(qemu_binary: str, kernel: Path, serial_log: Path,
                   arch: str = "x86_64") -> list[str]:
    """The probe's command line: the guest kernel, no root fs, exit on panic."""
    machine, console = PROBE_MACHINES[arch]
    return [
        qemu_binary, "-accel", "kvm", "-cpu", "host", "-machine", machine, "-m", "256M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", f"file:{serial_log}",
        "-kernel", str(kernel),
        "-append", f"console={console} panic=-1 root=/dev/memhp-kvm-probe-none loglevel=4",
        "-no-reboot",
    ]


def probe_kvm_boot(
    qemu_binary: str, kernel: Path, *, deadline_s: float = DEFAULT_DEADLINE_S,
    arch: str = "x86_64",
) -> KvmVerdict:
    """Boot ``kernel`` under KVM; works only if it reaches its root-fs panic."""
    with tempfile.TemporaryDirectory(prefix="memhp-kvmprobe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = kvm_probe_argv(qemu_binary, kernel, serial, arch)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )
        except OSError as exc:
            return KvmVerdict(False, f"cannot run {qemu_binary}: {exc}")
        try:
            out, _ = proc.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return KvmVerdict(
                False, f"guest kernel did not finish booting under KVM within {deadline_s:.0f}s"
            )
        elapsed = time.monotonic() - start
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if PANIC_MARKER in text:
            return KvmVerdict(True, f"guest kernel booted under KVM in {elapsed:.1f}s")
        last = (out.strip().splitlines() or ["no output"])[-1]
        return KvmVerdict(
            False, f"QEMU under KVM exited {proc.returncode} before the kernel booted: {last}"
        )


def _boot_id(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "unknown-boot"


def choose_accel(
    requested: str,
    *,
    qemu_binary: str,
    kernel: Path | None,
    cache_dir: Path | None,
    dev_kvm: Path = Path("/dev/kvm"),
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id"),
    prober: Callable[[str, Path], KvmVerdict] | None = None,
    guest_arch: str = "x86_64",
    host: str | None = None,
) -> AccelChoice:
    """Resolve ``auto|kvm|tcg`` to an accelerator, with the reason.

    ``kvm`` is honoured without probing (the user asked for it; QEMU's own
    error surfaces if it fails); ``auto`` probes and falls back to TCG.  KVM
    runs only guests of the host's architecture (``guest_arch``, ``host``:
    QEMU's names, x86_64 or aarch64): another one's is TCG, and said so.
    """
    host = host or host_arch()
    if requested == "tcg":
        return AccelChoice("tcg", "TCG requested")
    if requested in ("kvm", "auto") and guest_arch != host:
        if requested == "kvm":
            raise foreign_kvm(guest_arch, host)
        return AccelChoice("tcg", f"the guest is {guest_arch}, this host {host}: KVM runs "
                                  "only the host's architecture; using TCG")
    if prober is None:
        def prober(binary: str, kernel: Path) -> KvmVerdict:
            return probe_kvm_boot(binary, kernel, arch=guest_arch)
    if requested == "kvm":
        problem = kvm_device_problem(dev_kvm)
        if problem:
            raise UsageError(f"KVM requested but {problem}", value="kvm",
                             fix="use --accel auto or tcg")
        return AccelChoice("kvm", "KVM requested")
    if requested != "auto":
        raise UsageError(f"accelerator {requested!r} unknown", value=requested,
                         fix="use auto, kvm or tcg")
    problem = kvm_device_problem(dev_kvm)
    if problem:
        return AccelChoice("tcg", f"KVM unusable: {problem}; using TCG")
    if kernel is None:
        return AccelChoice("tcg", "no guest kernel to probe KVM with; using TCG")
    verdict = _cached_verdict(qemu_binary, kernel, cache_dir, boot_id_file, prober)
    if verdict.works:
        return AccelChoice("kvm", f"KVM probe: {verdict.reason}")
    return AccelChoice("tcg", f"KVM probe failed: {verdict.reason}; using TCG")


def _cached_verdict(
    qemu_binary: str, kernel: Path, cache_dir: Path | None, boot_id_file: Path,
    prober: Callable[[str, Path], KvmVerdict],
) -> KvmVerdict:
    if cache_dir is None:
        return prober(qemu_binary, kernel)
    key = hashlib.sha256(
        "\0".join([_boot_id(boot_id_file), qemu_binary, str(kernel.resolve())]).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"kvm-probe-{key}.json"
    with store.lock(cache_dir, path.name):
        try:
            data = json.loads(path.read_text())
            cached = KvmVerdict(bool(data["works"]), str(data["reason"]))
            return KvmVerdict(cached.works, cached.reason + " (cached for this host boot)")
        except (OSError, ValueError, KeyError):
            pass
        verdict = prober(qemu_binary, kernel)
        store.write_file(path, json.dumps(asdict(verdict)), mode=0o644)
        log.info("KVM probe: %s", verdict.reason)
        return verdict
