"""The reference model: pure, no I/O.

:mod:`.spec` (the machine and the operations), :mod:`.layout` (where
device memory lies), :mod:`.predict` (a plan, step by step),
:mod:`.kernel` (the guest kernel's memory blocks); each device kind's own
rules are in :mod:`harness.devices`, each machine's in
:mod:`harness.machines`.  This package re-exports nothing: import from the
module that defines a name, so that no import runs in a circle.
"""
