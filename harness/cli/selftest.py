"""``memhp selftest``: the kernel's mem-on-off-test.sh, in full, graded."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


@click.command("selftest", context_settings={"ignore_unknown_options": True,
                                             "allow_extra_args": True})
@click.option("--script", "script", type=click.Path(path_type=Path),
              help="Your mem-on-off-test.sh (default: the one in Debian's linux-source "
                   "tree in memhp's cache, unpacked on first use).")
@click.option("--ratio", default=10, show_default=True, type=click.IntRange(0, 100),
              help="Percent of memory blocks the script offlines (its -r).")
@click.pass_context
def selftest_cmd(ctx: click.Context, script: Path | None, ratio: int) -> int:
    """Run tools/testing/selftests/memory-hotplug/mem-on-off-test.sh in the guest
    (both halves: the error-injection one too), graded on its "unexpected"/
    "skip" lines, its status, kernel splats and the model.  Other options are
    `memhp run`'s (--kernel, --kernel-package, --qemu, --json, --keep, ...)."""
    from harness.cli.run import run_cmd
    from harness.files import check_readable_file
    from harness.selftest import scenario_toml, script_from_source

    if script is None:
        script = script_from_source(lambda msg: click.echo(f"memhp: {msg}", err=True))
    else:
        check_readable_file(script, "selftest script", "give mem-on-off-test.sh",
                            max_bytes=1 << 20)
    with tempfile.TemporaryDirectory(prefix="memhp-selftest-") as tmp:
        copy = Path(tmp) / "mem-on-off-test.sh"
        copy.write_bytes(script.read_bytes())
        toml = Path(tmp) / "selftest.toml"
        toml.write_text(scenario_toml(copy, ratio))
        args = ["--scenario", str(toml), *ctx.args]
        with run_cmd.make_context("run", args, parent=ctx.find_root()) as run_ctx:
            return run_cmd.invoke(run_ctx)  # type: ignore[no-any-return]


COMMANDS: list[click.Command] = [selftest_cmd]
