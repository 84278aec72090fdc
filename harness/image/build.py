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
and are renamed into place atomically (:mod:`harness.cache`), so concurrent
builders (pytest-xdist workers) never see a half-written image and a failed
build leaves nothing.  The parts: :mod:`.guest` (the image, the recipe),
:mod:`.debs` (kernel packages), :mod:`.user_kernel` (a ``--kernel``'s
modules and config), :mod:`.initramfs` (modules and the cpio archive).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from harness import cache as store
from harness.apt import Apt
from harness.errors import ImageBuildError, UsageError
from harness.image.debs import (
    kernel_debs,
    kernel_tree,
    run_tool,
    split_package_spec,
    unpack_kernel_deb,
)
from harness.image.guest import GuestImage, Progress, Recipe
from harness.image.initramfs import (
    busybox_applets,
    module_plan,
    on_demand_plan,
    write_initramfs,
)
from harness.image.modules import plain_name
from harness.image.user_kernel import UserKernel, check_needed_drivers, user_kernel
from harness.resources import guest_images_dir

log = logging.getLogger("harness.image")
BUILDER_VERSION = "3"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:20]


def _file_sha(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def build_image(
    kernel_package: str | None = None,
    kernel: Path | None = None,
    modules: Path | None = None,
    kernel_config: Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    suite: str | None = None,
    arch: str = "amd64",
) -> GuestImage:
    """Build (or fetch from cache) the guest for a Debian kernel package (from
    ``suite``; ``NAME/SUITE`` works too) or a user bzImage (with its modules
    and config, found beside it when not given); ``arch`` is the guest's
    Debian architecture (amd64, arm64: every package is that arch's)."""
    say = progress or (lambda msg: log.info("%s", msg))
    recipe = Recipe.load(arch=arch)
    root_cache = store.cache_root(cache_dir)
    user: UserKernel | None = None
    if kernel is not None:
        if kernel_package is not None:
            raise UsageError("--kernel and --kernel-package cannot be combined",
                             fix="boot either your bzImage or a Debian kernel package")
        user = user_kernel(kernel, modules, kernel_config, root_cache / "debs", arch)
        check_needed_drivers(user)
    elif modules is not None or kernel_config is not None:
        raise UsageError("--modules and --kernel-config go with --kernel",
                         fix="a --kernel-package brings its own modules and config")
    apt = Apt(root_cache, progress=say, arch=arch)
    debs = apt.download(recipe.packages)
    parts = [recipe.text.encode(), recipe.init, BUILDER_VERSION.encode(),
             *[p.name.encode() for p in sorted(debs.values())]]
    if arch != "amd64":
        parts.append(arch.encode())
    kdeb: Path | None = None
    kdebs: list[Path] = []
    if user is None:
        name, pkg_suite = split_package_spec(kernel_package or recipe.kernel_package, suite)
        kapt = Apt.for_suite(pkg_suite, root_cache, progress=say, arch=arch)
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
    with store.lock(images, key):
        manifest = final / "manifest.json"
        if manifest.exists() and not force:
            return GuestImage.from_json(json.loads(manifest.read_text()))
        t0 = time.monotonic()
        # 0755: the image cache may be shared (CI)
        applets = None if arch == "amd64" else _foreign_applets(root_cache, debs, say)
        with store.building(final, mode=0o755) as tmp:
            image = _build_into(tmp, final, key, recipe, debs, kdebs, user, say, applets)
        say(f"built guest image {key} ({image.kernel_version}) in "
            f"{time.monotonic() - t0:.1f}s")
        return image


def _foreign_applets(root_cache: Path, debs: dict[str, Path], say: Progress) -> list[str]:
    """busybox's applets when the guest's busybox is another architecture's
    (it cannot run here): listed by the host's build of the same version
    (Debian builds busybox-static with one configuration for every arch)."""
    version = debs["busybox-static"].name.split("_")[1].replace("%3a", ":")
    host = Apt(root_cache, progress=say).download_versions({"busybox-static": version})
    with store.scratch(root_cache / "debs", ".busybox-") as tmp:
        run_tool(["dpkg-deb", "-x", str(host["busybox-static"]), str(tmp)],
                 "unpacking the host's busybox-static")
        return busybox_applets(tmp / "bin/busybox")


def _build_into(tmp: Path, final: Path, key: str, recipe: Recipe, debs: dict[str, Path],
                kdebs: list[Path], user: UserKernel | None, say: Progress,
                applets: list[str] | None = None) -> GuestImage:
    root = tmp / "root"
    say("unpacking packages")
    for deb in debs.values():
        run_tool(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    config: str | None = None
    config_from = ""
    module_names: list[str] = []
    modules_root: Path | None = None
    for kdeb in kdebs:
        say(f"unpacking {kdeb.name}")
        unpack_kernel_deb(kdeb, tmp / "kernel")
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
        module_names = module_plan(modules_root, kver, recipe.modules)
        for name in recipe.optional_modules:
            try:
                extra = module_plan(modules_root, kver, [name])
            except ImageBuildError as exc:
                say(f"optional module {name} left out: {exc}")
                continue
            module_names += [m for m in extra if m not in module_names]
        on_demand = on_demand_plan(modules_root, kver, recipe.on_demand_modules, say)
    say(f"writing initramfs ({len(module_names)} modules, {len(on_demand)} on demand)")
    write_initramfs(tmp / "initrd.img", root, recipe, modules_root, kver, module_names, config,
                    on_demand, applets)
    if config is not None:
        (tmp / "config").write_text(config)
    shutil.rmtree(root)
    shutil.rmtree(tmp / "kernel", ignore_errors=True)
    image = GuestImage(
        kernel=final / "vmlinuz", initrd=final / "initrd.img", kernel_version=kver,
        config=(final / "config") if config is not None else None, cmdline=recipe.cmdline,
        key=key, modules=tuple(plain_name(m) for m in module_names), source=source,
        config_source=config_from, arch=recipe.arch,
    )
    (tmp / "manifest.json").write_text(json.dumps(image.to_json(), indent=2))
    return image


def ensure_default_image(cache_dir: Path | None = None, *, force: bool = False,
                         progress: Progress | None = None, arch: str = "amd64") -> GuestImage:
    """The default guest of ``arch``, from the cache when it is there (no apt call)."""
    name = "default.json" if arch == "amd64" else f"default-{arch}.json"
    pointer = store.cache_root(cache_dir) / "images" / name
    if not force and pointer.exists():
        try:
            image = GuestImage.from_json(json.loads(pointer.read_text()))
            recipe_ok = json.loads(pointer.read_text()).get("recipe") == _recipe_hash()
            if recipe_ok and image.kernel.exists() and image.initrd.exists():
                return image
        except (ValueError, KeyError, OSError):
            pass
    image = build_image(cache_dir=cache_dir, force=force, progress=progress, arch=arch)
    data = image.to_json() | {"recipe": _recipe_hash()}
    store.write_file(pointer, json.dumps(data, indent=2), mode=0o644)
    return image


def _recipe_hash() -> str:
    d = guest_images_dir()
    return _sha((d / "recipe.toml").read_bytes(), (d / "init").read_bytes(),
                BUILDER_VERSION.encode())
