"""The ``memhp`` command: one click group, one module per subcommand.

Errors raised as :class:`harness.errors.HarnessError` become a one-line
message on stderr naming the phase, and the error's exit code (2 usage,
1 failure, 3 environment).  Ctrl-C exits 130 after the VMs are ended by
their context managers.
"""

from __future__ import annotations

import logging
import sys

import click

from harness.errors import HarnessError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="memhp-harness")
def cli(verbose: int) -> None:
    """memhp: test Linux memory hotplug on QEMU guests against a model."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from harness.leaks import sweep_stale_workdirs

    sweep_stale_workdirs()  # what a kill -9 of an earlier memhp left behind


def _register() -> None:
    from harness.cli import (
        bench,
        cache,
        calibrate,
        fuzz,
        image,
        kconfig,
        kernel,
        model,
        regress,
        report,
        run,
        selftest,
    )

    for module in (model, image, cache, kconfig, kernel, run, calibrate, fuzz, regress, bench,
                   report, selftest):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        # Commands return their exit code (or call ctx.exit); non-standalone
        # mode hands it back here instead of calling sys.exit.
        args = sys.argv[1:] if argv is None else list(argv)
        # ctx.obj keeps the raw argv: `memhp model` applies --add/--remove in
        # the order they were given.
        rv = cli.main(args=args, prog_name="memhp", standalone_mode=False, obj=args)
    except click.exceptions.Abort:
        click.echo("memhp: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        # git bisect run reads 2 as "bad": bad input to bisect aborts it instead
        return 128 if args[:1] == ["bisect"] else 2
    except HarnessError as exc:
        click.echo(f"memhp: {exc.phase} error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("memhp: interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def run_main() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
