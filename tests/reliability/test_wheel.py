"""memhp installed like any Python tool: build the wheel (and the sdist),
install the wheel into a fresh venv outside the checkout, and run it there."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KCONFIG = ROOT / "tests" / "data" / "kconfig" / "debian-6.1-cloud-amd64.config.gz"


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    return proc


@pytest.mark.long_running
def test_wheel_installed_outside_the_checkout_works(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                  str(ROOT)], cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("memhp_harness-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    for data in ("harness/data/guest_images/init", "harness/data/guest_images/recipe.toml",
                 "harness/data/kconfigs/requirements.toml", "harness/data/kconfigs/memhp.config",
                 "harness/schemas/result-1.schema.json"):
        assert data in names

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path).returncode == 0
    install = _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    memhp = str(venv / "bin" / "memhp")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import harness, harness.resources as r; print(harness.__file__); "
                  "print(r.kconfigs_dir()); print(r.guest_images_dir())"], cwd=elsewhere)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout

    model = _run([memhp, "model", "--add", "d0:1G@1", "--json"], cwd=elsewhere)
    assert model.returncode == 0, model.stderr
    assert '"block_size": 134217728' in model.stdout
    kconfig = _run([memhp, "kconfig", "check", str(KCONFIG)], cwd=elsewhere)
    assert kconfig.returncode == 0, kconfig.stdout + kconfig.stderr
    assert "hot-add and online will work" in kconfig.stdout
    image = _run([memhp, "image", "build"], cwd=elsewhere, timeout=1200)
    assert image.returncode == 0, image.stderr[-3000:]
    assert "vmlinuz" in image.stdout and "initrd" in image.stdout


def test_sdist_carries_the_data(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-c",
                 "from setuptools import build_meta as b; import sys; "
                 f"print(b.build_sdist({str(tmp_path)!r}))"], cwd=ROOT)
    sdists = list(tmp_path.glob("memhp_harness-*.tar.gz")) + list(
        tmp_path.glob("memhp-harness-*.tar.gz"))
    assert sdists, proc.stderr[-2000:]
    with tarfile.open(sdists[0]) as tar:
        names = tar.getnames()
    for data in ("guest_images/init", "kconfigs/requirements.toml", "setup.py",
                 "harness/schemas/result-1.schema.json"):
        assert any(n.endswith("/" + data) for n in names), data
