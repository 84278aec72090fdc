"""memhp's own apt: Debian packages fetched without touching the host's apt.

memhp downloads Debian packages (the guest's kernel and userland, kernel
sources, a newer QEMU) but never installs them and never reads or changes
the host's apt sources.  It keeps a private apt configuration in the cache::

    apt/sources.sources  deb.debian.org: bookworm, bookworm-updates,
                         bookworm-backports, trixie and bookworm-security
                         (main), Signed-By the Debian archive keyring in
                         /usr/share/keyrings
    apt/preferences      trixie at priority 100 (like backports), so a plain
                         name resolves to bookworm's version
    apt/lists/           its own package lists (``apt-get update``)
    apt/cache/           its own binary cache
    apt/status           an empty dpkg status: what the host has installed
                         never changes which version memhp picks
    apt/updated          stamp: the lists are refreshed at most once a day
    debs/                downloaded .deb files (name_version_arch.deb)

Every call is ``apt-get``/``apt-cache`` with ``-o Dir::Etc::SourceList=...
-o Dir::Etc::SourceParts=/nonexistent -o Dir::State=... -o Dir::Cache=...``
(see :meth:`Apt.argv`), so it runs as any user who owns the cache.

API::

    from harness.apt import Apt, download

    apt = Apt()                                   # the cache's apt/ (created on first use)
    apt.update()                                  # at most once a day, file-locked; force=True
    apt.version("qemu-system-x86", "bookworm-backports")   # -> "1:10.0.2+ds-1~bpo12+1"
    apt.resolve("linux-image-amd64", "bookworm-backports") # -> "linux-image-6.12...-amd64"
    debs = download(["qemu-system-x86", "qemu-system-data"], suite="bookworm-backports")
    debs["qemu-system-x86"]                       # -> Path(.../debs/qemu-system-x86_..._amd64.deb)

``suite`` is a Debian suite of :data:`SUITES` (``-t SUITE``: that suite's
version wins, dependencies are not involved since nothing is installed);
``None`` means the default candidate (bookworm and its updates).  Any
other suite (sid, experimental, trixie-backports, trixie-updates, forky,
...) gets an apt configuration of its own, ``<cache>/apt-<suite>/`` with
just that suite, created on first use (:meth:`Apt.for_suite`), so the
default lists never grow by sid's and nobody's ``apt-get update`` fetches
them unasked.  A suite the mirror does not have -> :class:`UsageError`.  Unknown
package or suite -> :class:`UsageError` (exit 2) naming it; mirror
unreachable -> :class:`HostEnvironmentError` (exit 3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from harness import cache as store
from harness.errors import HostEnvironmentError, ImageBuildError, UsageError

log = logging.getLogger("harness.apt")

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SUITES = ("bookworm", "bookworm-updates", "bookworm-backports", "trixie")
#: A Debian suite (codename or alias) memhp may give an apt root of its own.
SUITE_RE = re.compile(r"[a-z]+(-(backports|backports-sloppy|updates|proposed-updates))?")
#: Debian 12's kernels get their updates here first (the default guest's
#: linux-image-cloud-amd64 is newer in bookworm-security than in bookworm).
SECURITY_SUITES = ("bookworm-security",)
#: debian-archive-keyring's combined keyring.  Checked on Debian 12
#: (debian-archive-keyring 2023.3+deb12u2): it holds the 11/bullseye,
#: 12/bookworm and 13/trixie archive and release keys; trixie's InRelease
#: is signed with the 12 and 13 automatic keys, so even a keyring without
#: the 13 keys verifies it.
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MAX_AGE_S = 24 * 3600
#: The Debian architectures memhp fetches packages for: the host's (x86
#: guests, QEMU) and arm64 guests' kernels and userland.
ARCHES = ("amd64", "arm64")
CONFIG_VERSION = "1"

Progress = Callable[[str], None]


def sources_text(mirror: str = MIRROR, suites: Iterable[str] = SUITES,
                 keyring: Path = KEYRING, security_mirror: str = SECURITY_MIRROR,
                 security_suites: Iterable[str] = SECURITY_SUITES, arch: str = "amd64") -> str:
    """The deb822 sources file of memhp's apt (no security stanza without
    ``security_suites``: a suite's own root)."""
    stanza = ("Types: deb\nURIs: {}\nSuites: {}\nComponents: main\n"
              f"Architectures: {arch}\nSigned-By: {keyring}\n")
    text = ("# memhp's own apt sources (harness/apt.py); not the host's\n"
            + stanza.format(mirror, " ".join(suites)))
    security = " ".join(security_suites)
    if security:
        text += "\n" + stanza.format(security_mirror, security)
    return text


PREFERENCES = ("# trixie only for what bookworm lacks (linux-source-6.12), or with -t trixie\n"
               "Package: *\nPin: release n=trixie\nPin-Priority: 100\n")


@dataclass(frozen=True)
class Sources:
    """One apt configuration of memhp: which suites, which pins, where it lives.

    ``name`` is its directory under the cache (``apt``, ``apt-trixie``): each
    configuration has its own lists, package cache and empty dpkg status, so
    a trixie universe never mixes into the bookworm one memhp's images and
    kernels are resolved in."""

    name: str
    suites: tuple[str, ...]
    security_suites: tuple[str, ...]
    preferences: str
    arch: str = "amd64"  # Debian's name: amd64, arm64

    def for_arch(self, arch: str) -> Sources:
        """The same suites for another Debian architecture, in a root of
        its own (``apt-arm64``): package lists are per architecture."""
        if arch == self.arch:
            return self
        if arch not in ARCHES:
            raise UsageError(f"Debian architecture {arch!r} is not one memhp fetches for",
                             value=arch, fix=f"use one of {', '.join(ARCHES)}")
        return replace(self, name=f"{self.name}-{arch}", arch=arch)


#: memhp's default apt: Debian 12 and what it takes from trixie.
BOOKWORM = Sources("apt", SUITES, SECURITY_SUITES, PREFERENCES)
#: Debian 13 as a whole, for programs that need its libraries (QEMU 11.1 of
#: trixie-backports, :mod:`harness.qemu.fetch`).  trixie-backports' Release
#: says NotAutomatic/ButAutomaticUpgrades, so it sits at priority 100 by
#: itself: only ``-t trixie-backports`` takes from it, and what a backport
#: needs that backports lacks comes from trixie.
TRIXIE = Sources("apt-trixie", ("trixie", "trixie-updates", "trixie-backports"),
                 ("trixie-security",),
                 "# trixie-backports is NotAutomatic (priority 100) by its Release file\n")


def suite_sources(suite: str) -> Sources:
    """The configuration of one suite on its own (``<cache>/apt-<suite>``),
    for kernels of suites beyond bookworm's and trixie (sid, experimental,
    trixie-backports): nobody's default update fetches their lists."""
    return Sources(f"apt-{suite}", (suite,), (), "# one suite: no pins\n")


class Apt:
    """memhp's private apt configuration under ``<cache>/apt`` (the default
    suites), or ``<cache>/apt-<suite>`` for one other suite (:meth:`for_suite`)."""

    def __init__(self, cache: Path | None = None, *, mirror: str = MIRROR,
                 progress: Progress | None = None, sources: Sources = BOOKWORM,
                 own_suite: str | None = None, arch: str = "amd64") -> None:
        self.cache = cache or store.cache_root()
        self.own_suite = own_suite
        if own_suite is not None:
            sources = suite_sources(check_suite_name(own_suite))
        self.sources = sources = sources.for_arch(arch)
        self.root = self.cache / sources.name
        self.suites: tuple[str, ...] = sources.suites + sources.security_suites
        self.debs = self.cache / "debs"
        self.mirror = mirror
        self.say = progress or (lambda msg: log.info("%s", msg))

    @classmethod
    def for_suite(cls, suite: str | None, cache: Path | None = None, *, mirror: str = MIRROR,
                  progress: Progress | None = None, arch: str = "amd64") -> Apt:
        """The apt that knows ``suite``: the default configuration for
        :data:`SUITES` (and None), else the suite's own (for ``arch``)."""
        own = None if suite is None or suite in SUITES + SECURITY_SUITES else suite
        return cls(cache, mirror=mirror, progress=progress, own_suite=own, arch=arch)

    # -- configuration -----------------------------------------------------------------

    def _sources(self) -> str:
        return sources_text(self.mirror, self.sources.suites,
                            security_suites=self.sources.security_suites,
                            arch=self.sources.arch)

    def _fingerprint(self) -> str:
        return hashlib.sha256((CONFIG_VERSION + self._sources() + self.sources.preferences
                               ).encode()).hexdigest()[:16]

    def _write_config(self) -> None:
        if not KEYRING.is_file():
            raise HostEnvironmentError(
                f"{KEYRING} is missing: memhp's apt cannot verify Debian's archive "
                "(fix: apt-get install debian-archive-keyring)")
        for d in (self.root / "lists/partial", self.root / "cache/archives/partial",
                  self.root / "empty.d"):
            d.mkdir(parents=True, exist_ok=True)
        for name, text in (("sources.sources", self._sources()),
                           ("preferences", self.sources.preferences)):
            path = self.root / name
            if not path.exists() or path.read_text() != text:
                store.write_file(path, text, mode=0o644)
        status = self.root / "status"
        if not status.exists():
            store.write_file(status, "", mode=0o644)

    def options(self) -> list[str]:
        """The ``-o`` options that make apt use only memhp's configuration."""
        r = self.root
        opts = {
            "Dir::Etc::SourceList": "/nonexistent/sources.list",
            "Dir::Etc::SourceParts": str(r),  # reads *.sources here: sources.sources
            "Dir::Etc::Preferences": str(r / "preferences"),
            "Dir::Etc::PreferencesParts": str(r / "empty.d"),
            "Dir::Etc::Trusted": "/nonexistent/trusted.gpg",
            "Dir::Etc::TrustedParts": str(r / "empty.d"),
            "Dir::State": str(r),
            "Dir::State::Lists": str(r / "lists"),
            "Dir::State::status": str(r / "status"),
            "Dir::Cache": str(r / "cache"),
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
            "APT::Architecture": self.sources.arch,
            "APT::Architectures": self.sources.arch,
            # Root's downloads would otherwise run as _apt, which cannot enter ~root.
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
            "Acquire::Languages": "none",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
        }
        out: list[str] = []
        for k, v in opts.items():
            if v:
                out += ["-o", f"{k}={v}"]
        return out

    def argv(self, tool: str, *args: str) -> list[str]:
        return [tool, *self.options(), *args]

    # -- commands ------------------------------------------------------------------------

    def _run(self, tool: str, *args: str, what: str, cwd: Path | None = None) -> str:
        argv = self.argv(tool, *args)
        try:
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                                  env=os.environ | {"LC_ALL": "C"})
        except FileNotFoundError as exc:
            raise HostEnvironmentError(f"{tool} is not installed ({what}); memhp needs "
                                       "Debian's apt to fetch packages") from exc
        err = (proc.stderr or "").strip()
        if proc.returncode != 0 or (tool == "apt-get" and "\nE: " in "\n" + err):
            if ("Could not resolve" in err or "Failed to fetch" in err
                    or "Temporary failure" in err or "Connection failed" in err):
                raise HostEnvironmentError(f"{what}: cannot reach {self.mirror}: {err}")
            if self.own_suite is not None and ("does not have a Release file" in err
                                               or "404" in err and "Release" in err):
                raise UsageError(f"{what}: {self.mirror} has no suite {self.own_suite!r}: "
                                 f"{err}", value=self.own_suite,
                                 fix="give a Debian suite, e.g. sid, experimental, "
                                     "trixie-backports, bookworm-backports")
            if "Unable to locate package" in err or "has no installation candidate" in err \
                    or "No packages found" in err:
                raise UsageError(f"{what}: {err}", fix="check the package name (and --suite)")
            raise ImageBuildError(f"{what} failed ({' '.join(argv[:1] + list(args))}): "
                                  f"{err or proc.stdout.strip()}")
        return proc.stdout

    def update(self, *, force: bool = False, max_age_s: float = MAX_AGE_S) -> bool:
        """Refresh the lists when older than a day (or ``force``); True if it ran."""
        stamp = self.root / "updated"
        with store.lock(self.root, "update"):
            self._write_config()
            fresh = (stamp.exists() and stamp.read_text().strip() == self._fingerprint()
                     and time.time() - stamp.stat().st_mtime < max_age_s)
            if fresh and not force:
                return False
            suites = ", ".join(self.suites)
            self.say(f"apt-get update of memhp's own sources ({suites})")
            t0 = time.monotonic()
            try:
                self._run("apt-get", "update", "-q", what="apt-get update (memhp's sources)")
            except UsageError:
                if self.own_suite is not None and not stamp.exists():
                    # A suite the mirror lacks: leave no apt-<suite>/ behind.
                    shutil.rmtree(self.root, ignore_errors=True)
                raise
            store.write_file(stamp, self._fingerprint() + "\n", mode=0o644)
            self.say(f"apt-get update took {time.monotonic() - t0:.1f}s")
            return True

    def _suite_args(self, suite: str | None) -> list[str]:
        if suite is None:
            return []
        if suite not in self.suites:
            raise UsageError(f"suite {suite!r} is not one this apt configuration "
                             f"({self.root}) knows", value=suite,
                             fix="use Apt.for_suite(suite), which makes one for any suite")
        return ["-t", suite]

    def show(self, packages: Iterable[str],
             suite: str | None = None) -> dict[str, dict[str, str]]:
        """The candidate stanza (``apt-cache show``) of each package, by name."""
        wanted = list(dict.fromkeys(packages))
        self.update()
        args = self._suite_args(suite)
        where = f" in {suite}" if suite else ""
        fix = ("check the name (and --suite); memhp's sources: "
               f"{self.root / 'sources.sources'}")
        try:
            out = self._run("apt-cache", *args, "show", "--no-all-versions", *wanted,
                            what=f"looking up {' '.join(wanted)}")
        except UsageError as exc:  # apt-cache: "E: No packages found" when none is known
            raise UsageError(f"unknown package(s){where}: {', '.join(wanted)}", value=wanted,
                             fix=fix) from exc
        stanzas: dict[str, dict[str, str]] = {}
        for block in out.split("\n\n"):
            fields = dict(re.findall(r"^([\w-]+): (.*)$", block, re.M))
            if "Package" in fields:
                stanzas.setdefault(fields["Package"], fields)
        missing = [p for p in wanted if p not in stanzas]
        if missing:
            raise UsageError(f"unknown package(s){where}: {', '.join(missing)}", value=missing,
                             fix=fix)
        return stanzas

    def version(self, package: str, suite: str | None = None) -> str:
        return self.show([package], suite)[package]["Version"]

    def resolve(self, name: str, suite: str | None = None, prefix: str = "linux-image-") -> str:
        """A metapackage (``linux-image-amd64``) -> the concrete package it depends on
        (``linux-image-6.12.57+deb12-amd64``); a concrete name is returned as is."""
        if name.startswith(prefix) and name[len(prefix):][:1].isdigit():
            return name
        depends = self.show([name], suite)[name].get("Depends", "")
        for alt in re.split(r"[,|]", depends):
            word = alt.strip().split(" ", 1)[0]
            if word.startswith(prefix):
                return word
        raise UsageError(f"package {name!r} does not depend on a {prefix}* package", value=name,
                         fix=f"give a {prefix}* package name")

    def closure(self, packages: Iterable[str], suite: str | None = None) -> dict[str, str]:
        """Everything installing ``packages`` (from ``suite``) on an empty system
        takes, Pre-Depends and Depends (not Recommends): name -> version, as
        apt's resolver picks it (``apt-get install -s``; nothing is installed)."""
        wanted = list(dict.fromkeys(packages))
        self.update()
        out = self._run("apt-get", "install", "-s", "-q", "--no-install-recommends",
                        *self._suite_args(suite), *wanted,
                        what=f"resolving the dependencies of {' '.join(wanted)}")
        return parse_simulation(out)

    def download_closure(self, packages: Iterable[str], suite: str | None = None,
                         dest: Path | None = None) -> dict[str, Path]:
        """:meth:`closure` downloaded (what is cached already is kept); name -> .deb."""
        versions = self.closure(packages, suite)
        return self._download_versions(versions, dest or self.debs,
                                       f" (closure of {' '.join(packages)})")

    def download(self, packages: Iterable[str], suite: str | None = None,
                 dest: Path | None = None) -> dict[str, Path]:
        """``apt-get download`` the candidates not cached yet; name -> .deb path."""
        wanted = list(dict.fromkeys(packages))
        stanzas = self.show(wanted, suite)
        versions = {name: stanzas[name]["Version"] for name in wanted}
        return self._download_versions(versions, dest or self.debs,
                                       f" from {suite}" if suite else "")

    def download_versions(self, versions: dict[str, str]) -> dict[str, Path]:
        """``apt-get download`` these exact versions (name -> version) unless
        cached; name -> .deb path."""
        self.update()
        return self._download_versions(versions, self.debs, "")

    def _download_versions(self, versions: dict[str, str], debs: Path,
                           where: str) -> dict[str, Path]:
        debs.mkdir(parents=True, exist_ok=True)
        result: dict[str, Path] = {}
        fetch: list[str] = []
        for name, version in versions.items():
            hit = _cached_deb(debs, name, version, self.sources.arch)
            if hit is not None:
                result[name] = hit
            else:
                fetch.append(name)
        if fetch:
            self.say(f"downloading {len(fetch)} package(s){where}: {' '.join(fetch)}")
            t0 = time.monotonic()
            with store.scratch(debs, ".download-") as tmp:
                self._run("apt-get", "download", "-q",
                          *[f"{n}={versions[n]}" for n in fetch],
                          what="apt-get download", cwd=tmp)
                for f in tmp.glob("*.deb"):
                    store.publish(f, debs / f.name)
            self.say(f"downloaded in {time.monotonic() - t0:.1f}s")
            for name in fetch:
                hit = _cached_deb(debs, name, versions[name], self.sources.arch)
                if hit is None:
                    raise ImageBuildError(f"apt-get download did not produce {name} "
                                          f"{versions[name]}")
                result[name] = hit
        return result


_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ", re.M)


def parse_simulation(output: str) -> dict[str, str]:
    """``apt-get install -s`` output -> name -> version of each ``Inst`` line."""
    return {m.group(1): m.group(2) for m in _INST.finditer(output)}


def check_suite_name(suite: str) -> str:
    """A suite name memhp will make an apt root for; UsageError otherwise."""
    if not SUITE_RE.fullmatch(suite):
        raise UsageError(f"{suite!r} is not a Debian suite name", value=suite,
                         fix="e.g. sid, experimental, trixie, trixie-backports, "
                             "bookworm-backports")
    return suite


def _cached_deb(debs: Path, name: str, version: str, arch: str = "amd64") -> Path | None:
    """The cached .deb of ``name`` at ``version`` for ``arch`` (or ``all``):
    amd64 and arm64 builds of one version share a name up to the arch."""
    ver = version.replace(":", "%3a")
    for a in (arch, "all"):
        hit = debs / f"{name}_{ver}_{a}.deb"
        if hit.is_file():
            return hit
    return None


def download(packages: Iterable[str], suite: str | None = None, *,
             cache: Path | None = None, progress: Progress | None = None) -> dict[str, Path]:
    """Download Debian packages (from ``suite``) into ``<cache>/debs``; name -> path."""
    return Apt.for_suite(suite, cache, progress=progress).download(packages, suite)


def resolve(name: str, suite: str | None = None, *, cache: Path | None = None,
            progress: Progress | None = None) -> str:
    """A ``linux-image-*`` metapackage -> its concrete package (see :meth:`Apt.resolve`)."""
    return Apt.for_suite(suite, cache, progress=progress).resolve(name, suite)
