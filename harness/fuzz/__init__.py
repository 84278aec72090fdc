"""``memhp fuzz``: random hotplug sequences checked step by step against
the model, a failure shrunk to a scenario that replays.

- :mod:`.generate` (pure): sequences drawn from the step kinds' own
  preconditions and the model, the same for the same seed;
- :mod:`.shrink` (pure): the smallest sequence that still fails the same
  way, by removing steps and keeping only valid plans;
- :mod:`.engine`: runs sequences on real VMs (each from a saved VM state,
  :mod:`harness.warm`, not a boot), shrinks what fails, writes it as TOML,
  and counts what was checked.
"""
