"""harness.cache: the one writer of memhp's cache (temp dirs only, never ~/.cache)."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from harness import cache


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _leftovers(parent: Path, final: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()
                  if p != final and not p.name.endswith(".lock"))


def test_cache_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMHP_CACHE_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_root(tmp_path / "o") == tmp_path / "o"
    assert cache.cache_root() == tmp_path / "m"
    monkeypatch.delenv("MEMHP_CACHE_DIR")
    assert cache.cache_root() == tmp_path / "x" / "memhp"


def test_building_publishes_whole_entry_with_mode(tmp_path: Path) -> None:
    final = tmp_path / "images" / "k1"
    with cache.lock(final.parent, "k1"), cache.building(final, mode=0o755) as tmp:
        assert tmp.parent == final.parent and not final.exists()
        (tmp / "a").write_text("a")
        (tmp / "b").write_text("b")
    assert sorted(p.name for p in final.iterdir()) == ["a", "b"]
    assert _mode(final) == 0o755
    assert _leftovers(final.parent, final) == []


def test_building_failure_leaves_nothing_and_keeps_the_old_entry(tmp_path: Path) -> None:
    final = tmp_path / "k"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(RuntimeError), cache.building(final) as tmp:
        (tmp / "half").write_text("half")
        raise RuntimeError("build failed")
    assert [p.name for p in final.iterdir()] == ["old"]
    assert _leftovers(tmp_path, final) == []


def test_building_interrupted_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "k"
    with pytest.raises(KeyboardInterrupt), cache.building(final) as tmp:
        (tmp / "half").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_replace_rebuilds_an_entry(tmp_path: Path) -> None:
    final = tmp_path / "k"
    for text in ("one", "two"):
        with cache.building(final) as tmp:
            (tmp / "f").write_text(text)
    assert (final / "f").read_text() == "two"
    assert _leftovers(tmp_path, final) == []


def test_replace_drops_a_link_never_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("keep")
    final = tmp_path / "c" / "k"
    final.parent.mkdir()
    final.symlink_to(target)
    with cache.building(final) as tmp:
        (tmp / "f").write_text("new")
    assert not final.is_symlink() and (final / "f").read_text() == "new"
    assert (target / "keep").read_text() == "keep"


def test_private_mode_is_kept(tmp_path: Path) -> None:
    final = tmp_path / "states" / "k"
    with cache.building(final, mode=0o700, replace=False) as tmp:
        (tmp / "f").write_text("x")
    assert _mode(final) == 0o700


def test_loser_of_a_publish_race_is_removed_winner_kept(tmp_path: Path) -> None:
    final = tmp_path / "k"
    first = cache.temp_dir(tmp_path, ".build-")
    second = cache.temp_dir(tmp_path, ".build-")
    (first / "who").write_text("first")
    (second / "who").write_text("second")
    assert cache.publish(first, final, replace=False) is True
    assert cache.publish(second, final, replace=False) is False
    assert (final / "who").read_text() == "first"
    assert _leftovers(tmp_path, final) == []


def _racer(root: str, name: str, go: object) -> None:
    final = Path(root) / "k"
    go.wait()  # type: ignore[attr-defined]
    with cache.building(final, replace=False) as tmp:
        (tmp / "who").write_text(name)
        (tmp / "big").write_bytes(os.urandom(1 << 16))


def test_concurrent_publishers_of_one_key(tmp_path: Path) -> None:
    """Processes building the same key without a lock: exactly one entry,
    whole, from one of them; every other temp dir is gone."""
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), f"p{i}", go)) for i in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    final = tmp_path / "k"
    assert (final / "who").read_text() in {"p0", "p1", "p2", "p3"}
    assert len((final / "big").read_bytes()) == 1 << 16
    assert _leftovers(tmp_path, final) == []


def _locked_builder(root: str, name: str, log: str) -> None:
    final = Path(root) / "k"
    with cache.lock(final.parent, "k"):
        if final.exists():
            return
        with cache.building(final) as tmp:
            (tmp / "who").write_text(name)
            with open(log, "a") as f:
                f.write(name + "\n")


def test_locked_builders_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "built.log"
    root = tmp_path / "c"
    procs = [ctx.Process(target=_locked_builder, args=(str(root), f"p{i}", str(log)))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1
    assert (root / "k" / "who").read_text() == log.read_text().strip()


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755])
def test_write_file_mode_ignores_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o077)
    try:
        path = cache.write_file(tmp_path / "d" / "f.json", "{}", mode=mode)
    finally:
        os.umask(old)
    assert path.read_text() == "{}" and _mode(path) == mode
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_write_file_replaces_atomically_and_never_follows_links(tmp_path: Path) -> None:
    path = tmp_path / "f"
    cache.write_file(path, b"one")
    cache.write_file(path, b"two")
    assert path.read_bytes() == b"two"
    victim = tmp_path / "victim"
    victim.write_text("victim")
    link = tmp_path / "link"
    link.symlink_to(victim)
    cache.write_file(link, "new")
    assert victim.read_text() == "victim" and not link.is_symlink()


def test_write_file_failure_leaves_the_old_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    cache.write_file(path, "old")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", boom)
    with pytest.raises(OSError):
        cache.write_file(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_scratch_is_removed_either_way(tmp_path: Path) -> None:
    with cache.scratch(tmp_path, ".download-") as tmp:
        (tmp / "x.deb").write_text("x")
        cache.publish(tmp / "x.deb", tmp_path / "x.deb")
    with pytest.raises(ValueError), cache.scratch(tmp_path, ".download-"):
        raise ValueError
    assert [p.name for p in tmp_path.iterdir()] == ["x.deb"]


def test_private_dir(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    d.parent.mkdir()
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    assert cache.private_dir(d) == d and _mode(d) == 0o700


# -- writers through the helper ----------------------------------------------------------

def test_fetched_qemu_unpacks_whole_and_its_launcher_is_0755(tmp_path: Path) -> None:
    import subprocess

    from harness.qemu.fetch import unpack, write_launcher

    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: fake\nVersion: 1\nArchitecture: all\n"
                                        "Maintainer: m <m@example.org>\nDescription: x\n")
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "usr/bin/qemu-system-x86_64").write_text("#!/bin/sh\n")
    deb = tmp_path / "fake_1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(deb)], check=True,
                   capture_output=True)
    root = tmp_path / "qemu" / "debian-1"
    root.parent.mkdir()
    unpack(root, [deb])
    write_launcher(root)
    assert (root / "usr/bin/qemu-system-x86_64").is_file()
    assert _mode(root) == 0o755 and _mode(root / "qemu-system-x86_64") == 0o755
    with pytest.raises(subprocess.CalledProcessError):
        unpack(root, [tmp_path / "missing.deb"])  # a failed re-unpack keeps the old root
    assert (root / "qemu-system-x86_64").is_file()
    assert sorted(p.name for p in root.parent.iterdir()) == ["debian-1"]


def test_kvm_probe_verdict_cached_once_per_boot(tmp_path: Path) -> None:
    from harness.qemu.accel import KvmVerdict, _cached_verdict

    calls: list[str] = []

    def prober(binary: str, kernel: Path) -> KvmVerdict:
        calls.append(binary)
        return KvmVerdict(True, "booted")

    boot_id = tmp_path / "boot_id"
    boot_id.write_text("b1\n")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"k")
    first = _cached_verdict("qemu", kernel, tmp_path / "c", boot_id, prober)
    again = _cached_verdict("qemu", kernel, tmp_path / "c", boot_id, prober)
    assert first.works and again.works and len(calls) == 1
    assert "cached" in again.reason
    (cached,) = (tmp_path / "c").glob("kvm-probe-*.json")
    assert _mode(cached) == 0o644
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".lock"]
