"""``memhp image build|info``: the default guest (or one for your kernel)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

HOTPLUG_OPTIONS = (
    "MEMORY_HOTPLUG", "MEMORY_HOTREMOVE", "ACPI_HOTPLUG_MEMORY", "NUMA", "SPARSEMEM",
    "MIGRATION", "MEMORY_HOTPLUG_DEFAULT_ONLINE", "MHP_DEFAULT_ONLINE_TYPE_OFFLINE",
    "MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO", "MHP_DEFAULT_ONLINE_TYPE_ONLINE_KERNEL",
    "MHP_DEFAULT_ONLINE_TYPE_ONLINE_MOVABLE", "VIRTIO_NET", "FW_CFG_SYSFS", "PVPANIC",
)


def _progress(msg: str) -> None:
    click.echo(f"image: {msg}", err=True)


@click.group("image")
def image_group() -> None:
    """Build or describe the guest image (kernel + initramfs)."""


@image_group.command("build")
@click.option("--kernel-package", help="Debian kernel package (default: the recipe's, "
              "linux-image-cloud-amd64); NAME/SUITE or --suite picks the suite, e.g. "
              "linux-image-amd64/bookworm-backports (Debian's 6.12).")
@click.option("--suite", help="Debian suite of --kernel-package: any (bookworm, "
              "bookworm-backports, trixie, trixie-backports, sid, experimental, ...); suites "
              "other than bookworm's and trixie get an apt configuration of their own.")
@click.option("--kernel", type=click.Path(path_type=Path), help="Your own bzImage instead.")
@click.option("--modules", type=click.Path(path_type=Path),
              help="Modules for --kernel: lib/modules/VERSION or an INSTALL_MOD_PATH root.")
@click.option("--kernel-config", type=click.Path(path_type=Path),
              help="The .config of --kernel (recorded, and copied into the guest); default: "
                   "config-VER or .config beside it, the source tree's .config, IKCONFIG.")
@click.option("--force", is_flag=True, help="Rebuild even if cached; re-resolve packages.")
@click.option("--arch", default="amd64", show_default=True, type=click.Choice(["amd64", "arm64"]),
              help="The guest's architecture: arm64 for --machine virt (Debian's arm64 "
                   "packages; --kernel is then an arm64 Image).")
def build_cmd(kernel_package: str | None, suite: str | None, kernel: Path | None,
              modules: Path | None, kernel_config: Path | None, force: bool, arch: str) -> int:
    """Build (or fetch from the cache) the guest image and print its paths."""
    from harness.image import build_image, ensure_default_image

    if kernel is None and kernel_package is None and suite is None and modules is None \
            and kernel_config is None:
        image = ensure_default_image(force=force, progress=_progress, arch=arch)
    else:
        image = build_image(kernel_package=kernel_package, kernel=kernel, modules=modules,
                            kernel_config=kernel_config, force=force, progress=_progress,
                            suite=suite, arch=arch)
    click.echo(f"kernel  {image.kernel}\ninitrd  {image.initrd}\nversion {image.kernel_version}")
    click.echo(f"config  {image.config or '(none)'}"
               + (f" (from {image.config_source})" if image.config_source else ""))
    return 0


@image_group.command("info")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(as_json: bool) -> int:
    """Describe the default guest image (building it if needed)."""
    from harness.image import ensure_default_image

    image = ensure_default_image(progress=_progress)
    config: dict[str, str] = {}
    if image.config is not None and image.config.exists():
        values = dict(re.findall(r"^CONFIG_(\w+)=(.*)$", image.config.read_text(), re.M))
        config = {opt: values.get(opt, "n") for opt in HOTPLUG_OPTIONS}
    data: dict[str, Any] = image.to_json() | {
        "kernel": str(image.kernel.resolve()), "initrd": str(image.initrd.resolve()),
        "sizes": {"kernel": image.kernel.stat().st_size, "initrd": image.initrd.stat().st_size},
        "hotplug_config": config,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for k in ("kernel", "initrd", "kernel_version", "key", "source", "config",
                  "config_source"):
            click.echo(f"{k:15} {data[k]}")
        click.echo(f"{'sizes':15} kernel {data['sizes']['kernel']} B, "
                   f"initrd {data['sizes']['initrd']} B")
        click.echo(f"{'modules':15} {' '.join(image.modules) or '(none: drivers built in)'}")
        for opt, val in config.items():
            click.echo(f"  CONFIG_{opt}={val}")
    return 0


COMMANDS: list[click.Command] = [image_group]
