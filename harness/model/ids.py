"""Device ids as QEMU takes them (util/id.c ``id_wellformed()``)."""

from __future__ import annotations

import re

from harness.errors import UsageError

# QEMU util/id.c id_wellformed(): a letter, then letters, digits, '-', '.', '_';
# at most 64 characters here (QEMU's own ids are short; names are shown in tables).
_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}", re.ASCII)


def check_id(dimm_id: str) -> str:
    """A DIMM id QEMU accepts (util/id.c id_wellformed), or a UsageError."""
    if not isinstance(dimm_id, str) or not _ID.fullmatch(dimm_id):
        raise UsageError(
            f"DIMM id {dimm_id!r} is not a valid QEMU id",
            value=dimm_id,
            fix="start with a letter; use only letters, digits, '-', '.' and '_' "
                "(at most 64 characters)",
        )
    return dimm_id
