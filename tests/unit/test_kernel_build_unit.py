"""`memhp kernel build` without building: cache key, fragment verification, input checks.

The .config and Kconfig texts here are small fakes (FAKE_*), not real kernel files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.kconfig import parse_values
from harness.kconfig.deps import explain_dropped, kconfig_depends, kconfig_symbols
from harness.kernel.build import _bounded_jobs, build_kernel, cache_key
from harness.kernel.fragments import (
    describe_dropped,
    read_fragment,
    requested_options,
    verify_config,
)
from harness.kernel.source import user_source
from harness.resources import kconfigs_dir

FAKE_FRAGMENT = "# fake\nCONFIG_MEMORY_HOTPLUG=y\nCONFIG_ACPI_HOTPLUG_MEMORY=y\n"
FAKE_AUTO = ("CONFIG_MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO=y\n"
             "CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y\n")
FAKE_OFFLINE = "# CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE is not set\n"

FAKE_KCONFIG = """
config MEMORY_HOTPLUG
	bool "Memory hotplug"
menuconfig ACPI
	bool "ACPI"
config ACPI_HOTPLUG_MEMORY
	bool "Memory Hotplug"
	depends on MEMORY_HOTPLUG
  config MEMORY_HOTPLUG_DEFAULT_ONLINE
	bool "Online the newly added memory blocks by default"
# config COMMENTED_OUT
"""

FAKE_FINAL_CONFIG = """\
CONFIG_ACPI=y
CONFIG_MEMORY_HOTPLUG=y
# CONFIG_ACPI_HOTPLUG_MEMORY is not set
CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y
"""


def test_cache_key_is_stable_and_depends_on_every_input() -> None:
    frags = [FAKE_FRAGMENT.encode(), FAKE_AUTO.encode()]
    base = cache_key("deb:linux-source-6.1_6.1.192-2_all.deb", frags, "tinyconfig", "gcc 12.2")
    assert base == cache_key("deb:linux-source-6.1_6.1.192-2_all.deb", list(frags),
                             "tinyconfig", "gcc 12.2")
    variants = {
        cache_key("deb:linux-source-6.1_6.1.193-1_all.deb", frags, "tinyconfig", "gcc 12.2"),
        cache_key("deb:linux-source-6.1_6.1.192-2_all.deb", frags[:1], "tinyconfig", "gcc 12.2"),
        cache_key("deb:linux-source-6.1_6.1.192-2_all.deb", frags[::-1], "tinyconfig",
                  "gcc 12.2"),
        cache_key("deb:linux-source-6.1_6.1.192-2_all.deb", frags, "defconfig", "gcc 12.2"),
        cache_key("deb:linux-source-6.1_6.1.192-2_all.deb", frags, "tinyconfig", "gcc 13.1"),
        cache_key("deb:linux-source-6.1_6.1.192-2_all.deb",
                  [FAKE_FRAGMENT.encode() + b"CONFIG_NUMA=y\n", frags[1]], "tinyconfig",
                  "gcc 12.2"),
    }
    assert base not in variants and len(variants) == 6


def test_kconfig_symbols_finds_config_and_menuconfig_only() -> None:
    assert kconfig_symbols([FAKE_KCONFIG]) == {
        "MEMORY_HOTPLUG", "ACPI", "ACPI_HOTPLUG_MEMORY", "MEMORY_HOTPLUG_DEFAULT_ONLINE"}


FAKE_KCONFIG_DEPS = """
menuconfig ACPI
	bool "ACPI"
	depends on ARCH_SUPPORTS_ACPI
if ACPI
config ACPI_HOTPLUG_MEMORY
	bool "Memory Hotplug"
	depends on MEMORY_HOTPLUG
endif
config X86_64_ACPI_NUMA
	def_bool y
	depends on X86_64 && NUMA && ACPI
	depends on PCI
config NUMA
	bool "NUMA"
"""


def test_explain_dropped_names_dependencies_and_their_values() -> None:
    dropped = [("X86_64_ACPI_NUMA", "y", "n"), ("ACPI_HOTPLUG_MEMORY", "y", "n"),
               ("NUMA", "y", "n")]
    depends = kconfig_depends([FAKE_KCONFIG_DEPS], [d[0] for d in dropped])
    assert depends == {"X86_64_ACPI_NUMA": ["X86_64 && NUMA && ACPI", "PCI"],
                       "ACPI_HOTPLUG_MEMORY": ["MEMORY_HOTPLUG"], "NUMA": []}
    final = parse_values("CONFIG_X86_64=y\nCONFIG_NUMA=y\nCONFIG_PCI=y\n"
                         "CONFIG_MEMORY_HOTPLUG=y\n")
    why = explain_dropped(dropped, depends, final)
    assert why["X86_64_ACPI_NUMA"] == ("depends on X86_64 && NUMA && ACPI && PCI "
                                       "[X86_64=y NUMA=y ACPI=n PCI=y]")
    # Its own `depends on` holds: the enclosing `if ACPI` is what is off.
    assert "enclosing `if`" in why["ACPI_HOTPLUG_MEMORY"]
    assert "NUMA" not in why


def test_requested_options_later_fragment_wins() -> None:
    wanted = requested_options([FAKE_AUTO, FAKE_OFFLINE])
    assert wanted["MEMORY_HOTPLUG_DEFAULT_ONLINE"] == "n"
    assert wanted["MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO"] == "y"


def test_verify_reports_dropped_options_and_ignores_unknown_ones() -> None:
    wanted = requested_options([FAKE_FRAGMENT, FAKE_AUTO])
    check = verify_config(wanted, parse_values(FAKE_FINAL_CONFIG),
                          kconfig_symbols([FAKE_KCONFIG]))
    assert not check.ok
    # merge_config would have silently dropped it: wanted y, ended up not set.
    assert check.dropped == (("ACPI_HOTPLUG_MEMORY", "y", "n"),)
    # Linux 6.1 has no MHP_DEFAULT_ONLINE_TYPE_* choice: reported, not an error.
    assert check.unknown == ("MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO",)
    text = describe_dropped(check.dropped, {"ACPI_HOTPLUG_MEMORY": "depends on ACPI"})
    assert "CONFIG_ACPI_HOTPLUG_MEMORY: wanted y, got n (depends on ACPI)" in text


def test_verify_not_set_is_satisfied_by_absent_or_n() -> None:
    known = kconfig_symbols([FAKE_KCONFIG])
    wanted = requested_options([FAKE_OFFLINE])
    assert verify_config(wanted, parse_values("CONFIG_ACPI=y\n"), known).ok
    assert verify_config(wanted, parse_values(FAKE_OFFLINE), known).ok
    bad = verify_config(wanted, parse_values(FAKE_FINAL_CONFIG), known)
    assert bad.dropped == (("MEMORY_HOTPLUG_DEFAULT_ONLINE", "n", "y"),)


def test_verify_all_present_is_ok() -> None:
    final = FAKE_FINAL_CONFIG.replace("# CONFIG_ACPI_HOTPLUG_MEMORY is not set",
                                      "CONFIG_ACPI_HOTPLUG_MEMORY=y")
    check = verify_config(requested_options([FAKE_FRAGMENT]), parse_values(final),
                          kconfig_symbols([FAKE_KCONFIG]))
    assert check.ok and check.unknown == ()


def test_shipped_fragments_parse() -> None:
    for name in ("memhp.config", "auto-online.config", "auto-online-movable.config",
                 "offline-default.config"):
        assert requested_options([read_fragment(kconfigs_dir() / name)])
    memhp = requested_options([read_fragment(kconfigs_dir() / "memhp.config")])
    assert memhp["MEMORY_HOTPLUG"] == "y" and memhp["ACPI_HOTPLUG_MEMORY"] == "y"
    assert "m" not in memhp.values()  # everything built in: no modules in the guest


def test_bad_inputs_are_usage_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.config"
    empty.write_text("# nothing here\n")
    with pytest.raises(UsageError, match="no CONFIG_ lines"):
        read_fragment(empty)
    with pytest.raises(UsageError, match="does not exist"):
        read_fragment(tmp_path / "missing.config")
    with pytest.raises(UsageError, match="base config"):
        build_kernel(base="allyesconfig")
    with pytest.raises(UsageError, match="not a kernel source tree"):
        build_kernel(tmp_path, [kconfigs_dir() / "memhp.config"])
    with pytest.raises(UsageError, match="at least 1"):
        _bounded_jobs(0)
    assert _bounded_jobs(10_000) >= 1
    assert _bounded_jobs(10_000) == _bounded_jobs(None)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--base", "allyesconfig"], "allyesconfig"),
        (["--jobs", "0"], "at least 1"),
        (["--fragment", "/nonexistent/frag.config"], "does not exist"),
        (["--source", "/tmp", "--fragment", str(kconfigs_dir() / "memhp.config")],
         "not a kernel source tree"),
    ],
)
def test_cli_bad_input_exits_2(args: list[str], needle: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "build", *args]) == 2
    assert needle in capsys.readouterr().err


def _fake_tree(root: Path) -> Path:
    (root / "scripts/kconfig").mkdir(parents=True)
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 9\nSUBLEVEL = 0\n"
                                   "EXTRAVERSION = -rc1\n")
    (root / "Kconfig").write_text("config FAKE\n\tbool\n")
    (root / "scripts/kconfig/merge_config.sh").write_text("#!/bin/sh\n")
    return root


def test_user_source_identity_follows_version_commit_and_edits(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "fake-linux")
    plain = user_source(tree).identity
    assert plain == f"dir:{tree.resolve()}:6.9.0-rc1"

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "fake")
    committed = user_source(tree).identity
    assert committed.startswith(plain + ":") and "dirty" not in committed
    (tree / "Kconfig").write_text("config FAKE\n\tbool \"edited\"\n")
    assert user_source(tree).identity.startswith(committed + ":dirty-")


# -- kernel packages and user kernels' inputs (harness/image/build.py) ------------------

@pytest.mark.parametrize(("spec", "suite", "want"), [
    ("linux-image-amd64", None, ("linux-image-amd64", None)),
    ("linux-image-amd64/bookworm-backports", None,
     ("linux-image-amd64", "bookworm-backports")),
    ("debian:linux-image-amd64/trixie", None, ("linux-image-amd64", "trixie")),
    ("linux-image-amd64", "bookworm-backports", ("linux-image-amd64", "bookworm-backports")),
])
def test_kernel_package_spellings(spec: str, suite: str | None,
                                  want: tuple[str, str | None]) -> None:
    from harness.image.debs import split_package_spec

    assert split_package_spec(spec, suite) == want


@pytest.mark.parametrize(("spec", "suite", "named"), [
    ("linux-image-amd64/trixie", "bookworm-backports", "'trixie'"),
    ("Linux Image", None, "'Linux Image'"),
    ("linux-image-amd64;rm", None, "amd64;rm"),
])
def test_bad_kernel_package_is_usage_error(spec: str, suite: str | None, named: str) -> None:
    from harness.image.debs import split_package_spec

    with pytest.raises(UsageError, match=named) as info:
        split_package_spec(spec, suite)
    assert info.value.exit_code == 2


def test_compressed_module_names_become_plain() -> None:
    from harness.image.modules import plain_name

    assert plain_name("kernel/drivers/net/virtio_net.ko.xz") == "virtio_net.ko"
    assert plain_name("kernel/x/pvpanic-mmio.ko.zst") == "pvpanic-mmio.ko"
    assert plain_name("kernel/x/a.ko") == "a.ko"


def test_modules_dir_named_for_another_release_is_refused(tmp_path: Path) -> None:
    """No module file to read: the directory names its release (bug 5)."""
    from harness.image.user_kernel import find_modules_dir

    tree = tmp_path / "lib/modules/6.12.95+deb12-amd64"
    tree.mkdir(parents=True)
    (tree / "modules.order").write_text("")
    with pytest.raises(UsageError, match=r"6\.12\.95\+deb12-amd64.*6\.1\.0-56"):
        find_modules_dir(tree, "6.1.0-56-cloud-amd64")
    with pytest.raises(UsageError, match=r"no modules for kernel 6\.1\.0-56-cloud-amd64; "
                                         r"it holds modules for 6\.12\.95\+deb12-amd64"):
        find_modules_dir(tmp_path / "lib/modules", "6.1.0-56-cloud-amd64")
    with pytest.raises(UsageError, match="not a directory"):
        find_modules_dir(tmp_path / "nope", "6.1.0-56-cloud-amd64")


def test_kernel_and_kernel_package_cannot_combine(tmp_path: Path) -> None:
    from harness.image.build import build_image

    with pytest.raises(UsageError, match="--modules and --kernel-config go with --kernel"):
        build_image(modules=tmp_path, cache_dir=tmp_path)


def test_source_package_name_is_checked() -> None:
    from harness.kernel.source import debian_source_deb

    with pytest.raises(UsageError, match="'linux-image-amd64'"):
        debian_source_deb("linux-image-amd64")


def test_cli_default_source_package_is_the_builders() -> None:
    from harness.cli.kernel import SOURCE_PACKAGE as CLI_DEFAULT
    from harness.kernel.source import SOURCE_PACKAGE

    assert CLI_DEFAULT == SOURCE_PACKAGE


# -- what a build leaves in the cache (harness.cache; a temp MEMHP_CACHE_DIR) ----------

def _fake_source_deb(tmp_path: Path, with_tarball: bool = True, version: str = "9.9.1-1"
                     ) -> Path:
    import subprocess
    import tarfile

    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        f"Package: linux-source-9.9\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: memhp <memhp@example.org>\nDescription: fake\n")
    (pkg / "usr/src").mkdir(parents=True)
    if with_tarball:
        tree = _fake_tree(tmp_path / "linux-source-9.9")
        with tarfile.open(pkg / "usr/src/linux-source-9.9.tar.xz", "w:xz") as tar:
            tar.add(tree, arcname="linux-source-9.9")
    deb = tmp_path / f"linux-source-9.9_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_source_unpacked_once_and_a_failed_unpack_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.errors import ImageBuildError
    from harness.kernel.source import unpack_debian_source

    monkeypatch.setenv("MEMHP_CACHE_DIR", str(tmp_path / "cache"))
    deb = _fake_source_deb(tmp_path)
    tree = unpack_debian_source(deb)
    src = tmp_path / "cache/src"
    assert tree == src / deb.stem / "linux-source-9.9" and (tree / "Makefile").is_file()
    assert (src / deb.stem / ".memhp-unpacked").read_text() == deb.name + "\n"
    assert sorted(p.name for p in src.iterdir()) == [deb.stem, f"{deb.stem}.lock"]
    (tree / "marker").write_text("kept")
    assert unpack_debian_source(deb) == tree and (tree / "marker").exists()  # a hit

    empty = _fake_source_deb(tmp_path / "empty", with_tarball=False, version="9.9.2-1")
    with pytest.raises(ImageBuildError, match="holds no usr/src"):
        unpack_debian_source(empty)
    assert not (src / empty.stem).exists()
    assert not [p for p in src.iterdir() if p.name.startswith(".")]


def test_a_failed_kernel_build_keeps_its_log_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.kernel.build as kb
    from harness.errors import ImageBuildError

    monkeypatch.setenv("MEMHP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kb, "ensure_host_tools", lambda **kw: None)
    tree = _fake_tree(tmp_path / "fake-linux")  # no tinyconfig target: make fails
    with pytest.raises(ImageBuildError, match="tinyconfig"):
        build_kernel(tree, [kconfigs_dir() / "memhp.config"], jobs=1)
    kernels = tmp_path / "cache/kernels"
    names = sorted(p.name for p in kernels.iterdir())
    assert len(names) == 2 and names[0].endswith(".failed.log") and names[1].endswith(".lock")
    assert "tinyconfig" in (kernels / names[0]).read_text()
