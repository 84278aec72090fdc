"""The guest's initramfs: which modules it loads at boot and ships for
modprobe (read from ``modules.dep`` or the modules' own ``depends=``, never
depmod), and the cpio archive assembled from the unpacked packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from harness.errors import ImageBuildError
from harness.image.cpio import CpioWriter
from harness.image.debs import run_tool
from harness.image.elf import library_closure
from harness.image.guest import Progress, Recipe
from harness.image.modules import (
    ModinfoDeps,
    load_order,
    module_bytes,
    parse_modules_dep,
    plain_name,
)


def busybox_applets(busybox: Path) -> list[str]:
    out = run_tool([str(busybox), "--list-full"], "listing busybox applets")
    return [line.strip() for line in out.splitlines() if line.strip()]


def _compressor() -> tuple[list[str], str]:
    if shutil.which("zstd"):
        # zstd decompresses several times faster than gzip in an emulated CPU.
        return ["zstd", "-q", "-19", "-T0", "-c"], "zstd"
    return ["gzip", "-9", "-c"], "gzip"


def write_initramfs(out: Path, root: Path, recipe: Recipe, modules_root: Path | None,
                    kver: str, module_paths: list[str], config: str | None,
                    on_demand: Mapping[str, list[str]] | None = None,
                    applets: list[str] | None = None) -> None:
    """Assemble the cpio archive from the unpacked packages and compress it.
    ``applets``: busybox's applet paths, when the packages' busybox cannot
    run on this host (another architecture's)."""
    raw = out.with_suffix(".cpio")
    libdir = f"lib/{recipe.triplet}"
    with raw.open("wb") as f:
        w = CpioWriter(f)
        dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", libdir,
                "lib/modules", "etc", "etc/memhp", "etc/dropbear", "root", "proc", "sys", "dev",
                "tmp", "run", "var", "boot"]
        for d in dirs:
            w.directory(d, 0o700 if d == "root" else 0o755)
        w.symlink("lib64", libdir)
        w.device("dev/console", True, 5, 1)
        w.device("dev/null", True, 1, 3, 0o666)
        for b in recipe.binaries:
            w.file(b, (root / b).read_bytes(), 0o755)
        for dest, src in sorted(library_closure(root, recipe.binaries,
                                                recipe.triplet).items()):
            if dest.startswith("lib64/"):
                continue  # served by the lib64 symlink
            w.file(dest, src.read_bytes(), 0o755)
        present = set(recipe.binaries)
        for applet in applets if applets is not None else busybox_applets(root / "bin/busybox"):
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


def _plain_path(path: str) -> str:
    for ext in (".ko.xz", ".ko.zst", ".ko.gz"):
        if path.endswith(ext):
            return path[: -len(ext)] + ".ko"
    return path


def on_demand_plan(mdir: Path, kver: str, wanted: Iterable[str],
                    say: Progress) -> dict[str, list[str]]:
    """Each on-demand module (and what it needs) -> the modules it needs, in load
    order.  A module this kernel lacks is skipped, with a note: the guest
    boots without it and whatever needs it says so."""
    out: dict[str, list[str]] = {}
    for name in wanted:
        try:
            order = module_plan(mdir, kver, [name])
        except ImageBuildError as exc:
            say(f"on-demand module {name} left out: {exc}")
            continue
        for i, path in enumerate(order):
            out.setdefault(path, order[:i])
    return out


def module_plan(mdir: Path, kver: str, wanted: Iterable[str]) -> list[str]:
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
