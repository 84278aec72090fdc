"""A user's kernel (``--kernel``): its modules and config, found and
checked before any build or download; the drivers a guest cannot be
reached without."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.image.bzimage import arm64_kernel_version, kernel_version
from harness.image.modules import modules_release

_MODULES_FIX = ("give the modules built with this kernel: lib/modules/<version> or the "
                "INSTALL_MOD_PATH root they were installed under")


def find_modules_dir(modules: Path, kver: str) -> Path:
    """The ``lib/modules/<kver>`` directory in what the user gave as ``--modules``,
    checked against the kernel's release (the modules' ``vermagic``)."""
    if not modules.is_dir():
        raise UsageError(f"modules {str(modules)!r} is not a directory", value=modules,
                         fix=_MODULES_FIX)
    for cand in (modules / "lib/modules" / kver, modules / kver):
        if cand.is_dir():
            _check_release(cand, kver, modules)
            return cand
    marks = ("modules.dep", "modules.order", "modules.builtin", "kernel")
    if any((modules / m).exists() for m in marks):
        _check_release(modules, kver, modules)
        return modules
    others = sorted(p.name for base in (modules / "lib/modules", modules) if base.is_dir()
                    for p in base.iterdir() if (p / "modules.order").exists()
                    or (p / "modules.dep").exists())
    found = f"; it holds modules for {', '.join(others)}" if others else ""
    raise UsageError(f"modules {str(modules)!r} has no modules for kernel {kver}{found}",
                     value=modules, fix=_MODULES_FIX)


def _check_release(mdir: Path, kver: str, given: Path) -> None:
    release = modules_release(mdir)
    if release is None and mdir.name != kver and re.match(r"\d+\.\d+", mdir.name):
        release = mdir.name  # no module file to read: trust the directory's name
    if release is not None and release != kver:
        raise UsageError(f"modules {str(given)!r} are for kernel {release}, but the kernel "
                         f"is {kver}", value=given, fix=_MODULES_FIX)


def modules_candidates(kernel: Path, kver: str) -> list[Path]:
    """Where modules of ``kernel`` may sit, in the order memhp looks:

    * ``<root>/usr/lib/modules/VER/vmlinuz`` (Debian's kernels since 6.12 in
      trixie, 7.x in sid, trixie-backports, experimental: kernel, config and
      System.map inside the modules directory) -> that directory;
    * ``<root>/boot/vmlinuz-VER`` of an unpacked Debian package (or an
      ``INSTALL_PATH``/``INSTALL_MOD_PATH`` pair) -> ``<root>/lib/modules/VER``,
      then ``<root>/usr/lib/modules/VER``."""
    real = kernel.resolve()
    out: list[Path] = []
    if real.parent.name == kver and real.parent.parent.name == "modules":
        out.append(real.parent)
    root = real.parent.parent
    out += [root / "lib/modules" / kver, root / "usr/lib/modules" / kver]
    return list(dict.fromkeys(out))


def modules_beside(kernel: Path, kver: str) -> Path | None:
    """The first of :func:`modules_candidates` that holds modules (a ``kernel/``
    tree), or None."""
    return next((c for c in modules_candidates(kernel, kver) if (c / "kernel").is_dir()), None)


def find_config(kernel: Path, kver: str, explicit: Path | None,
                debs: Iterable[Path] = ()) -> tuple[str | None, str]:
    """The kernel's build config and where it was found, in this order:
    ``--kernel-config``; ``config-VER`` or ``.config`` beside the kernel (a
    Debian ``/boot``, memhp's kernel cache; ``config`` beside a memhp image's
    ``vmlinuz``); the ``.config`` of the source tree
    the bzImage sits in (``arch/x86/boot/bzImage``); IKCONFIG inside the
    bzImage; ``boot/config-VER`` inside the Debian package the modules came
    from.  (None, why) when none exists."""
    from harness.errors import KconfigError
    from harness.kconfig.source import read_config

    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"kernel config {str(explicit)!r} is not a file", value=explicit,
                             fix="give the kernel's .config (or /boot/config-VER)")
        try:
            text, _ = read_config(explicit)
        except KconfigError as exc:
            raise UsageError(f"--kernel-config {str(explicit)!r}: {exc}", value=explicit,
                             fix="give the kernel's .config") from exc
        return text, f"--kernel-config {explicit}"
    real = kernel.resolve()
    near = [real.parent / f"config-{kver}", real.parent / ".config"]
    if real.name == "vmlinuz":
        # a memhp image's own layout, and Debian's usr/lib/modules/VER/{vmlinuz,config}
        near.append(real.parent / "config")
    if real.parts[-4:-1] in (("arch", "x86", "boot"), ("arch", "x86_64", "boot"),
                             ("arch", "arm64", "boot")):
        near.append(real.parents[3] / ".config")
    for cand in near:
        if cand.is_file():
            try:
                return read_config(cand)[0], str(cand)
            except KconfigError:
                continue
    try:
        text, kind = read_config(real)
        return text, f"{kind} in {kernel}"
    except KconfigError:
        pass
    for deb in debs:
        try:
            return read_config(deb)[0], f"boot/config-{kver} in {deb.name}"
        except KconfigError:
            continue
    return None, "no config found (none beside the kernel, no IKCONFIG)"


@dataclass(frozen=True)
class UserKernel:
    """A user's bzImage with what goes with it (checked before any download)."""

    kernel: Path
    kver: str
    modules: Path | None  # its lib/modules/<kver>
    modules_from: str
    kdeb: Path | None  # a cached Debian package of this release, for its modules
    config: str | None
    config_from: str
    modules_looked: tuple[str, ...] = ()  # where memhp looked when none were given


def user_kernel(kernel: Path, modules: Path | None, kernel_config: Path | None,
                debs: Path, arch: str = "amd64") -> UserKernel:
    """``arch``: the guest's (Debian's name): amd64 takes a bzImage, arm64 an Image."""
    # validates the file before anything else
    kver = arm64_kernel_version(kernel) if arch == "arm64" else kernel_version(kernel)
    kdeb = None
    if modules is not None:
        mdir: Path | None = find_modules_dir(modules, kver)
        how = "--modules"
    else:
        # A distro kernel needs its NIC and fw_cfg modules: find them rather
        # than boot a guest that can never be reached.
        looked = [*map(str, modules_candidates(kernel, kver)), f"/lib/modules/{kver}"]
        mdir, how = modules_beside(kernel, kver), "beside the kernel"
        if mdir is None and (Path("/lib/modules") / kver / "kernel").is_dir():
            mdir, how = Path("/lib/modules") / kver, "the host's"
        if mdir is None:
            pkgs = [f"linux-image-{kver}_*_{arch}.deb", f"linux-modules-{kver}_*_{arch}.deb"]
            kdeb = next(iter(sorted(d for g in pkgs for d in debs.glob(g))), None)
            looked.append(f"{debs}/{{{','.join(pkgs)}}}")
            how = f"package {kdeb.name}" if kdeb is not None else "none"
    config, config_from = find_config(kernel, kver, kernel_config,
                                      [kdeb] if kdeb is not None else [])
    return UserKernel(kernel, kver, mdir, how, kdeb, config, config_from,
                      tuple(looked) if modules is None else ())


#: The boot modules the guest cannot be reached without, and their options.
NEEDED_DRIVERS = {"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_net": "CONFIG_VIRTIO_NET",
                  "qemu_fw_cfg": "CONFIG_FW_CFG_SYSFS"}


def check_needed_drivers(user: UserKernel) -> None:
    """A kernel whose NIC or fw_cfg driver is a module, with no modules found:
    refuse before any VM starts, naming where memhp looked (a guest booted
    so could never be reached over SSH)."""
    if user.modules is not None or user.kdeb is not None or user.config is None:
        return
    values = dict(re.findall(r"^(CONFIG_\w+)=(\S+)", user.config, re.M))
    missing = [f"{mod} ({opt}={values.get(opt, 'not set')})"
               for mod, opt in NEEDED_DRIVERS.items() if values.get(opt) != "y"]
    if missing:
        where = "; ".join(user.modules_looked) or "nowhere"
        raise UsageError(
            f"kernel {user.kver} ({user.kernel}) needs modules memhp did not find: "
            f"{', '.join(missing)}; looked in: {where}", value=user.kernel,
            fix="pass --modules DIR (the kernel's lib/modules/VER, or the root it was "
                "installed under), or build the drivers in (=y)")
