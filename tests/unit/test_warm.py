"""Warm-start state keys and the state cache (harness.warm), without QEMU:
the key must change with every guest-visible input and only with those."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli.run import start_line, warm_allowed
from harness.qemu.config import FwCfgFile, KernelBoot, VMConfig
from harness.qemu.snapshot import incoming_args
from harness.units import GiB
from harness.warm import STATE_FORMAT, SavedState, WarmStarts, state_inputs, state_key


@pytest.fixture
def cfg(tmp_path: Path) -> VMConfig:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel-1")
    initrd.write_bytes(b"initrd-1")
    return VMConfig(name="a", boot=KernelBoot(kernel, initrd, ("console=ttyS0",)),
                    qemu_binary="sh",  # any binary: its identity is what is hashed
                    fw_cfg=(FwCfgFile("opt/memhp/host_key", tmp_path / "k1"),))


def key(cfg: VMConfig) -> str:
    return state_key(state_inputs(cfg))


def test_host_side_details_do_not_change_the_key(cfg: VMConfig, tmp_path: Path) -> None:
    same = replace(cfg, name="other", ssh_port=2222,
                   fw_cfg=(FwCfgFile("opt/memhp/host_key", tmp_path / "elsewhere"),))
    assert key(same) == key(cfg)


@pytest.mark.parametrize("change", [
    {"machine": "q35"}, {"memory": 4 * GiB, "numa": (2 * GiB, 2 * GiB)}, {"slots": 8},
    {"maxmem": 16 * GiB}, {"numa": (6 * GiB, 0)}, {"smp": 4}, {"cpu": "qemu64"},
    {"accel": "kvm"}, {"pvpanic": False}, {"extra_args": ("-device", "vmgenid")},
])
def test_every_guest_visible_input_changes_the_key(cfg: VMConfig, change: dict) -> None:
    assert key(replace(cfg, **change)) != key(cfg)


def test_kernel_initrd_cmdline_and_fw_cfg_names_change_the_key(cfg: VMConfig) -> None:
    boot = cfg.boot
    assert isinstance(boot, KernelBoot)
    before = key(cfg)
    assert key(replace(cfg, boot=replace(boot, append=("console=ttyS0", "nokaslr")))) != before
    assert key(replace(cfg, fw_cfg=(FwCfgFile("opt/x", Path("/k")),))) != before
    boot.initrd.write_bytes(b"initrd-2")  # same path, new content (mtime and size change)
    os.utime(boot.initrd, ns=(1, 1))
    after_initrd = key(cfg)
    assert after_initrd != before
    boot.kernel.write_bytes(b"kernel-2")
    os.utime(boot.kernel, ns=(2, 2))
    assert key(cfg) not in (before, after_initrd)


def test_qemu_binary_is_in_the_key(cfg: VMConfig) -> None:
    inputs = state_inputs(cfg)
    assert inputs["qemu"]["path"] == str(Path(inputs["qemu"]["path"]).resolve())
    assert key(replace(cfg, qemu_binary="cat")) != key(cfg)


def test_incoming_reads_the_state_through_a_quoted_command(tmp_path: Path) -> None:
    state = tmp_path / "my dir" / "state.zst"
    flag, uri = incoming_args(state, compressed=True)
    assert flag == "-incoming"
    assert uri.startswith("exec:")
    assert shlex.split(uri.removeprefix("exec:")) == ["zstd", "-dcq", str(state)]
    assert shlex.split(incoming_args(state, compressed=False)[1][5:]) == ["cat", str(state)]


def _fake_state(root: Path, key: str, ident: str = "x") -> SavedState:
    """A state directory as WarmStarts writes it (the stream is not real)."""
    d = root / "states" / key
    (d / "keys").mkdir(parents=True)
    (d / "state.zst").write_bytes(b"\0" * 1000)
    (d / "meta.json").write_text(json.dumps({"format": STATE_FORMAT, "id": ident,
                                             "compressed": True, "created": 0}))
    return SavedState(key, d, json.loads((d / "meta.json").read_text()))


def test_lookup_list_drop_and_clear(tmp_path: Path) -> None:
    cache = WarmStarts(tmp_path)
    assert cache.lookup("k1") is None and cache.entries() == []
    a = _fake_state(tmp_path, "k1", "id-a")
    _fake_state(tmp_path, "k2")
    (tmp_path / "states" / ".tmp-999999999-ab-k3").mkdir()  # a killed saver's leftovers
    found = cache.lookup("k1")
    assert found is not None and found.size >= 1000 and found.id == "id-a"
    assert [e.key for e in cache.entries()] == ["k1", "k2"]
    # a drop of a state that was replaced meanwhile leaves the new one alone
    assert not cache.drop(replace(a, meta={**a.meta, "id": "stale"}))
    assert cache.drop(a) and cache.lookup("k1") is None
    assert [e.key for e in cache.clear()] == ["k2"]
    assert list((tmp_path / "states").glob("[!.]*.lock")) != []  # locks stay, states go
    assert [p.name for p in (tmp_path / "states").iterdir() if p.is_dir()] == []


def test_a_state_of_another_format_or_without_its_file_is_ignored(tmp_path: Path) -> None:
    s = _fake_state(tmp_path, "k1")
    (s.directory / "meta.json").write_text(json.dumps({**s.meta, "format": STATE_FORMAT + 1}))
    assert WarmStarts(tmp_path).lookup("k1") is None
    s2 = _fake_state(tmp_path, "k2")
    s2.state_file.unlink()
    assert WarmStarts(tmp_path).lookup("k2") is None


def test_memhp_run_starts_warm_unless_told_or_a_kernel_is_under_test() -> None:
    assert warm_allowed({})
    assert not warm_allowed({"cold_boot": True})
    assert not warm_allowed({"kernel": Path("bzImage")})
    assert not warm_allowed({"disk": Path("d.qcow2")})


def test_start_line_says_how_the_guest_started() -> None:
    warm = {"warm": True, "state": "abc", "state_dir": "/c/states/abc",
            "state_bytes": 47 << 20, "reason": "restored"}
    assert start_line(warm) == ("warm start from saved state abc (/c/states/abc, 47.0 MiB); "
                                "--cold-boot to boot")
    assert start_line({"warm": False, "reason": "no saved state yet"}) == (
        "cold boot: no saved state yet")


def test_prune_drops_least_recently_used_beyond_the_cap(tmp_path: Path) -> None:
    cache = WarmStarts(tmp_path)
    for n, key in enumerate(("old", "mid", "new")):
        s = _fake_state(tmp_path, key)
        os.utime(s.directory / "meta.json", (1000 + n, 1000 + n))
    size = cache.lookup("old").size  # type: ignore[union-attr]
    cache.lookup("old").touch()  # type: ignore[union-attr]  # restored just now
    dropped = cache.prune(keep="new", cap_bytes=2 * size)
    assert [e.key for e in dropped] == ["mid"]
    assert [e.key for e in cache.entries()] == ["new", "old"]
    assert cache.prune(keep="new", cap_bytes=0) and [e.key for e in cache.entries()] == ["new"]


def test_memhp_cache_lists_and_clears_states(tmp_path: Path, monkeypatch, capsys) -> None:
    from harness.cli import main

    monkeypatch.setenv("MEMHP_STATE_DIR", str(tmp_path / "states"))
    s = _fake_state(tmp_path, "k1")
    inputs = {"machine": "pc", "memory": 6 << 30, "slots": 32, "maxmem": 32 << 30,
              "numa": [3 << 30, 3 << 30], "smp": 2, "boot": {"append": ["console=ttyS0"]},
              "qemu": {"version": "QEMU emulator version 7.2.22\nCopyright"}}
    (s.directory / "meta.json").write_text(json.dumps({**s.meta, "inputs": inputs,
                                                       "stream_bytes": 5000}))
    assert main(["cache", "states", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["states"]
    assert (row["key"], row["machine"], row["qemu"]) == ("k1", "pc",
                                                        "QEMU emulator version 7.2.22")
    assert row["bytes"] >= 1000
    assert main(["cache", "states"]) == 0
    out = capsys.readouterr().out
    assert "1 saved state(s)" in out and "-m 6144M slots=32 maxmem=32768M" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 saved state(s)" in capsys.readouterr().out
    assert WarmStarts().entries() == []
