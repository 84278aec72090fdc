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
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from harness.apt import Apt
from harness.errors import HostEnvironmentError, ImageBuildError, UsageError
from harness.image.bzimage import kernel_version
from harness.image.cpio import CpioWriter
from harness.image.elf import library_closure
from harness.image.modules import load_order, parse_modules_dep
from harness.resources import guest_images_dir

log = logging.getLogger("harness.image")
BUILDER_VERSION = "1"
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
        )


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return cache_dir
    base = os.environ.get("MEMHP_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "memhp"


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
    return Apt(cache_root(cache_dir)).resolve(name, suite)


def download(packages: Iterable[str], debs: Path, progress: Progress,
             suite: str | None = None) -> dict[str, Path]:
    """Download what is not cached in ``debs`` yet (memhp's own apt); name -> .deb."""
    return Apt(debs.parent, progress=progress).download(packages, suite, dest=debs)


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
                    kver: str, module_paths: list[str], config: Path | None) -> None:
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
                name = f"{i:02d}-{Path(path).name}"
                w.file(f"lib/modules/{name}", (modules_root / path).read_bytes())
                names.append(name)
        w.file("etc/memhp/modules", ("\n".join(names) + "\n").encode())
        if config is not None:
            w.file(f"boot/config-{kver}", config.read_bytes())
        w.close()
    if recipe.compression == "none":
        os.replace(raw, out)
        return
    argv, _ = _compressor()
    with out.open("wb") as f:
        subprocess.run([*argv, str(raw)], stdout=f, check=True)
    raw.unlink()


def _find_modules_dir(modules: Path, kver: str) -> Path:
    for cand in (modules / "lib/modules" / kver, modules / kver, modules):
        if (cand / "modules.dep").exists() or (cand / "modules.order").exists():
            return cand
    raise UsageError(f"modules directory {str(modules)!r} has no modules.dep for {kver}",
                     value=modules, fix="give lib/modules/<version> or an INSTALL_MOD_PATH")


def _matching_modules(kver: str, debs: Path) -> tuple[Path | None, Path | None]:
    """Modules for a user kernel given without --modules: the host's
    ``/lib/modules/<version>``, else a cached Debian package of that release."""
    host = Path("/lib/modules") / kver
    if (host / "modules.dep").exists():
        return host, None
    kdeb = next(iter(sorted(debs.glob(f"linux-image-{kver}_*.deb"))), None)
    return None, kdeb


def _module_plan(mdir: Path, kver: str, wanted: Iterable[str]) -> list[str]:
    dep = mdir / "modules.dep"
    if not dep.exists():
        _run(["depmod", "-b", str(mdir.parent.parent.parent), kver], "depmod")
    builtin = set()
    if (mdir / "modules.builtin").exists():
        builtin = {Path(x).name.removesuffix(".ko").replace("-", "_")
                   for x in (mdir / "modules.builtin").read_text().split()}
    deps = parse_modules_dep(dep.read_text())
    return load_order(deps, [m for m in wanted if m.replace("-", "_") not in builtin])


def build_image(
    kernel_package: str | None = None,
    kernel: Path | None = None,
    modules: Path | None = None,
    kernel_config: Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> GuestImage:
    """Build (or fetch from cache) the guest for a Debian kernel package or a user bzImage."""
    say = progress or (lambda msg: log.info("%s", msg))
    recipe = Recipe.load()
    root_cache = cache_root(cache_dir)
    if kernel is not None:
        user_kver = kernel_version(kernel)  # validates the file before anything else
        if modules is not None and not modules.is_dir():
            raise UsageError(f"modules {str(modules)!r} is not a directory", value=modules,
                             fix="give lib/modules/<version> or an INSTALL_MOD_PATH root")
        if kernel_config is not None and not kernel_config.is_file():
            raise UsageError(f"kernel config {str(kernel_config)!r} is not a file",
                             value=kernel_config)
    debs = download(recipe.packages, root_cache / "debs", say)
    parts = [recipe.text.encode(), recipe.init, BUILDER_VERSION.encode(),
             *[p.name.encode() for p in sorted(debs.values())]]
    kdeb: Path | None = None
    if kernel is None:
        concrete = resolve_kernel_package(kernel_package or recipe.kernel_package)
        kdeb = download([concrete], root_cache / "debs", say)[concrete]
        parts.append(kdeb.name.encode())
    else:
        parts.append(_file_sha(kernel))
        if modules is None:
            # A distro kernel needs its NIC and fw_cfg modules: find them
            # rather than boot a guest that can never be reached.
            modules, kdeb = _matching_modules(user_kver, root_cache / "debs")
            if modules is not None or kdeb is not None:
                say(f"using modules from {modules or kdeb} (pass --modules to choose)")
            if kdeb is not None:
                parts.append(kdeb.name.encode())
        if modules is not None:
            parts.append(str(modules.resolve()).encode())
        if kernel_config is not None:
            parts.append(_file_sha(kernel_config))
    key = _sha(*parts)
    images = root_cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    final = images / key
    with FileLock(str(images / f"{key}.lock")):
        manifest = final / "manifest.json"
        if manifest.exists() and not force:
            return GuestImage.from_json(json.loads(manifest.read_text()))
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=images))
        try:
            image = _build_into(tmp, final, key, recipe, debs, kdeb, kernel, modules,
                                kernel_config, say)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        say(f"built guest image {key} ({image.kernel_version}) in "
            f"{time.monotonic() - t0:.1f}s")
        return image


def _build_into(tmp: Path, final: Path, key: str, recipe: Recipe, debs: dict[str, Path],
                kdeb: Path | None, kernel: Path | None, modules: Path | None,
                kernel_config: Path | None, say: Progress) -> GuestImage:
    root = tmp / "root"
    say("unpacking packages")
    for deb in debs.values():
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    config: Path | None = None
    module_names: list[str] = []
    modules_root: Path | None = None
    if kdeb is not None and kernel is None:
        kroot = tmp / "kernel"
        _run(["dpkg-deb", "-x", str(kdeb), str(kroot)], f"unpacking {kdeb.name}")
        vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        shutil.copy2(vmlinuz, tmp / "vmlinuz")
        shutil.copy2(kroot / "boot" / f"config-{kver}", tmp / "config")
        config = tmp / "config"
        mdir = kroot / "lib/modules" / kver
        if not (mdir / "modules.dep").exists():
            _run(["depmod", "-b", str(kroot), kver], "depmod")
        module_names = _module_plan(mdir, kver, recipe.modules)
        modules_root = mdir
        source = f"debian:{kdeb.name}"
    else:
        assert kernel is not None
        kver = kernel_version(kernel)
        shutil.copy2(kernel, tmp / "vmlinuz")
        if kernel_config is not None:
            shutil.copy2(kernel_config, tmp / "config")
            config = tmp / "config"
        if modules is None and kdeb is not None:
            kroot = tmp / "kernel"
            _run(["dpkg-deb", "-x", str(kdeb), str(kroot)], f"unpacking {kdeb.name}")
            modules = kroot / "lib/modules" / kver
        if modules is not None:
            modules_root = _find_modules_dir(modules, kver)
            module_names = _module_plan(modules_root, kver, recipe.modules)
        source = f"user:{kernel}"
    say(f"writing initramfs ({len(module_names)} modules)")
    write_initramfs(tmp / "initrd.img", root, recipe, modules_root, kver, module_names, config)
    shutil.rmtree(root)
    shutil.rmtree(tmp / "kernel", ignore_errors=True)
    image = GuestImage(
        kernel=final / "vmlinuz", initrd=final / "initrd.img", kernel_version=kver,
        config=(final / "config") if config else None, cmdline=recipe.cmdline, key=key,
        modules=tuple(Path(m).name for m in module_names), source=source,
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
    tmp = pointer.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, pointer)
    return image


def _recipe_hash() -> str:
    d = guest_images_dir()
    return _sha((d / "recipe.toml").read_bytes(), (d / "init").read_bytes(),
                BUILDER_VERSION.encode())
