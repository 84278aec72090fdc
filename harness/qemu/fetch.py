"""A QEMU from Debian's packages, unpacked into memhp's cache, never installed.

``--qemu debian:10.0`` (the CLI, ``--memhp-qemu`` / ``MEMHP_QEMU`` in the
pytest plugin) resolves here to an executable; ``--qemu PATH`` or a name on
``PATH`` is used as it is.  For ``debian:X.Y`` memhp downloads through its
own apt (:mod:`harness.apt`, bookworm-backports for 10.0):

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

The libraries the binary needs are those of Debian 12's own
qemu-system-x86 (which ``make setup`` installs): checked after unpacking
against the dynamic loader's cache, and any missing one is named (exit 3).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.errors import HostEnvironmentError, UsageError

PREFIX = "debian:"
PACKAGES = ("qemu-system-x86", "qemu-system-data", "seabios")


@dataclass(frozen=True)
class DebianQemu:
    """Where ``debian:X.Y`` comes from: the suite whose qemu-system-x86 is X.Y."""

    version: str
    suite: str | None


# The QEMU of each Debian 12 suite memhp's apt knows (harness.apt.SUITES).
KNOWN: dict[str, DebianQemu] = {
    "7.2": DebianQemu("7.2", None),                    # bookworm (the system's)
    "10.0": DebianQemu("10.0", "bookworm-backports"),  # 1:10.0.x~bpo12
}


def is_debian_spec(text: str) -> bool:
    return text.startswith(PREFIX)


def resolve_qemu(text: str, *, cache: Path | None = None) -> str:
    """``debian:X.Y`` -> the launcher of that QEMU (fetched on first use);
    anything else is returned unchanged (a path or a name on PATH)."""
    if not is_debian_spec(text):
        return text
    wanted = text[len(PREFIX):]
    known = KNOWN.get(wanted)
    if known is None:
        raise UsageError(f"no Debian QEMU {wanted!r} is known to memhp", value=text,
                         fix=f"use one of {', '.join(PREFIX + v for v in KNOWN)}, or --qemu PATH")
    from harness.apt import Apt, cache_root

    apt = Apt(cache)
    version = apt.version("qemu-system-x86", known.suite)
    upstream = version.split(":", 1)[-1]
    if not upstream.startswith(wanted + ".") and not upstream.startswith(wanted + "+"):
        raise HostEnvironmentError(
            f"Debian's qemu-system-x86 in {known.suite or 'bookworm'} is {version}, not "
            f"{wanted} (fix: --qemu PATH to a QEMU {wanted})")
    root = (cache or cache_root()) / "qemu" / f"debian-{upstream.replace('~', '_')}"
    launcher = root / "qemu-system-x86_64"
    with FileLock(str(root) + ".lock"):
        if not launcher.exists():
            debs = apt.download(PACKAGES, known.suite)
            unpack(root, [debs[p] for p in PACKAGES])
            write_launcher(root)
    check_libraries(root / "usr/bin/qemu-system-x86_64")
    return str(launcher)


def unpack(root: Path, debs: list[Path]) -> None:
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True,
                       capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)


def launcher_text(root: Path) -> str:
    binary = root / "usr/bin/qemu-system-x86_64"
    dirs = " ".join(f"-L {shlex.quote(str(root / d))}" for d in ("usr/share/qemu",
                                                                  "usr/share/seabios"))
    return f'#!/bin/sh\nexec {shlex.quote(str(binary))} {dirs} "$@"\n'


def write_launcher(root: Path) -> None:
    path = root / "qemu-system-x86_64"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(launcher_text(root))
    tmp.chmod(0o755)
    os.replace(tmp, path)


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
