"""From a scenario and a guest choice to a running :class:`VM`.

Shared by ``memhp run``, ``memhp compare``, the benchmark and the pytest
plugin, so that every entry point validates the guest the same way and
picks the accelerator the same way.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.files import check_readable_file
from harness.machines import machine
from harness.qemu.accel import AccelChoice, choose_accel
from harness.qemu.config import DiskBoot, KernelBoot, VMConfig
from harness.qemu.devices import MemoryDevice, backend_object, pc_dimm
from harness.qemu.firmware import firmware_path
from harness.qemu.vm import VM, Timeouts
from harness.resources import cache_root
from harness.scenario import Scenario

_counter = itertools.count()


@dataclass(frozen=True)
class GuestSource:
    """What the user asked to boot: default guest, own kernel, or own disk."""

    kernel: Path | None = None
    modules: Path | None = None
    disk: Path | None = None
    kernel_package: str | None = None  # NAME or NAME/SUITE (harness.image.build)
    suite: str | None = None
    kernel_config: Path | None = None
    ssh_user: str = "root"
    ssh_key: Path | None = None
    ssh_host_key: Path | None = None
    arch: str = "amd64"  # the machine's (Debian's name): which default image, which packages


@dataclass(frozen=True)
class ResolvedGuest:
    """A guest ready to boot: a built image, or a disk with SSH credentials."""

    image: Any = None  # harness.image.GuestImage
    disk: Path | None = None
    ssh_user: str = "root"
    ssh_key: Path | None = None
    ssh_host_key: str | None = None  # pinned "TYPE BASE64" line for --disk

    def describe(self) -> str:
        if self.image is not None:
            return f"{self.image.kernel_version} ({self.image.kernel})"
        return f"disk {self.disk}"

    @property
    def kernel(self) -> Path | None:
        return None if self.image is None else Path(self.image.kernel)


def resolve_guest(source: GuestSource) -> ResolvedGuest:
    """Validate the user's choice and build (or fetch from cache) the image."""
    if source.disk is not None:
        if source.kernel is not None or source.kernel_package is not None:
            raise UsageError(
                "--disk and --kernel/--kernel-package cannot be combined",
                fix="boot either your disk image or a kernel with the default initramfs",
            )
        check_readable_file(source.disk, "disk image", "give a raw or qcow2 image")
        if source.ssh_key is None:
            raise UsageError("--disk needs --ssh-key (the guest's authorized key)",
                             fix="pass --ssh-key PATH and --ssh-user NAME")
        check_readable_file(source.ssh_key, "SSH key", "give the private key file")
        host_line = None
        if source.ssh_host_key is not None:
            host_line = read_host_key(source.ssh_host_key)
        return ResolvedGuest(disk=source.disk, ssh_user=source.ssh_user, ssh_key=source.ssh_key,
                             ssh_host_key=host_line)
    from harness.image import build_image, ensure_default_image

    if source.kernel is not None:
        check_readable_file(source.kernel, "kernel",
                            "give the path of a bzImage (arch/x86/boot/bzImage), or an "
                            "arm64 Image for --machine virt")
        return ResolvedGuest(image=build_image(kernel=source.kernel, modules=source.modules,
                                               kernel_config=source.kernel_config,
                                               kernel_package=source.kernel_package,
                                               arch=source.arch))
    if source.kernel_package is not None or source.suite is not None \
            or source.modules is not None or source.kernel_config is not None:
        return ResolvedGuest(image=build_image(
            kernel_package=source.kernel_package, suite=source.suite, modules=source.modules,
            kernel_config=source.kernel_config, arch=source.arch))
    return ResolvedGuest(image=ensure_default_image(arch=source.arch))


def read_host_key(path: Path) -> str:
    """The guest's public host key (``ssh_host_*_key.pub`` or a known_hosts-style
    line) as "TYPE BASE64"; refused with the fix when it is not one."""
    import base64
    import binascii

    fix = "give the guest's /etc/ssh/ssh_host_ed25519_key.pub (one 'TYPE BASE64' line)"
    check_readable_file(path, "SSH host key", fix)
    words = path.read_text(errors="replace").split()
    for i, word in enumerate(words[:-1]):
        if word.startswith(("ssh-", "ecdsa-sha2-")):
            try:
                blob = base64.b64decode(words[i + 1], validate=True)
            except (binascii.Error, ValueError):
                break
            if blob[4:4 + len(word)] == word.encode():
                return f"{word} {words[i + 1]}"
            break
    raise UsageError(f"SSH host key {str(path)!r} is not an OpenSSH public key", value=path,
                     fix=fix)


def disk_format(path: Path) -> str:
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def vm_config(scenario: Scenario, guest: ResolvedGuest, *, accel: str, qemu_binary: str,
              name: str) -> VMConfig:
    spec = scenario.machine
    boot: KernelBoot | DiskBoot | None = None
    if guest.disk is not None:
        boot = DiskBoot(guest.disk, disk_format(guest.disk))  # type: ignore[arg-type]
    elif guest.image is not None:
        boot = KernelBoot(Path(guest.image.kernel), Path(guest.image.initrd),
                          tuple(guest.image.cmdline) + scenario.append)
    board = machine(spec.machine)
    return VMConfig(
        name=name, machine=spec.machine_name, memory=spec.ram_size, slots=spec.slots,
        maxmem=spec.maxmem, numa=tuple(spec.numa), smp=scenario.smp,
        accel=accel,  # type: ignore[arg-type]
        boot=boot, qemu_binary=qemu_binary, memory_devices=coldplug_devices(spec),
        pvpanic=board.pvpanic, firmware=firmware_path(board),
    )


def coldplug_devices(spec: Any) -> tuple[MemoryDevice, ...]:
    """The scenario's cold-plugged DIMMs as command-line devices, in order,
    each over its backend (RAM unless the scenario names one; no file
    backends here: harness.scenario refuses them for cold-plugged DIMMs)."""
    return tuple(pc_dimm(d.id, backend_object(d.size, d.backend), d.node, d.addr)
                 for d in spec.coldplug)


def pick_accel(requested: str, guest: ResolvedGuest, qemu_binary: str,
               arch: str = "x86_64") -> AccelChoice:
    """``arch``: the guest's, as QEMU names it (the machine's)."""
    return choose_accel(requested, qemu_binary=qemu_binary, kernel=guest.kernel,
                        cache_dir=cache_root(), guest_arch=arch)


def check_guest_arch(board: Any, guest: ResolvedGuest) -> None:
    """A UsageError when the guest image is another architecture's than the
    machine's (an amd64 kernel on virt), before any VM."""
    have = getattr(guest.image, "arch", board.debian_arch)
    if have != board.debian_arch:
        raise UsageError(f"the guest image is {have} ({guest.describe()}), machine "
                         f"{board.name!r} runs {board.debian_arch} guests", value=have,
                         fix=f"boot a {board.debian_arch} kernel on {board.name} (memhp "
                             "builds the default one for the machine)")


@contextmanager
def launch_vm(
    scenario: Scenario,
    guest: ResolvedGuest,
    *,
    accel: str = "auto",
    qemu_binary: str | None = None,
    keep: Path | None = None,
    artifacts_on_failure: Path | None = None,
    timeout_scale: float = 1.0,
    name: str = "vm",
    warm: Any = False,
    boot_attempts: int = 2,
) -> Iterator[tuple[VM, AccelChoice]]:
    """Boot the scenario's machine; the VM is ended however the block ends.

    ``warm``: start from a saved state of the same inputs when there is one,
    else boot and save one (:mod:`harness.warm`; ``vm.start_info`` says which);
    True for memhp's state cache, or a :class:`harness.warm.WarmStarts`.
    ``boot_attempts``: boots in all when one hangs (:meth:`VM.boot`).
    """
    board = machine(scenario.machine.machine)
    check_guest_arch(board, guest)
    qemu_binary = qemu_binary or board.qemu_binary  # None: the machine's own
    choice = pick_accel(accel, guest, qemu_binary, board.arch)
    vm_name = f"{name}-{os.getpid()}-{next(_counter)}"
    cfg = vm_config(scenario, guest, accel=choice.accel, qemu_binary=qemu_binary, name=vm_name)
    vm = VM(
        cfg, image=guest.image, ssh_user=guest.ssh_user, ssh_key=guest.ssh_key,
        ssh_host_key=guest.ssh_host_key,
        timeouts=Timeouts.for_accel(choice.accel, timeout_scale),
        artifacts_dir=keep or artifacts_on_failure, keep=keep is not None,
        warm=(_warm_starts() if warm is True else warm or None),
        boot_attempts=boot_attempts,
    )
    with vm:
        yield vm, choice


def _warm_starts() -> Any:
    from harness.warm import WarmStarts

    return WarmStarts()
