"""Reading the tables of a scenario file, which may come from a pull
request: a key's type, unknown keys, regular expressions.  Each error is a
:class:`UsageError` naming the key and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from harness.errors import UsageError


def expect(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{where}.{key} must be a {kind.__name__}, got {value!r}",
                         value=value, fix=f"write {key} as a TOML {kind.__name__}")
    return value


def unknown(table: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise UsageError(f"{where}: unknown key(s) {', '.join(extra)}", value=extra,
                         fix=f"allowed keys: {', '.join(sorted(allowed))}")


def splat_patterns(value: object, where: str) -> tuple[str, ...]:
    """A string or list of strings, each a valid regular expression."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise UsageError(f"{where} must be a string or a list of strings", value=value,
                         fix='e.g. expect_splat = "page dumped because: unmovable page"')
    for v in items:
        try:
            re.compile(v)
        except re.error as exc:
            raise UsageError(f"{where}: {v!r} is not a regular expression ({exc})",
                             value=v, fix="escape special characters with a backslash") \
                from None
    return tuple(items)


def refusal_key(raw: Mapping[str, Any], where: str) -> str | None:
    """``expect_refusal``: true (any refusal, "") or a regex of QEMU's words."""
    refusal = raw.get("expect_refusal")
    if refusal is not None and not (refusal is True or isinstance(refusal, str)):
        raise UsageError(f"{where}.expect_refusal must be true or a string", value=refusal,
                         fix='e.g. expect_refusal = "no free slots"')
    if refusal is not None:
        splat_patterns(refusal if isinstance(refusal, str) else "", f"{where}.expect_refusal")
    return None if refusal is None else ("" if refusal is True else refusal)
