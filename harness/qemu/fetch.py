"""A QEMU from Debian's packages, unpacked into memhp's cache, never installed.

``--qemu debian:10.0`` (the CLI, ``--memhp-qemu`` / ``MEMHP_QEMU`` in the
pytest plugin) resolves here to an executable; ``--qemu PATH`` or a name on
``PATH`` is used as it is.  For ``debian:X.Y`` memhp downloads through its
own apt (:mod:`harness.apt`, bookworm-backports for 10.0, trixie-backports
for 11.1):

* ``qemu-system-x86`` (the binary), ``qemu-system-data`` (its ROMs,
  kvmvapic/linuxboot) and ``seabios`` (the BIOS it expects: 10.0 depends on
  seabios >> 1.16.3, bookworm has 1.16.2) of that suite;

unpacks them with ``dpkg-deb -x`` into ``<cache>/qemu/debian-<version>/``,
and writes beside them a one-line launcher, ``qemu-system-x86_64``, that
execs the unpacked binary with ``-L`` for both firmware directories (a
Debian QEMU looks for its firmware in /usr/share only: it is not
relocatable).  The launcher keeps every caller unchanged: version
detection, the KVM probe and the VM itself all run it as they would run
``/usr/bin/qemu-system-x86_64``, and ``exec`` keeps QEMU's PID.

For a QEMU of bookworm-backports (10.0), the libraries the binary needs
are those of Debian 12's own qemu-system-x86 (which ``make setup``
installs): checked after unpacking against the dynamic loader's cache, and
any missing one is named (exit 3).

A QEMU of a newer Debian (11.1 of trixie-backports, built against glibc
2.41 where Debian 12 has 2.36) brings its own libraries: memhp's trixie apt
(:data:`harness.apt.TRIXIE`, its own root ``<cache>/apt-trixie``) resolves
the dependency closure of the packages on an empty system (90 packages,
libc6 included), all are unpacked into the same root, and the launcher
execs the *unpacked* dynamic loader on the binary::

    QEMU_MODULE_DIR=ROOT/usr/lib/x86_64-linux-gnu/qemu; export QEMU_MODULE_DIR
    exec ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
        --library-path ROOT/usr/lib/x86_64-linux-gnu:ROOT/lib/x86_64-linux-gnu:... \
        ROOT/usr/bin/qemu-system-x86_64 -L ROOT/usr/share/qemu -L ROOT/usr/share/seabios "$@"

Nothing of the host's libraries is used (the loader searches only
``--library-path`` and then its own built-in trixie paths, which on this
host are Debian 12's: hence every soname must be in the root, checked after
unpacking).  ``QEMU_MODULE_DIR`` points QEMU at its unpacked modules
(Debian builds QEMU with ``--enable-modules``: display, audio, block
drivers; without it QEMU looks in the host's /usr/lib/x86_64-linux-gnu/qemu,
which holds 7.2's modules and would be refused as of another build).
``exec`` keeps QEMU's PID here too.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import cache as store
from harness.errors import HostEnvironmentError, UsageError

PREFIX = "debian:"
PACKAGES = ("qemu-system-x86", "qemu-system-data", "seabios")
#: With its own libraries: the iPXE ROMs too (qemu-system-data only links to them).
OWN_LIBRARY_EXTRA = ("ipxe-qemu",)
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64",
            "usr/lib")
LOADER = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
MODULE_DIR = "usr/lib/x86_64-linux-gnu/qemu"
FIRMWARE_DIRS = ("usr/share/qemu", "usr/share/seabios")


@dataclass(frozen=True)
class Flavour:
    """One QEMU system emulator in Debian's packages: its package, binary
    and what else it takes (``qemu-system-arm`` holds qemu-system-aarch64;
    virt's UEFI firmware is not QEMU's: :mod:`harness.qemu.firmware`)."""

    package: str
    binary: str
    extra: tuple[str, ...]
    suffix: str  # of the cache directory: "" for x86 (as before), "-aarch64"

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package, *self.extra)


#: The guest architecture (QEMU's name) -> its emulator's packages
FLAVOURS = {
    "x86_64": Flavour("qemu-system-x86", "qemu-system-x86_64", PACKAGES[1:], ""),
    "aarch64": Flavour("qemu-system-arm", "qemu-system-aarch64", ("qemu-system-data",),
                       "-aarch64"),
}


@dataclass(frozen=True)
class DebianQemu:
    """Where ``debian:X.Y`` comes from: the suite whose qemu-system-x86 is X.Y,
    and whether it runs on the host's libraries or brings its own (a newer
    Debian's glibc and libraries, run through their own dynamic loader)."""

    version: str
    suite: str | None
    own_libraries: bool = False


KNOWN: dict[str, DebianQemu] = {
    "7.2": DebianQemu("7.2", None),                    # bookworm (the system's)
    "10.0": DebianQemu("10.0", "bookworm-backports"),  # 1:10.0.x~bpo12, host libraries
    # 1:11.1.3+ds-2~bpo13+1, glibc 2.41: its own libraries from trixie
    "11.1": DebianQemu("11.1", "trixie-backports", own_libraries=True),
}


def is_debian_spec(text: str) -> bool:
    return text.startswith(PREFIX)


def resolve_qemu(text: str, *, cache: Path | None = None, arch: str = "x86_64") -> str:
    """``debian:X.Y`` -> the launcher of that QEMU for ``arch`` guests
    (fetched on first use); anything else is returned unchanged (a path or a
    name on PATH)."""
    if not is_debian_spec(text):
        return text
    flavour = FLAVOURS[arch]
    wanted = text[len(PREFIX):]
    known = KNOWN.get(wanted)
    if known is None:
        raise UsageError(f"no Debian QEMU {wanted!r} is known to memhp", value=text,
                         fix=f"use one of {', '.join(PREFIX + v for v in KNOWN)}, or --qemu PATH")
    from harness.apt import TRIXIE, Apt

    apt = Apt(cache, sources=TRIXIE) if known.own_libraries else Apt(cache)
    version = apt.version(flavour.package, known.suite)
    upstream = version.split(":", 1)[-1]
    if not upstream.startswith(wanted + ".") and not upstream.startswith(wanted + "+"):
        raise HostEnvironmentError(
            f"Debian's {flavour.package} in {known.suite or 'bookworm'} is {version}, not "
            f"{wanted} (fix: --qemu PATH to a QEMU {wanted})")
    root = (cache or store.cache_root()) / "qemu" / (
        f"debian-{upstream.replace('~', '_')}{flavour.suffix}")
    launcher = root / flavour.binary
    with store.lock(root.parent, root.name):
        if not launcher.exists():
            if known.own_libraries:
                debs = apt.download_closure((*flavour.packages, *OWN_LIBRARY_EXTRA),
                                            known.suite)
                unpack(root, sorted(debs.values()))
                check_own_libraries(root, flavour.binary)
            else:
                debs = apt.download(flavour.packages, known.suite)
                unpack(root, [debs[p] for p in flavour.packages])
            write_launcher(root, own_libraries=known.own_libraries, binary=flavour.binary)
    if not known.own_libraries:
        check_libraries(root / "usr/bin" / flavour.binary)
    return str(launcher)


def unpack(root: Path, debs: list[Path]) -> None:
    """The packages unpacked into ``root`` (built beside it, then renamed in)."""
    with store.building(root, mode=0o755, prefix=".unpack-") as tmp:
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True,
                           capture_output=True)


def launcher_text(root: Path, *, own_libraries: bool = False,
                  binary_name: str = "qemu-system-x86_64") -> str:
    """The launcher script: exec the unpacked binary with ``-L`` for its
    firmware; with ``own_libraries``, through the unpacked dynamic loader on
    the unpacked libraries and modules only (module docstring)."""
    binary = shlex.quote(str(root / "usr/bin" / binary_name))
    dirs = " ".join(f"-L {shlex.quote(str(root / d))}" for d in FIRMWARE_DIRS)
    if not own_libraries:
        return f'#!/bin/sh\nexec {binary} {dirs} "$@"\n'
    libs = shlex.quote(":".join(str(root / d) for d in LIB_DIRS))
    return ("#!/bin/sh\n"
            f"QEMU_MODULE_DIR={shlex.quote(str(root / MODULE_DIR))}\n"
            "export QEMU_MODULE_DIR\n"
            f"exec {shlex.quote(str(root / LOADER))} --library-path {libs} "
            f'{binary} {dirs} "$@"\n')


def write_launcher(root: Path, *, own_libraries: bool = False,
                   binary: str = "qemu-system-x86_64") -> None:
    store.write_file(root / binary,
                     launcher_text(root, own_libraries=own_libraries, binary_name=binary),
                     mode=0o755)


def needed_libraries(readelf_output: str) -> list[str]:
    """The NEEDED sonames in ``readelf -d`` output."""
    out = []
    for line in readelf_output.splitlines():
        if "(NEEDED)" in line and "[" in line:
            out.append(line.rsplit("[", 1)[1].rstrip("]").strip())
    return out


def missing_libraries(needed: list[str], ldconfig_output: str) -> list[str]:
    have = {line.split(" (", 1)[0].strip() for line in ldconfig_output.splitlines()}
    return [lib for lib in needed if lib not in have]


def unresolved_in_root(needed: list[str], present: set[str]) -> list[str]:
    """The sonames of ``needed`` that no file of the root's library
    directories (``present``: file names) provides."""
    return [lib for lib in needed if lib not in present]


def check_own_libraries(root: Path, binary: str = "qemu-system-x86_64") -> None:
    """Every soname the unpacked binary needs is in the unpacked root, and so
    is the loader (the closure came from apt: a miss means a package layout
    memhp does not know)."""
    if not (root / LOADER).exists():
        raise HostEnvironmentError(f"the unpacked QEMU in {root} has no dynamic loader "
                                   f"{LOADER} (fix: remove {root} and retry, or --qemu PATH)")
    try:
        elf = subprocess.run(["readelf", "-d", str(root / "usr/bin" / binary)],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return  # no binutils: the loader itself will name a missing library
    present = {p.name for d in LIB_DIRS if (root / d).is_dir() for p in (root / d).iterdir()}
    missing = unresolved_in_root(needed_libraries(elf), present)
    if missing:
        raise HostEnvironmentError(
            f"the unpacked QEMU in {root} needs libraries its packages did not bring: "
            f"{', '.join(missing)} (fix: remove {root} and retry, or --qemu PATH)")


def check_libraries(binary: Path) -> None:
    try:
        elf = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                             check=True).stdout
        cache = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True,
                               check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return  # no binutils: QEMU itself will name a missing library
    missing = missing_libraries(needed_libraries(elf), cache)
    if missing:
        raise HostEnvironmentError(
            f"{binary} needs libraries this host lacks: {', '.join(missing)} (fix: apt-get "
            "install qemu-system-x86, whose dependencies are the same, or the packages "
            "providing them)")
