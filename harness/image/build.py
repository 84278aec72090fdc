"""Build and cache the guest image (kernel + initramfs).

Cache layout (``$MEMHP_CACHE_DIR``, else ``$XDG_CACHE_HOME/memhp``, else
``~/.cache/memhp``)::

    debs/                    downloaded .deb files (kept across rebuilds)
    images/<key>/            vmlinuz, initrd.img, config, manifest.json
    images/default.json      pointer to the last default build

The key hashes every input: the recipe, the init script, the builder's own
version, the resolved package file names (name_version_arch.deb) and, for a
user kernel, the kernel file's and modules' contents.  A warm
:func:`ensure_default_image` reads only the pointer and checks the files
exist (no apt call), so it takes milliseconds; ``--force`` re-resolves the
packages.  Builds happen in a temp dir inside the cache under a file lock
and are renamed into place atomically, so concurrent builders (pytest-xdist
workers) never see a half-written image and a failed build leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import cache
from harness.apt import Apt
from harness.errors import HostEnvironmentError, ImageBuildError, UsageError
from harness.image.bzimage import kernel_version
from harness.image.cpio import CpioWriter
from harness.image.elf import library_closure
from harness.image.modules import (
    ModinfoDeps,
    load_order,
    module_bytes,
    modules_release,
    parse_modules_dep,
    plain_name,
)
from harness.resources import cache_root, guest_images_dir

log = logging.getLogger("harness.image")
BUILDER_VERSION = "3"
READY_MARKER = "MEMHP-READY"


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: kernel, initramfs and how to boot it."""

    kernel: Path
    initrd: Path
    kernel_version: str
    config: Path | None
    cmdline: tuple[str, ...]
    key: str
    ready_marker: str = READY_MARKER
    ssh_user: str = "root"
    modules: tuple[str, ...] = ()
    source: str = "default"
    config_source: str = ""  # where the recorded config came from

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        for k in ("kernel", "initrd", "config"):
            d[k] = str(d[k]) if d[k] is not None else None
        d["cmdline"] = list(self.cmdline)
        d["modules"] = list(self.modules)
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> GuestImage:
        return cls(
            kernel=Path(str(d["kernel"])), initrd=Path(str(d["initrd"])),
            kernel_version=str(d["kernel_version"]),
            config=Path(str(d["config"])) if d.get("config") else None,
            cmdline=tuple(d["cmdline"]),  # type: ignore[arg-type]
            key=str(d["key"]), ready_marker=str(d.get("ready_marker", READY_MARKER)),
            ssh_user=str(d.get("ssh_user", "root")),
            modules=tuple(d.get("modules", ())),  # type: ignore[arg-type]
            source=str(d.get("source", "default")),
            config_source=str(d.get("config_source", "")),
        )


@dataclass(frozen=True)
class Recipe:
    version: int
    kernel_package: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    modules: tuple[str, ...]
    cmdline: tuple[str, ...]
    text: str
    init: bytes
    compression: str = "zstd"  # of the initramfs: "zstd" or "none"
    busybox_omit: tuple[str, ...] = ()
    on_demand_modules: tuple[str, ...] = ()  # shipped for modprobe, not loaded at boot
    optional_modules: tuple[str, ...] = ()  # loaded at boot when the kernel has them

    @classmethod
    def load(cls, directory: Path | None = None) -> Recipe:
        d = directory or guest_images_dir()
        text = (d / "recipe.toml").read_text()
        data = tomllib.loads(text)
        return cls(
            version=int(data["recipe_version"]), kernel_package=data["kernel_package"],
            packages=tuple(data["packages"]), binaries=tuple(data["binaries"]),
            modules=tuple(data["modules"]), cmdline=tuple(data["cmdline"]), text=text,
            init=(d / "init").read_bytes(),
            compression=str(data.get("initramfs_compression", "zstd")),
            busybox_omit=tuple(data.get("busybox_omit", ())),
            on_demand_modules=tuple(data.get("on_demand_modules", ())),
            optional_modules=tuple(data.get("optional_modules", ())),
        )


Progress = Callable[[str], None]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
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


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:20]


def _file_sha(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def busybox_applets(busybox: Path) -> list[str]:
    out = _run([str(busybox), "--list-full"], "listing busybox applets")
    return [line.strip() for line in out.splitlines() if line.strip()]


def _compressor() -> tuple[list[str], str]:
    if shutil.which("zstd"):
        # zstd decompresses several times faster than gzip in an emulated CPU.
        return ["zstd", "-q", "-19", "-T0", "-c"], "zstd"
    return ["gzip", "-9", "-c"], "gzip"


def write_initramfs(out: Path, root: Path, recipe: Recipe, modules_root: Path | None,
                    kver: str, module_paths: list[str], config: str | None,
                    on_demand: Mapping[str, list[str]] | None = None) -> None:
    """Assemble the cpio archive from the unpacked packages and compress it."""
    raw = out.with_suffix(".cpio")
    with raw.open("wb") as f:
        w = CpioWriter(f)
        dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib/x86_64-linux-gnu",
                "lib/modules", "etc", "etc/memhp", "etc/dropbear", "root", "proc", "sys", "dev",
                "tmp", "run", "var", "boot"]
        for d in dirs:
            w.directory(d, 0o700 if d == "root" else 0o755)
        w.symlink("lib64", "lib/x86_64-linux-gnu")
        w.device("dev/console", True, 5, 1)
        w.device("dev/null", True, 1, 3, 0o666)
        for b in recipe.binaries:
            w.file(b, (root / b).read_bytes(), 0o755)
        for dest, src in sorted(library_closure(root, recipe.binaries).items()):
            if dest.startswith("lib64/"):
                continue  # served by the lib64 symlink
            w.file(dest, src.read_bytes(), 0o755)
        present = set(recipe.binaries)
        for applet in busybox_applets(root / "bin/busybox"):
            rel = applet.lstrip("/")
            if rel.rsplit("/", 1)[-1] in recipe.busybox_omit:
                continue
            if rel not in present and rel.rsplit("/", 1)[0] in ("bin", "sbin", "usr/bin",
                                                                "usr/sbin"):
                w.symlink(rel, "/bin/busybox")
                present.add(rel)
        if "bin/sh" not in present:
            w.symlink("bin/sh", "busybox")
        w.file("init", recipe.init, 0o755)
        w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        w.file("etc/group", b"root:x:0:\n")
        w.file("etc/shells", b"/bin/sh\n/bin/bash\n")
        names = []
        if modules_root is not None:
            for i, path in enumerate(module_paths):
                # Plain .ko: see harness.image.modules.module_bytes (busybox insmod
                # and compressed modules: "Invalid ELF header magic").
                name = f"{i:02d}-{plain_name(path)}"
                w.file(f"lib/modules/{name}", module_bytes(modules_root / path))
                names.append(name)
        w.file("etc/memhp/modules", ("\n".join(names) + "\n").encode())
        if modules_root is not None and on_demand:
            # For busybox modprobe: /lib/modules/<release>/<path>.ko and a
            # modules.dep of just these (each line: the module, then all it
            # needs, the one loaded first last, as depmod writes it).
            dep_lines = []
            made = set(dirs)
            for path in on_demand:  # the kernel's unpacker makes no parent directories
                parts = f"lib/modules/{kver}/{path}".split("/")[:-1]
                for i in range(2, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in made:
                        w.directory(d)
                        made.add(d)
            for path, needs in on_demand.items():
                w.file(f"lib/modules/{kver}/{_plain_path(path)}", module_bytes(modules_root / path))
                dep_lines.append(f"{_plain_path(path)}: "
                                 + " ".join(_plain_path(n) for n in reversed(needs)))
            w.file(f"lib/modules/{kver}/modules.dep", ("\n".join(dep_lines) + "\n").encode())
        if config is not None:
            w.file(f"boot/config-{kver}", config.encode())
        w.close()
    if recipe.compression == "none":
        os.replace(raw, out)
        return
    argv, _ = _compressor()
    with out.open("wb") as f:
        subprocess.run([*argv, str(raw)], stdout=f, check=True)
    raw.unlink()


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


# -- a user's kernel: its modules and config, found and checked before any build --------

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
    if real.parts[-4:-1] in (("arch", "x86", "boot"), ("arch", "x86_64", "boot")):
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


def _plain_path(path: str) -> str:
    for ext in (".ko.xz", ".ko.zst", ".ko.gz"):
        if path.endswith(ext):
            return path[: -len(ext)] + ".ko"
    return path


def _on_demand_plan(mdir: Path, kver: str, wanted: Iterable[str],
                    say: Progress) -> dict[str, list[str]]:
    """Each on-demand module (and what it needs) -> the modules it needs, in load
    order.  A module this kernel lacks is skipped, with a note: the guest
    boots without it and whatever needs it says so."""
    out: dict[str, list[str]] = {}
    for name in wanted:
        try:
            order = _module_plan(mdir, kver, [name])
        except ImageBuildError as exc:
            say(f"on-demand module {name} left out: {exc}")
            continue
        for i, path in enumerate(order):
            out.setdefault(path, order[:i])
    return out


def _module_plan(mdir: Path, kver: str, wanted: Iterable[str]) -> list[str]:
    """Module paths (relative to ``mdir``) to load, dependencies first.  Reads
    ``modules.dep`` when there is one, else the modules' own ``depends=``;
    never runs depmod, so nothing is written into the tree."""
    deps = (parse_modules_dep((mdir / "modules.dep").read_text())
            if (mdir / "modules.dep").exists() else ModinfoDeps(mdir))
    builtin = set()
    if (mdir / "modules.builtin").exists():
        builtin = {Path(x).name.removesuffix(".ko").replace("-", "_")
                   for x in (mdir / "modules.builtin").read_text().split()}
    return load_order(deps, [m for m in wanted if m.replace("-", "_") not in builtin])


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
                debs: Path) -> UserKernel:
    kver = kernel_version(kernel)  # validates the file before anything else
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
            pkgs = [f"linux-image-{kver}_*.deb", f"linux-modules-{kver}_*.deb"]
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


def build_image(
    kernel_package: str | None = None,
    kernel: Path | None = None,
    modules: Path | None = None,
    kernel_config: Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    suite: str | None = None,
) -> GuestImage:
    """Build (or fetch from cache) the guest for a Debian kernel package (from
    ``suite``; ``NAME/SUITE`` works too) or a user bzImage (with its modules
    and config, found beside it when not given)."""
    say = progress or (lambda msg: log.info("%s", msg))
    recipe = Recipe.load()
    root_cache = cache_root(cache_dir)
    user: UserKernel | None = None
    if kernel is not None:
        if kernel_package is not None:
            raise UsageError("--kernel and --kernel-package cannot be combined",
                             fix="boot either your bzImage or a Debian kernel package")
        user = user_kernel(kernel, modules, kernel_config, root_cache / "debs")
        check_needed_drivers(user)
    elif modules is not None or kernel_config is not None:
        raise UsageError("--modules and --kernel-config go with --kernel",
                         fix="a --kernel-package brings its own modules and config")
    apt = Apt(root_cache, progress=say)
    debs = apt.download(recipe.packages)
    parts = [recipe.text.encode(), recipe.init, BUILDER_VERSION.encode(),
             *[p.name.encode() for p in sorted(debs.values())]]
    kdeb: Path | None = None
    kdebs: list[Path] = []
    if user is None:
        name, pkg_suite = split_package_spec(kernel_package or recipe.kernel_package, suite)
        kapt = Apt.for_suite(pkg_suite, root_cache, progress=say)
        concrete = kapt.resolve(name, pkg_suite)
        kdebs = kernel_debs(kapt, concrete, pkg_suite)
        kdeb = kdebs[0]
        parts += [d.name.encode() for d in kdebs]
    else:
        kdeb = user.kdeb
        kdebs = [kdeb] if kdeb is not None else []
        parts.append(_file_sha(user.kernel))
        say(f"kernel {user.kver}: modules {user.modules or user.modules_from} "
            f"({user.modules_from}); config: {user.config_from}")
        if kdeb is not None:
            parts.append(kdeb.name.encode())
        if user.modules is not None:
            parts.append(str(user.modules.resolve()).encode())
        if user.config is not None:
            parts.append(user.config.encode())
    key = _sha(*parts)
    images = root_cache / "images"
    final = images / key
    with cache.lock(images, key):
        manifest = final / "manifest.json"
        if manifest.exists() and not force:
            return GuestImage.from_json(json.loads(manifest.read_text()))
        t0 = time.monotonic()
        # 0755: the image cache may be shared (CI)
        with cache.building(final, mode=0o755) as tmp:
            image = _build_into(tmp, final, key, recipe, debs, kdebs, user, say)
        say(f"built guest image {key} ({image.kernel_version}) in "
            f"{time.monotonic() - t0:.1f}s")
        return image


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


def _unpack_kernel_deb(deb: Path, dest: Path) -> None:
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


def _build_into(tmp: Path, final: Path, key: str, recipe: Recipe, debs: dict[str, Path],
                kdebs: list[Path], user: UserKernel | None, say: Progress) -> GuestImage:
    root = tmp / "root"
    say("unpacking packages")
    for deb in debs.values():
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    config: str | None = None
    config_from = ""
    module_names: list[str] = []
    modules_root: Path | None = None
    for kdeb in kdebs:
        say(f"unpacking {kdeb.name}")
        _unpack_kernel_deb(kdeb, tmp / "kernel")
    if user is None:
        kdeb = kdebs[0]
        tree = kernel_tree(tmp / "kernel", " + ".join(d.name for d in kdebs))
        kver = tree.kver
        shutil.copy2(tree.vmlinuz, tmp / "vmlinuz")
        if tree.config is not None:
            config = tree.config.read_text()
            holder = next((d for d in kdebs if d.name.startswith("linux-base-")), kdeb)
            config_from = f"{tree.config.relative_to(tmp / 'kernel')} in {holder.name}"
        modules_root = tree.modules
        source = f"debian:{kdeb.name}"
    else:
        kver = user.kver
        shutil.copy2(user.kernel, tmp / "vmlinuz")
        config, config_from = user.config, user.config_from
        modules_root = user.modules
        if modules_root is None and kdebs:
            modules_root = next((m for m in (tmp / "kernel/lib/modules" / kver,
                                             tmp / "kernel/usr/lib/modules" / kver)
                                 if (m / "kernel").is_dir()), None)
        source = f"user:{user.kernel}"
    on_demand: dict[str, list[str]] = {}
    if modules_root is not None:
        module_names = _module_plan(modules_root, kver, recipe.modules)
        for name in recipe.optional_modules:
            try:
                extra = _module_plan(modules_root, kver, [name])
            except ImageBuildError as exc:
                say(f"optional module {name} left out: {exc}")
                continue
            module_names += [m for m in extra if m not in module_names]
        on_demand = _on_demand_plan(modules_root, kver, recipe.on_demand_modules, say)
    say(f"writing initramfs ({len(module_names)} modules, {len(on_demand)} on demand)")
    write_initramfs(tmp / "initrd.img", root, recipe, modules_root, kver, module_names, config,
                    on_demand)
    if config is not None:
        (tmp / "config").write_text(config)
    shutil.rmtree(root)
    shutil.rmtree(tmp / "kernel", ignore_errors=True)
    image = GuestImage(
        kernel=final / "vmlinuz", initrd=final / "initrd.img", kernel_version=kver,
        config=(final / "config") if config is not None else None, cmdline=recipe.cmdline,
        key=key, modules=tuple(plain_name(m) for m in module_names), source=source,
        config_source=config_from,
    )
    (tmp / "manifest.json").write_text(json.dumps(image.to_json(), indent=2))
    return image


def ensure_default_image(cache_dir: Path | None = None, *, force: bool = False,
                         progress: Progress | None = None) -> GuestImage:
    """The default guest, from the cache when it is there (no apt call)."""
    pointer = cache_root(cache_dir) / "images" / "default.json"
    if not force and pointer.exists():
        try:
            image = GuestImage.from_json(json.loads(pointer.read_text()))
            recipe_ok = json.loads(pointer.read_text()).get("recipe") == _recipe_hash()
            if recipe_ok and image.kernel.exists() and image.initrd.exists():
                return image
        except (ValueError, KeyError, OSError):
            pass
    image = build_image(cache_dir=cache_dir, force=force, progress=progress)
    data = image.to_json() | {"recipe": _recipe_hash()}
    cache.write_file(pointer, json.dumps(data, indent=2), mode=0o644)
    return image


def _recipe_hash() -> str:
    d = guest_images_dir()
    return _sha((d / "recipe.toml").read_bytes(), (d / "init").read_bytes(),
                BUILDER_VERSION.encode())
