"""``memhp kernel build``: a small bootable kernel with memhp's config fragments.

Prints the bzImage, its .config and the build time; a second run with the
same inputs is a cache hit.  Exit 2 for bad input (including fragment
options that did not survive the merge), 3 when the host cannot build.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

# = harness.kernel.build.SOURCE_PACKAGE (not imported here: `memhp --help` stays fast)
SOURCE_PACKAGE = "linux-source-6.12"


@click.group("kernel")
def kernel_group() -> None:
    """Build kernels to test memory hotplug with."""


@kernel_group.command("build")
@click.option("--source", type=click.Path(path_type=Path, file_okay=False),
              help="Kernel source tree (default: Debian's --source-package, downloaded "
                   "and unpacked into the cache).")
@click.option("--source-package", default=SOURCE_PACKAGE, show_default=True,
              help="Debian source package used without --source, e.g. linux-source-6.1 "
                   "(fetched with memhp's own apt; never installed).")
@click.option("--suite", default=None,
              help="Debian suite to take --source-package from (bookworm, "
                   "bookworm-backports, bookworm-security, trixie; default: the newest "
                   "bookworm candidate, then trixie).")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(path_type=Path),
              help="Config fragment to merge, in order (repeatable; default "
                   "kconfigs/memhp.config).")
@click.option("--auto-online", is_flag=True,
              help="Also merge kconfigs/auto-online.config (hot-added memory comes "
                   "online by itself).")
@click.option("--base", type=click.Choice(["tinyconfig", "defconfig"]), default="tinyconfig",
              show_default=True, help="Config the fragments are merged onto.")
@click.option("--jobs", type=int, default=None,
              help="Parallel make jobs (default and maximum: the number of CPUs).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache has this build.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build_cmd(source: Path | None, source_package: str, suite: str | None,
              fragments: tuple[Path, ...], auto_online: bool, base: str,
              jobs: int | None, force: bool, as_json: bool) -> int:
    """Build a bzImage: BASE config + fragments, verified, cached by its inputs."""
    from harness.kernel import build_kernel

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    build = build_kernel(source, list(fragments) or None, auto_online=auto_online, base=base,
                         jobs=jobs, force=force, progress=say,
                         source_package=source_package, suite=suite)
    if as_json:
        click.echo(json.dumps(build.to_json(), indent=2))
        return 0
    how = "cache hit, built" if build.cached else "built"
    click.echo(f"bzImage: {build.bzimage}")
    click.echo(f"config:  {build.config}")
    click.echo(f"version: {build.kernel_version}")
    click.echo(f"time:    {how} in {build.seconds:.0f}s")
    if build.unknown_options:
        click.echo("ignored (unknown to this kernel): "
                   + " ".join(f"CONFIG_{o}" for o in build.unknown_options))
    return 0


COMMANDS: list[click.Command] = [kernel_group]
