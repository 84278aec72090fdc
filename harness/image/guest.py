"""What a guest image is (:class:`GuestImage`) and the recipe it is built
from (:class:`Recipe`: ``guest_images/recipe.toml`` and ``init``)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import ImageBuildError, UsageError
from harness.resources import guest_images_dir

READY_MARKER = "MEMHP-READY"
#: Debian architecture -> multiarch triplet (its library directory)
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

Progress = Callable[[str], None]


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
    arch: str = "amd64"  # Debian's architecture: amd64, arm64

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
            arch=str(d.get("arch", "amd64")),
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
    arch: str = "amd64"  # Debian's architecture of every package

    @property
    def triplet(self) -> str:
        """The multiarch directory of the architecture's libraries."""
        return TRIPLETS[self.arch]

    @classmethod
    def load(cls, directory: Path | None = None, arch: str = "amd64") -> Recipe:
        """The recipe for ``arch``: the top-level keys, with the
        ``[arch.<arch>]`` table's keys over them."""
        d = directory or guest_images_dir()
        text = (d / "recipe.toml").read_text()
        data = tomllib.loads(text)
        overrides = data.pop("arch", {})
        if arch not in TRIPLETS:
            raise UsageError(f"no guest for the architecture {arch!r}", value=arch,
                             fix=f"use one of {', '.join(TRIPLETS)}")
        if arch != "amd64":
            if arch not in overrides:
                raise ImageBuildError(f"guest_images/recipe.toml has no [arch.{arch}] table")
            data |= overrides[arch]
        return cls(
            version=int(data["recipe_version"]), kernel_package=data["kernel_package"],
            packages=tuple(data["packages"]), binaries=tuple(data["binaries"]),
            modules=tuple(data["modules"]), cmdline=tuple(data["cmdline"]), text=text,
            init=(d / "init").read_bytes(),
            compression=str(data.get("initramfs_compression", "zstd")),
            busybox_omit=tuple(data.get("busybox_omit", ())),
            on_demand_modules=tuple(data.get("on_demand_modules", ())),
            optional_modules=tuple(data.get("optional_modules", ())), arch=arch,
        )
