"""The kconfig checker against real configs.

The base is Debian's real 6.1 cloud kernel config (captured, gzip'd, in
tests/data/kconfig); variants are derived from it by editing lines the way
``scripts/config -d/-e`` would.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import KconfigError
from harness.kconfig import check_config, read_config
from harness.resources import kconfigs_dir

DATA = Path(__file__).parent.parent / "data" / "kconfig"
REAL_GZ = DATA / "debian-6.1-cloud-amd64.config.gz"


@pytest.fixture(scope="module")
def debian_config() -> str:
    return gzip.decompress(REAL_GZ.read_bytes()).decode()


def disable(text: str, option: str) -> str:
    """What `scripts/config -d OPTION` does to a .config."""
    lines = [f"# CONFIG_{option} is not set" if line.startswith(f"CONFIG_{option}=") else line
             for line in text.splitlines()]
    return "\n".join(lines) + "\n"


def enable(text: str, option: str) -> str:
    lines = [line for line in text.splitlines()
             if not line.startswith((f"CONFIG_{option}=", f"# CONFIG_{option} is not set"))]
    return "\n".join([*lines, f"CONFIG_{option}=y"]) + "\n"


def test_debian_config_does_hotplug_and_stays_offline(debian_config: str) -> None:
    report = check_config(debian_config)
    assert report.ok
    assert report.online_policy == "offline" and not report.auto_online
    assert report.kernel_version == (6, 1)


@pytest.mark.parametrize("option", ["MEMORY_HOTPLUG", "ACPI_HOTPLUG_MEMORY"])
def test_missing_required_option_is_an_error(debian_config: str, option: str) -> None:
    report = check_config(disable(debian_config, option))
    assert not report.ok
    bad = [f for f in report.problems if f.option == option]
    assert bad and bad[0].severity == "error" and bad[0].fix


def test_missing_hotremove_is_a_warning_only(debian_config: str) -> None:
    report = check_config(disable(debian_config, "MEMORY_HOTREMOVE"))
    assert report.ok
    assert [f.severity for f in report.problems if f.option == "MEMORY_HOTREMOVE"] == ["warning"]


def test_old_style_auto_online(debian_config: str) -> None:
    report = check_config(enable(debian_config, "MEMORY_HOTPLUG_DEFAULT_ONLINE"))
    assert report.auto_online and report.online_policy == "online"


def test_new_style_auto_online_movable(debian_config: str) -> None:
    text = enable(disable(debian_config, "MEMORY_HOTPLUG_DEFAULT_ONLINE"),
                  "MHP_DEFAULT_ONLINE_TYPE_ONLINE_MOVABLE")
    report = check_config(text)
    assert report.online_policy == "online_movable"
    assert "6.14" in report.policy_source


def test_cmdline_overrides_the_build_default(debian_config: str) -> None:
    report = check_config(debian_config, cmdline="console=ttyS0 memhp_default_state=online_kernel")
    assert report.online_policy == "online_kernel" and "kernel parameter" in report.policy_source


def test_readers_detect_the_kind_by_content(tmp_path: Path, debian_config: str) -> None:
    plain = tmp_path / "cfg"
    plain.write_text(debian_config)
    assert read_config(plain) == (debian_config, ".config")
    gz = tmp_path / "whatever.bin"
    gz.write_bytes(REAL_GZ.read_bytes())
    assert read_config(gz)[1] == "config.gz"


def test_ikconfig_image(tmp_path: Path, debian_config: str) -> None:
    """An image laid out as kernel/configs.c does (IKCFG_ST + gzip + IKCFG_ED),
    wrapped in a compressed payload as in a bzImage: exercises the extractor
    (the Debian kernel itself is built without IKCONFIG)."""
    payload = b"\x00" * 4096 + b"IKCFG_ST" + gzip.compress(debian_config.encode()) + b"IKCFG_ED"
    import lzma

    image = tmp_path / "bzImage"
    image.write_bytes(b"MZ" + b"\x00" * 0x200 + b"HdrS" + b"\x00" * 64 + lzma.compress(payload))
    text, kind = read_config(image)
    assert kind == "ikconfig" and text == debian_config


@pytest.mark.parametrize("content", [b"garbage\n", b"\x1f\x8b\x08broken", b"\x00" * 100])
def test_garbage_is_exit_2_naming_the_file(tmp_path: Path, content: bytes, capsys) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    with pytest.raises(KconfigError):
        read_config(bad)
    assert main(["kconfig", "check", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_directory_and_missing_file(tmp_path: Path) -> None:
    assert main(["kconfig", "check", str(tmp_path)]) == 2
    assert main(["kconfig", "check", str(tmp_path / "nope")]) == 2


def test_cli_json_and_exit_codes(tmp_path: Path, debian_config: str, capsys) -> None:
    good = tmp_path / "good"
    good.write_text(debian_config)
    assert main(["kconfig", "check", str(good), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["online_policy"] == "offline"
    assert {"severity", "option", "value", "why", "fix", "ok"} <= set(doc["findings"][0])
    bad = tmp_path / "bad"
    bad.write_text(disable(debian_config, "MEMORY_HOTPLUG"))
    assert main(["kconfig", "check", str(bad)]) == 1


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not available")
def test_debian_package(tmp_path: Path, memhp_guest_image) -> None:
    """The real linux-image .deb the default guest was built from."""
    from harness.image import cache_root

    # linux-image-[0-9]*: a concrete kernel package, not a metapackage such as
    # linux-image-amd64 (no boot/config-*), which the 6.12 kernel tests fetch
    debs = sorted((cache_root() / "debs").glob("linux-image-[0-9]*.deb"))
    if not debs:
        pytest.skip("no linux-image .deb in the memhp cache")
    text, kind = read_config(debs[-1])
    assert kind == "deb" and check_config(text).ok


def test_fragments_only_use_known_or_deliberate_options() -> None:
    reqs = tomllib.loads((kconfigs_dir() / "requirements.toml").read_text())
    known = {o["name"] for o in reqs["option"]} | set(reqs["online_policy"]["new_choice"]) | {
        reqs["online_policy"]["old_option"]}
    for frag in kconfigs_dir().glob("*.config"):
        for line in frag.read_text().splitlines():
            if line.startswith("CONFIG_"):
                name = line.split("=")[0].removeprefix("CONFIG_")
                assert line.split("=")[1] in ("y", "m", "n") or line.split("=")[1].isdigit()
                if frag.name != "memhp.config":
                    assert name in known, (frag.name, name)
    memhp = check_config((kconfigs_dir() / "memhp.config").read_text())
    missing = [f.option for f in memhp.problems if f.severity == "error"]
    assert missing == [] or set(missing) <= {"ARCH_ENABLE_MEMORY_HOTPLUG"}, missing


def test_merge_config_compatible_syntax() -> None:
    for frag in kconfigs_dir().glob("*.config"):
        for line in frag.read_text().splitlines():
            assert not line or line.startswith("#") or line.startswith("CONFIG_"), line


FAKE_KCONFIG = """\
config MODULES
\tbool "modules"
\tmodules
config ACPI
\tbool "ACPI"
config NUMA
\tbool "NUMA"
config MEMORY_HOTPLUG
\tbool "hotplug"
\tdepends on NUMA
config ACPI_HOTPLUG_MEMORY
\tbool "ACPI memory hotplug"
\tdepends on MEMORY_HOTPLUG && ACPI
"""


@pytest.mark.parametrize("modules_keyword", [True, False])
def test_source_explains_why_an_option_is_off(tmp_path: Path, modules_keyword: bool) -> None:
    """A fake source tree (one Kconfig file): with the `modules` keyword of
    Linux 6.1, which kconfiglib cannot parse, the explanation comes from the
    depends-on lines; without it, from kconfiglib itself."""
    from harness.kconfig.deps import explain

    text = FAKE_KCONFIG if modules_keyword else FAKE_KCONFIG.replace("\tmodules\n", "")
    (tmp_path / "Kconfig").write_text(text)
    config = "CONFIG_ACPI=y\nCONFIG_MEMORY_HOTPLUG=y\nCONFIG_NUMA=y\n"
    why = explain(tmp_path, config, ["ACPI_HOTPLUG_MEMORY", "NO_SUCH_OPTION"])
    assert "can be enabled" in why["ACPI_HOTPLUG_MEMORY"] or "hold" in why["ACPI_HOTPLUG_MEMORY"]
    assert why["NO_SUCH_OPTION"] == "unknown to this kernel version"
    why = explain(tmp_path, "CONFIG_ACPI=y\n", ["MEMORY_HOTPLUG", "ACPI_HOTPLUG_MEMORY"])
    assert "NUMA" in why["MEMORY_HOTPLUG"] and "n" in why["MEMORY_HOTPLUG"]
    assert "MEMORY_HOTPLUG=n" in why["ACPI_HOTPLUG_MEMORY"]
    assert ("kconfiglib cannot parse" in why["MEMORY_HOTPLUG"]) == modules_keyword


def test_virtio_mem_and_what_it_needs() -> None:
    """CONFIG_VIRTIO_MEM and its dependencies (drivers/virtio/Kconfig, 6.1 and
    6.12): a warning when missing, since pc-dimm hotplug works without them."""
    base = (kconfigs_dir() / "memhp.config").read_text()
    without = {f.option: f for f in check_config(base).findings if f.group == "virtio-mem"}
    assert set(without) == {"VIRTIO_MEM", "CONTIG_ALLOC", "EXCLUSIVE_SYSTEM_RAM", "VIRTIO"}
    assert not without["VIRTIO_MEM"].ok and without["VIRTIO_MEM"].severity == "warning"
    full = base + "CONFIG_VIRTIO_MEM=m\nCONFIG_CONTIG_ALLOC=y\nCONFIG_EXCLUSIVE_SYSTEM_RAM=y\n"
    assert all(f.ok for f in check_config(full).findings if f.group == "virtio-mem")
