"""Packaging glue (metadata is in pyproject.toml): copy the data memhp reads,
``guest_images/`` and ``kconfigs/``, into the wheel as ``harness/data/``,
where :mod:`harness.resources` finds them through importlib.resources.  In a
checkout (editable install) they are read in place."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("guest_images", "kconfigs")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        here = Path(__file__).resolve().parent
        for name in DATA_DIRS:
            dest = Path(self.build_lib) / "harness" / "data" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(here / name, dest)


setup(cmdclass={"build_py": BuildWithData})
