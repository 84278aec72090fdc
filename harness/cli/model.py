"""`memhp model` (being written; see its issue)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
