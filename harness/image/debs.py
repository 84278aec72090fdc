"""Debian kernel packages for the guest image: the package spec
(``NAME[/SUITE]``), resolving and downloading (memhp's own apt,
:mod:`harness.apt`), the split packages of 7.x, and unpacking a kernel
.deb to find its vmlinuz, config and modules (never installed)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.apt import Apt
from harness.cache import cache_root
from harness.errors import HostEnvironmentError, ImageBuildError, UsageError
from harness.image.guest import Progress


def run_tool(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise HostEnvironmentError(f"{argv[0]} is not installed ({what}); "
                                   "fix: run `make setup` (apt-get install)") from exc
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        if "Unable to locate package" in err or "has no installation candidate" in err:
            raise UsageError(f"{what}: {err}", fix="check the package name; if it is right, "
                             "run `apt-get update` so apt knows it")
        if "Could not resolve" in err or "Failed to fetch" in err or "Temporary failure" in err:
            raise HostEnvironmentError(f"{what}: cannot reach the package mirror: {err}")
        raise ImageBuildError(f"{what} failed ({' '.join(argv)}): {err}")
    return proc.stdout


def resolve_kernel_package(name: str, suite: str | None = None,
                           cache_dir: Path | None = None) -> str:
    """A metapackage (linux-image-cloud-amd64) -> the concrete image package
    (through memhp's own apt, :mod:`harness.apt`)."""
    return Apt.for_suite(suite, cache_root(cache_dir)).resolve(name, suite)


def download(packages: Iterable[str], debs: Path, progress: Progress,
             suite: str | None = None) -> dict[str, Path]:
    """Download what is not cached in ``debs`` yet (memhp's own apt); name -> .deb."""
    return Apt.for_suite(suite, debs.parent, progress=progress).download(packages, suite,
                                                                         dest=debs)


_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]+")


def split_package_spec(spec: str, suite: str | None = None) -> tuple[str, str | None]:
    """``NAME``, ``NAME/SUITE`` or ``debian:NAME/SUITE`` (apt's own ``pkg/release``
    spelling) plus an optional ``--suite`` -> (name, suite)."""
    text = spec.removeprefix("debian:")
    name, sep, in_spec = text.partition("/")
    if sep:
        if suite is not None and suite != in_spec:
            raise UsageError(f"--kernel-package {spec!r} names suite {in_spec!r} but --suite "
                             f"is {suite!r}", value=spec, fix="give the suite once")
        suite = in_spec
    if not _PACKAGE_RE.fullmatch(name):
        raise UsageError(f"--kernel-package {spec!r} is not a Debian package name", value=spec,
                         fix="e.g. linux-image-amd64 --suite bookworm-backports, or "
                             "linux-image-amd64/bookworm-backports")
    return name, suite


#: The split of Debian's kernel since 7.x (sid, trixie-backports, experimental):
#: ``linux-image-VER`` holds nothing but depends on these, which hold the
#: config and System.map, the vmlinuz, and the modules, all under
#: ``usr/lib/modules/VER/``.
SPLIT_PARTS = ("linux-base-", "linux-binary-", "linux-modules-")


def split_parts(depends: str, concrete: str) -> list[str]:
    """The packages of a split ``linux-image-VER`` (from its Depends field)
    that carry its files: ``linux-{base,binary,modules}-VER``."""
    flavour = concrete.removeprefix("linux-image-")
    out = []
    for alt in re.split(r"[,|]", depends):
        word = alt.strip().split(" ", 1)[0]
        if any(word == prefix + flavour for prefix in SPLIT_PARTS):
            out.append(word)
    return out


def kernel_debs(apt: Apt, concrete: str, suite: str | None) -> list[Path]:
    """The .deb files of a concrete kernel package: itself, and for a split
    package (7.x) its base, binary and modules packages."""
    stanza = apt.show([concrete], suite)[concrete]
    parts = split_parts(stanza.get("Depends", ""), concrete)
    got = apt.download([concrete, *parts], suite)
    return [got[concrete], *(got[p] for p in parts)]


#: What memhp takes from a kernel .deb: never its firmware or docs.
KERNEL_MEMBERS = re.compile(r"^\./(boot/|lib/modules/|usr/lib/modules/)")


def unpack_kernel_deb(deb: Path, dest: Path) -> None:
    """``boot/``, ``lib/modules/`` and ``usr/lib/modules/`` of a kernel .deb
    (whichever it has), never installed."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if KERNEL_MEMBERS.match(member.name) and (member.isfile() or member.isdir()
                                                             or member.issym()):
                        tar.extract(member, dest)
        except tarfile.TarError as exc:
            raise ImageBuildError(f"unpacking {deb.name} failed: {exc}") from exc
        err = proc.stderr.read() if proc.stderr is not None else b""
    if proc.returncode != 0:
        raise ImageBuildError(f"unpacking {deb.name} failed: "
                              f"{err.decode(errors='replace').strip()}")


@dataclass(frozen=True)
class KernelTree:
    """A kernel package unpacked: where its parts are."""

    vmlinuz: Path
    kver: str
    config: Path | None
    modules: Path | None


def kernel_tree(kroot: Path, what: str) -> KernelTree:
    """Find kernel, config and modules in an unpacked kernel package, in either
    layout: ``boot/vmlinuz-VER`` + ``boot/config-VER`` + ``lib/modules/VER``,
    or ``usr/lib/modules/VER/{vmlinuz,config}`` + its ``kernel/``."""
    for vmlinuz in sorted((kroot / "boot").glob("vmlinuz-*")):
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        config: Path | None = kroot / "boot" / f"config-{kver}"
        mods = [kroot / "lib/modules" / kver, kroot / "usr/lib/modules" / kver]
        break
    else:
        found = sorted([*kroot.glob("usr/lib/modules/*/vmlinuz"),
                        *kroot.glob("lib/modules/*/vmlinuz")])
        if not found:
            raise ImageBuildError(
                f"{what} holds no kernel: looked for boot/vmlinuz-*, "
                "usr/lib/modules/*/vmlinuz and lib/modules/*/vmlinuz")
        vmlinuz = found[0]
        kver = vmlinuz.parent.name
        config = vmlinuz.parent / "config"
        mods = [vmlinuz.parent, kroot / "lib/modules" / kver]
    assert config is not None
    return KernelTree(vmlinuz, kver, config if config.is_file() else None,
                      next((m for m in mods if (m / "kernel").is_dir()), None))
