"""Rules that change with a version, as tables of changes: one
:class:`Change` per rule and the version it changed in, with its source.
Every versioned rule set (QEMU's, its machine types', virtio-mem's, the
kernel's, the virtio-mem driver's) is looked up here, the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Version = tuple[int, int]


@dataclass(frozen=True)
class Change:
    """One rule that changed at ``since`` (inclusive)."""

    field: str
    since: Version
    value: object
    source: str


def in_force(changes: Iterable[Change], version: Version) -> dict[str, Change]:
    """Each rule's change in force at ``version`` (the last one listed whose
    ``since`` is not after it wins)."""
    chosen: dict[str, Change] = {}
    for change in changes:
        if change.since <= version:
            chosen[change.field] = change
    return chosen


def clamp(version: Version, oldest: Version, newest: Version) -> tuple[Version, Version | None]:
    """The version whose rules apply, and the one they are extrapolated
    from (None when ``version`` lies within what was read): a version past
    ``newest`` runs on ``newest``'s rules, one before ``oldest`` on
    ``oldest``'s (callers that refuse old versions check that first)."""
    version = (int(version[0]), int(version[1]))
    if version > newest:
        return newest, newest
    if version < oldest:
        return oldest, oldest
    return version, None
