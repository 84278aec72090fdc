"""The smallest sequence that still fails the same way (pure).

Delta debugging over the steps (Zeller's ddmin, greedy): drop chunks of
halving size, keeping a candidate when it is a valid plan (``valid``: its
preconditions hold and the model accepts it) and ``still_fails`` says it
fails as the original did.  Each ``still_fails`` is a VM run, so the
search is bounded by ``budget`` runs.  Hypothesis's shrinker is not used:
it re-runs an example many times and assumes runs are cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _sizes(n: int) -> list[int]:
    """Chunk sizes to try, largest first: halves down to 1, and 2 (a pair
    such as pause and its resume only goes together)."""
    sizes = {max(1, n >> k) for k in range(1, max(1, n.bit_length()))} | {1}
    if n >= 2:
        sizes.add(2)
    return sorted(sizes, reverse=True)


def shrink(steps: Sequence[T], still_fails: Callable[[list[T]], bool],
           valid: Callable[[list[T]], bool], budget: int = 40) -> tuple[list[T], int, bool]:
    """(the smallest failing sequence found, runs spent, budget exhausted)."""
    current = list(steps)
    runs = 0
    while True:
        changed = False
        for chunk in _sizes(len(current)):
            i = 0
            while i < len(current):
                candidate = current[:i] + current[i + chunk:]
                if candidate and valid(candidate):
                    if runs >= budget:
                        return current, runs, True
                    runs += 1
                    if still_fails(candidate):
                        current, changed = candidate, True
                        continue  # the same position now holds the next steps
                i += chunk
        if not changed:
            return current, runs, False
