"""The options that describe a plan's machine, declared once for every
command that takes a plan (``memhp model``, ``run``, ``compare``,
``bisect``, ``calibrate``); defaults are the seed session's
(:data:`harness.model.spec.SEED_MEMORY` ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harness.model.spec import SEED_MACHINE, SEED_MEMORY, SEED_NUMA

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

MACHINE_OPTIONS: list[Decorator] = [
    click.option("--scenario", "scenario_file", type=click.Path(path_type=Path),
                 help="A TOML scenario file (see README): its machine and steps replace "
                      "--machine/--memory/--numa/--add/--remove."),
    click.option("--machine", default=SEED_MACHINE, show_default=True,
                 help="pc (i440fx), q35, or a versioned pc-i440fx-X.Y / pc-q35-X.Y "
                      "(as -machine)."),
    click.option("--memory", default=SEED_MEMORY, show_default=True,
                 help="Boot memory, as QEMU's -m: SIZE[,slots=N][,maxmem=SIZE]; a bare "
                      "SIZE is MiB."),
    click.option("--numa", default=SEED_NUMA, show_default=True,
                 help="Boot memory per NUMA node, e.g. 3G,3G (bare numbers MiB); '' for "
                      "no NUMA."),
]

QEMU_OPTIONS: list[Decorator] = [
    click.option("--qemu", "qemu_binary", default=None,
                 help="QEMU binary (path or name), or debian:10.0 / debian:11.1: Debian's "
                      "QEMU, fetched into memhp's cache, not installed.  [default: the "
                      "machine's: qemu-system-x86_64 for pc and q35, qemu-system-aarch64 "
                      "for virt]"),
    click.option("--qemu-version", help="Model the rules of this QEMU version (default: the "
                 "binary's; any from 7.2: one newer than the newest read runs on its "
                 "rules, flagged)."),
]


def apply(options: list[Decorator]) -> Decorator:
    """A decorator adding ``options`` in the order listed."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for deco in reversed(options):
            f = deco(f)
        return f
    return decorate
