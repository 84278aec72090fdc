"""``python -m harness`` is ``memhp``."""

from harness.cli import run_main

run_main()
