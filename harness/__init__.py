"""memhp: a test harness for Linux memory hotplug on QEMU guests.

Layers (each importable and testable alone):

* :mod:`harness.model` -- the pure reference model of QEMU's x86 memory
  layout and of what the guest kernel makes of each DIMM (no I/O).
* :mod:`harness.image` -- builds and caches the default guest (kernel +
  initramfs) from Debian packages.
* :mod:`harness.qemu` -- QEMU argv (pure), accelerator probe, the VM
  process, the synchronous QMP facade.
* :mod:`harness.guest` -- SSH access and typed parsers of guest output.
* :mod:`harness.verify` -- compares QEMU, guest and model views.
* :mod:`harness.kconfig` -- kernel config validation.
* :mod:`harness.cli` -- the ``memhp`` command.
"""

__version__ = "0.1.0"
