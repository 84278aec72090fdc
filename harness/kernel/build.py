"""Build a small bootable x86-64 kernel for memhp from a source tree.

Steps (``make ARCH=x86_64 O=<build dir>``, out of tree)::

    make tinyconfig|defconfig
    scripts/kconfig/merge_config.sh -m -O <dir> <dir>/.config memhp.config [fragments...]
    make olddefconfig
    verify: every option the fragments set is set so in the final .config
    make -j<N> bzImage

``merge_config.sh`` and ``olddefconfig`` silently drop an option whose
dependencies are not met; the verify step turns that into an error naming
the options.  Options this kernel's Kconfig does not define at all (such as
``MHP_DEFAULT_ONLINE_TYPE_*`` before Linux 6.14) are only reported.

Cache layout (under :func:`harness.cache.cache_root`; written through :mod:`harness.cache`)::

    debs/                        linux-source-*.deb (shared with the guest image)
    src/<deb name>/linux-source-X.Y/   the unpacked tree (once, under a file lock)
    kernels/<key>/               bzImage, .config, build.json, build.log
    kernels/<key>.failed.log     the log of the last failed build for that key

The key hashes the inputs (see :func:`cache_key`): the source's identity
(the .deb file name, or a directory's path, version and git commit), the
fragments' contents in order, the base config, the compiler version and the
builder's version.  The source comes from :mod:`.source`, the fragments'
checks from :mod:`.fragments`.  A hit reads ``build.json`` and returns (under a second:
one ``apt-cache show`` to learn the current source package name).  For CI,
cache ``kernels/`` (a few MB per build) and, to skip the download, ``debs/``;
``src/`` (1.5 GB unpacked) is cheaper to recreate than to restore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import cache as store
from harness.errors import HostEnvironmentError, ImageBuildError, UsageError
from harness.kconfig.deps import explain_dropped, kconfig_depends, kconfig_symbols, kconfig_texts
from harness.kconfig.source import parse_values
from harness.kernel.fragments import (
    default_fragments,
    describe_dropped,
    read_fragment,
    requested_options,
    verify_config,
)
from harness.kernel.source import (
    SOURCE_PACKAGE,
    KernelSource,
    Progress,
    resolve_source,
    unpack_debian_source,
)

log = logging.getLogger("harness.kernel")

BUILDER_VERSION = "1"
ARCH = "x86_64"
BASES = ("tinyconfig", "defconfig")
HOST_PACKAGES = ("flex", "bison", "bc", "libelf-dev", "libssl-dev", "gcc", "make", "xz-utils")
LOG_TAIL = 40
HEARTBEAT_S = 60.0



@dataclass(frozen=True)
class KernelBuild:
    """A built kernel in the cache."""

    key: str
    bzimage: Path
    config: Path
    log: Path
    seconds: float
    cached: bool
    kernel_version: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    fragments: tuple[str, ...] = ()
    unknown_options: tuple[str, ...] = ()
    phases: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "bzimage": str(self.bzimage), "config": str(self.config),
            "log": str(self.log), "seconds": round(self.seconds, 1), "cached": self.cached,
            "kernel_version": self.kernel_version, "inputs": dict(self.inputs),
            "fragments": list(self.fragments), "unknown_options": list(self.unknown_options),
            "phases": {k: round(v, 1) for k, v in self.phases.items()},
        }


# -- the cache key ---------------------------------------------------------------------

def cache_key(source: str, fragments: Sequence[bytes], base: str, gcc: str) -> str:
    """The cache key of a build: fragment order matters, their file names do not."""
    return _digest(key_inputs(source, fragments, base, gcc))


def key_inputs(source: str, fragments: Sequence[bytes], base: str,
               gcc: str) -> dict[str, Any]:
    return {
        "builder": BUILDER_VERSION, "arch": ARCH, "source": source, "base": base, "gcc": gcc,
        "fragments": [hashlib.sha256(f).hexdigest() for f in fragments],
    }


def _digest(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- host ----------------------------------------------------------------------------------

def missing_packages(packages: Iterable[str]) -> list[str]:
    missing = []
    for name in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0 or not proc.stdout.endswith("ok installed"):
            missing.append(name)
    return missing


def ensure_host_tools(packages: Sequence[str] = HOST_PACKAGES,
                      progress: Progress | None = None) -> None:
    """``apt-get install`` the build tools that are missing (nothing if none is)."""
    say = progress or (lambda msg: log.info("%s", msg))
    if shutil.which("dpkg-query") is None:
        missing = [p for p in ("flex", "bison", "bc", "gcc", "make") if not shutil.which(p)]
        if missing:
            raise HostEnvironmentError(f"kernel build tools missing: {', '.join(missing)} "
                                       f"(install {' '.join(packages)})")
        return
    missing = missing_packages(packages)
    if not missing:
        return
    say(f"installing build tools: {' '.join(missing)}")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 and "Unable to locate" in proc.stderr:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or missing_packages(missing):
        err = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise HostEnvironmentError(
            f"cannot install the kernel build tools {' '.join(missing)}: "
            f"{' / '.join(err) or 'apt-get failed'} (fix: as root, "
            f"`apt-get install {' '.join(missing)}`)")


def gcc_version() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                             check=False).stdout
    except FileNotFoundError:
        return "none"
    return out.splitlines()[0].strip() if out else "unknown"


# -- the build -------------------------------------------------------------------------

def _bounded_jobs(jobs: int | None) -> int:
    cpus = os.cpu_count() or 1
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs} must be at least 1", value=jobs)
    return min(jobs or cpus, cpus)


def _load_cached(final: Path) -> KernelBuild | None:
    meta = final / "build.json"
    if not (meta.is_file() and (final / "bzImage").is_file() and (final / ".config").is_file()):
        return None
    try:
        d = json.loads(meta.read_text())
        return KernelBuild(
            key=d["key"], bzimage=final / "bzImage", config=final / ".config",
            log=final / "build.log", seconds=float(d["seconds"]), cached=True,
            kernel_version=str(d.get("kernel_version", "?")), inputs=d["inputs"],
            fragments=tuple(d.get("fragments", ())),
            unknown_options=tuple(d.get("unknown_options", ())),
            phases=d.get("phases", {}),
        )
    except (ValueError, KeyError, TypeError):
        return None


def build_kernel(
    source: Path | None = None,
    fragments: Sequence[Path] | None = None,
    *,
    auto_online: bool = False,
    base: str = "tinyconfig",
    jobs: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    source_package: str = SOURCE_PACKAGE,
    suite: str | None = None,
) -> KernelBuild:
    """Build (or take from the cache) a bzImage with the fragments merged in.

    ``fragments`` defaults to ``kconfigs/memhp.config``; ``auto_online``
    appends ``kconfigs/auto-online.config``.  Without ``source`` the tree is
    Debian's ``source_package`` (from ``suite``, default: the candidate).
    """
    say = progress or (lambda msg: log.info("%s", msg))
    if base not in BASES:
        raise UsageError(f"base config {base!r} unknown", value=base,
                         fix=f"use one of {', '.join(BASES)}")
    frag_paths = list(fragments) if fragments else default_fragments()
    if auto_online:
        frag_paths += [p for p in default_fragments(True)[1:] if p not in frag_paths]
    frag_texts = [read_fragment(p) for p in frag_paths]
    n_jobs = _bounded_jobs(jobs)
    src = resolve_source(source, say, unpack=False, package=source_package, suite=suite)
    if shutil.which("gcc") is None:
        ensure_host_tools(progress=say)  # the compiler's version is part of the key
    inputs = key_inputs(src.identity, [t.encode() for t in frag_texts], base, gcc_version())
    key = _digest(inputs)
    kernels = store.cache_root() / "kernels"
    final = kernels / key
    with store.lock(kernels, key):
        hit = None if force else _load_cached(final)
        if hit is not None:
            say(f"kernel {key}: cached ({hit.kernel_version}, built in {hit.seconds:.0f}s)")
            return hit
        ensure_host_tools(progress=say)
        if src.deb is not None:
            src = KernelSource(unpack_debian_source(src.deb, say), src.identity, src.deb)
        # 0755: mkdtemp makes it 0700; the cache may be shared (CI)
        with store.building(final, mode=0o755) as tmp:
            try:
                build = _build_into(tmp, final, key, src.path, frag_paths, frag_texts, inputs,
                                    base, n_jobs, say)
            except BaseException:
                if (tmp / "build.log").exists():
                    store.write_file(failed_log(final), (tmp / "build.log").read_bytes())
                raise
        say(f"kernel {key}: built {build.kernel_version} in {build.seconds:.0f}s")
        return build


def failed_log(final: Path) -> Path:
    return final.with_name(f"{final.name}.failed.log")


def _make(src: Path, obj: Path, *targets: str, jobs: int = 1) -> list[str]:
    return ["make", "-C", str(src), f"O={obj}", f"ARCH={ARCH}", f"-j{jobs}", *targets]


def _build_env() -> dict[str, str]:
    # Reproducible banner (no host name or date in uname -v / the bzImage).
    return os.environ | {"KBUILD_BUILD_USER": "memhp", "KBUILD_BUILD_HOST": "memhp",
                         "KBUILD_BUILD_TIMESTAMP": "1970-01-01", "LC_ALL": "C"}


class _Logger:
    """Runs the phases with their output appended to one log file."""

    def __init__(self, path: Path, say: Progress, kept_as: Path) -> None:
        self.path = path
        self.kept_as = kept_as  # where the log is kept when the build fails
        self.say = say
        self.phases: dict[str, float] = {}

    def run(self, phase: str, argv: list[str], cwd: Path | None = None) -> None:
        self.say(f"kernel: {phase}")
        t0 = time.monotonic()
        with self.path.open("a", buffering=1) as logf:  # line-buffered: tail -f works
            logf.write(f"### {phase}: {' '.join(argv)}\n")
            logf.flush()
            try:
                proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace",
                                        env=_build_env())
            except FileNotFoundError as exc:
                raise HostEnvironmentError(f"{argv[0]} is not installed ({phase})") from exc
            assert proc.stdout is not None
            beat = t0
            units = 0
            try:
                for line in proc.stdout:
                    logf.write(line)
                    if line.startswith(("  CC ", "  AS ", "  LD ", "  AR ")):
                        units += 1
                    now = time.monotonic()
                    if now - beat >= HEARTBEAT_S:
                        beat = now
                        self.say(f"kernel: {phase}: {now - t0:.0f}s, {units} objects so far")
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        self.phases[phase] = time.monotonic() - t0
        if rc != 0:
            raise ImageBuildError(f"kernel build failed in `{phase}` (exit {rc}); full log: "
                                  f"{self.kept_as}; its last {LOG_TAIL} lines:\n"
                                  f"{tail(self.path)}")


def _build_into(tmp: Path, final: Path, key: str, src: Path, frag_paths: list[Path],
                frag_texts: list[str], inputs: dict[str, Any], base: str, jobs: int,
                say: Progress) -> KernelBuild:
    t0 = time.monotonic()
    obj = tmp / "obj"
    obj.mkdir()
    logger = _Logger(tmp / "build.log", say, failed_log(final))
    logger.run(base, _make(src, obj, base))
    merge = src / "scripts/kconfig/merge_config.sh"
    logger.run("merge fragments", ["sh", str(merge), "-m", "-O", str(obj), str(obj / ".config"),
                                   *[str(p.resolve()) for p in frag_paths]], cwd=src)
    logger.run("olddefconfig", _make(src, obj, "olddefconfig"))
    say("kernel: verifying the merged config")
    final_values = parse_values((obj / ".config").read_text())
    texts = kconfig_texts(src)
    check = verify_config(requested_options(frag_texts), final_values, kconfig_symbols(texts))
    if check.unknown:
        say("kernel: not in this kernel's Kconfig (ignored): "
            + " ".join(f"CONFIG_{n}" for n in check.unknown))
    if not check.ok:
        depends = kconfig_depends(texts, [d[0] for d in check.dropped])
        explanations = explain_dropped(check.dropped, depends, final_values)
        raise UsageError(
            f"{len(check.dropped)} option(s) of the fragments did not survive "
            f"merge_config/olddefconfig (their dependencies are not met):\n"
            + describe_dropped(check.dropped, explanations),
            value=[f"CONFIG_{d[0]}" for d in check.dropped],
            fix="add the options they depend on to your fragment",
        )
    logger.run(f"compiling bzImage (-j{jobs})", _make(src, obj, "bzImage", jobs=jobs))
    shutil.copy2(obj / "arch/x86/boot/bzImage", tmp / "bzImage")
    shutil.copy2(obj / ".config", tmp / ".config")
    release = (obj / "include/config/kernel.release")
    kver = release.read_text().strip() if release.exists() else "?"
    shutil.rmtree(obj)
    seconds = time.monotonic() - t0
    build = KernelBuild(
        key=key, bzimage=final / "bzImage", config=final / ".config", log=final / "build.log",
        seconds=seconds, cached=False, kernel_version=kver, inputs=inputs,
        fragments=tuple(str(p) for p in frag_paths), unknown_options=check.unknown,
        phases=dict(logger.phases),
    )
    doc = build.to_json() | {"jobs": jobs, "source_dir": str(src),
                             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for k in ("bzimage", "config", "log", "cached"):
        doc.pop(k)
    (tmp / "build.json").write_text(json.dumps(doc, indent=2) + "\n")
    return build
