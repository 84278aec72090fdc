"""Unit tests of size parsing (pure logic)."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.errors import UsageError
from harness.units import GiB, KiB, MiB, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1G", GiB), ("512M", 512 * MiB), ("4k", 4 * KiB), ("1GiB", GiB), ("1024", 1024),
     ("2T", 2 << 40)],
)
def test_parse_size_accepts_qemu_suffixes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [("0", "zero"), ("-1G", "negative"), ("1.5G", "fractional"), ("10Q", "not a size"),
     ("", "not a size"), ("99999999999999999999E", "too large")],
)
def test_parse_size_rejects_bad_input_naming_the_value(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text, what="DIMM size")
    assert needle in str(info.value)
    assert repr(text) in str(info.value)


@given(st.integers(min_value=1, max_value=1 << 62))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.text(max_size=30))
def test_parse_size_never_raises_anything_but_usage_error(text: str) -> None:
    with contextlib.suppress(UsageError):
        parse_size(text)
