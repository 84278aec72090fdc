"""Output in a CI log: no TTY, 80 columns (or fewer), maybe NO_COLOR.
Identifiers, paths and fixes are printed whole; nothing is cropped."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from harness.testing import run_cli

DATA = Path(__file__).parent.parent / "data" / "kconfig" / "debian-6.1-cloud-amd64.config.gz"


@pytest.mark.parametrize("columns", ["80", "40"])
def test_kconfig_check_piped_shows_the_full_option_and_fix(tmp_path: Path, columns: str) -> None:
    text = gzip.decompress(DATA.read_bytes()).decode()
    config = tmp_path / "a-rather-long-directory-name-for-a-ci-log" / "no-acpi-hotplug.config"
    config.parent.mkdir()
    config.write_text("".join(line + "\n" for line in text.splitlines()
                              if "CONFIG_ACPI_HOTPLUG_MEMORY" not in line))
    env = dict(os.environ, COLUMNS=columns, NO_COLOR="1", TERM="xterm-256color")
    # stdout is a pipe, as under `| cat`
    proc = run_cli("kconfig", "check", str(config), env=env, timeout=60)
    out = proc.stdout
    assert proc.returncode == 1, proc.stderr
    assert "CONFIG_ACPI_HOTPLUG_MEMORY=n" in out
    assert "fix: scripts/config -e ACPI_HOTPLUG_MEMORY" in out
    assert str(config) in out
    assert "…" not in out
    assert "\x1b[" not in out  # NO_COLOR, and no terminal anyway
    assert "zstd" not in out.split("RD_ZSTD")[0] or "uncompressed" in out
