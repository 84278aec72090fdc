"""memhp's module plan without depmod, checked against depmod itself.

A Debian linux-image package has no modules.dep (its postinst runs depmod);
memhp reads each module's ``depends=`` (.modinfo, written by modpost)
instead of running depmod on a tree it must not write to.  Here the default
guest's real package is unpacked into a temp dir, depmod runs there, and
both give the same load order for the guest's modules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.image import Recipe, cache_root
from harness.image.debs import unpack_kernel_deb
from harness.image.modules import ModinfoDeps, load_order, modules_release, parse_modules_dep


@pytest.mark.skipif(shutil.which("depmod") is None and not Path("/sbin/depmod").exists(),
                    reason="depmod (kmod) is not installed: nothing to compare with")
def test_modinfo_closure_equals_depmods(memhp_guest_image: Any, tmp_path: Path) -> None:
    deb = cache_root() / "debs" / memhp_guest_image.source.removeprefix("debian:")
    if not deb.is_file():
        pytest.skip(f"the default guest's package {deb.name} is not in the memhp cache")
    unpack_kernel_deb(deb, tmp_path)
    kver = memhp_guest_image.kernel_version
    mdir = tmp_path / "lib/modules" / kver
    assert not (mdir / "modules.dep").exists()
    assert modules_release(mdir) == kver
    builtin = {Path(x).name.removesuffix(".ko").replace("-", "_")
               for x in (mdir / "modules.builtin").read_text().split()}
    wanted = [m for m in Recipe.load().modules if m not in builtin]
    ours = load_order(ModinfoDeps(mdir), wanted)
    depmod = shutil.which("depmod") or "/sbin/depmod"
    subprocess.run([depmod, "-b", str(tmp_path), kver], check=True)
    theirs = load_order(parse_modules_dep((mdir / "modules.dep").read_text()), wanted)
    assert set(ours) == set(theirs)
    for order in (ours, theirs):  # both put every dependency first
        deps = parse_modules_dep((mdir / "modules.dep").read_text())
        for i, path in enumerate(order):
            assert set(deps[path]) <= set(order[:i]), (path, deps[path], order)
