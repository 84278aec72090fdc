"""memhp's own apt (harness/apt.py) against deb.debian.org, for real.

Needs the Debian mirror (the lists are fetched once a day into the cache,
about 2 s here); without it each test is skipped saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.apt import SUITES, Apt
from harness.errors import HostEnvironmentError, UsageError


@pytest.fixture(scope="module")
def apt() -> Apt:
    a = Apt()
    try:
        a.update()
    except HostEnvironmentError as exc:
        pytest.skip(f"no Debian mirror: {exc}")
    return a


def test_sources_are_memhps_own_not_the_hosts(apt: Apt) -> None:
    opts = apt.options()
    assert f"Dir::State::Lists={apt.root / 'lists'}" in opts
    assert "Dir::Etc::SourceList=/nonexistent/sources.list" in opts
    text = (apt.root / "sources.sources").read_text()
    for suite in SUITES:
        assert suite in text
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in text
    # The host's dpkg database never steers the candidate.
    assert (apt.root / "status").read_text() == ""


def test_update_is_once_a_day(apt: Apt) -> None:
    assert apt.update() is False  # the fixture just did it


def test_suite_selects_the_version(apt: Apt) -> None:
    bpo = apt.version("linux-image-amd64", "bookworm-backports")
    default = apt.version("linux-image-amd64")
    assert "bpo" in bpo and bpo.startswith("6.12"), bpo
    assert default.startswith("6.1."), default
    # trixie is pinned low: bookworm wins for a plain name, trixie fills gaps.
    assert apt.version("busybox-static") == apt.version("busybox-static", "bookworm")
    assert apt.version("linux-source-6.12").startswith("6.12")


def test_metapackage_resolves_to_the_concrete_kernel(apt: Apt) -> None:
    concrete = apt.resolve("linux-image-amd64", "bookworm-backports")
    assert concrete.startswith("linux-image-6.12.") and concrete.endswith("-amd64"), concrete
    assert apt.resolve(concrete) == concrete


def test_download_is_cached(apt: Apt, tmp_path: Path) -> None:
    got = apt.download(["libnuma1"], dest=tmp_path)
    deb = got["libnuma1"]
    assert deb.parent == tmp_path and deb.name.startswith("libnuma1_")
    mtime = deb.stat().st_mtime_ns
    assert apt.download(["libnuma1"], dest=tmp_path)["libnuma1"].stat().st_mtime_ns == mtime


def test_unknown_package_and_suite_are_usage_errors(apt: Apt) -> None:
    with pytest.raises(UsageError, match="no-such-package-memhp"):
        apt.show(["no-such-package-memhp"])
    with pytest.raises(UsageError, match="'sid'"):
        apt.show(["libnuma1"], "sid")
