"""Result documents where kernel CI reads them: KTAP version 1
(:mod:`.ktap`, what the kernel's selftests and KUnit print) and KCIDB
JSON (:mod:`.kcidb`, what KernelCI stores).  Pure: a result document (or a
merged one, ``runs``) in, text or JSON out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def runs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The runs of a result document: itself, or a merged one's ``runs``."""
    if isinstance(doc.get("runs"), list):
        yield from (r for r in doc["runs"] if isinstance(r, dict))
    else:
        yield doc


def step_name(index: int, step: dict[str, Any]) -> str:
    """``step03_add`` style: the step's number and the kind of its action."""
    words = str(step.get("action", "")).split()
    kind = words[0] if words else "step"
    return f"step{index + 1:02d}_" + "".join(c if c.isalnum() else "_" for c in kind)
