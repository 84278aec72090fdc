"""``memhp bench``: boot, hotplug and suite figures (see harness.bench)."""

from __future__ import annotations

import json

import click


@click.command("bench")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--accel", default="auto", show_default=True,
              type=click.Choice(["auto", "kvm", "tcg"]))
@click.option("--suite", is_flag=True,
              help="Also time the scenario suite at -n 2, cold and warm.")
@click.option("--cold-build", is_flag=True, help="Also time a cold image build (downloads).")
@click.option("--boot-profile", is_flag=True,
              help="Instead: boot once with initcall_debug and show where boot time goes.")
@click.option("--append", multiple=True,
              help="With --boot-profile: extra kernel parameters to try (repeatable).")
@click.option("--machine", default="pc", show_default=True,
              type=click.Choice(["pc", "q35", "virt"]),
              help="The seed's machine (virt: the arm64 guest, under TCG on an x86 host).")
@click.option("--json", "as_json", is_flag=True)
def bench_cmd(repeat: int, accel: str, suite: bool, cold_build: bool, boot_profile: bool,
              append: tuple[str, ...], machine: str, as_json: bool) -> int:
    """Measure boot-to-SSH vs raw QEMU, hotplug and online latency, and more."""
    from harness.bench import measure, render, render_profile

    if boot_profile:
        from harness.bench import boot_profile as profile

        prof = profile(accel, tuple(append))
        click.echo(json.dumps(prof, indent=2) if as_json else render_profile(prof))
        return 0

    data = measure(repeat, accel, suite, cold_build,
                   progress=lambda msg: click.echo(f"bench: {msg}", err=True), machine=machine)
    click.echo(json.dumps(data, indent=2) if as_json else render(data))
    return 0


COMMANDS: list[click.Command] = [bench_cmd]
