"""describe_cpu_positions: HMP `info registers -a` text to one phrase per CPU
(the inputs are excerpts of QEMU 7.2's output, trimmed to the lines read)."""

from __future__ import annotations

from harness.qemu.vm import describe_cpu_positions

RESET_VECTOR = """
CPU#0
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
CS =f000 ffff0000 0000ffff 00009b00

CPU#1
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1
"""

LONG_MODE = """
CPU#0
RAX=0000000000000000 RBX=ffffffff82a0c940 RCX=0000000000000001
RIP=ffffffff81b3e8ef RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CPU#1
RIP=000000000431baa0 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
"""


def test_real_mode_cpus_are_named_as_firmware_and_halted_is_said() -> None:
    assert describe_cpu_positions(RESET_VECTOR) == [
        "CPU0 EIP=0000fff0 (not in long mode: firmware or boot loader)",
        "CPU1 EIP=0000fff0 (not in long mode: firmware or boot loader) halted",
    ]


def test_long_mode_below_the_kernel_text_is_flagged() -> None:
    assert describe_cpu_positions(LONG_MODE) == [
        "CPU0 RIP=ffffffff81b3e8ef halted",
        "CPU1 RIP=000000000431baa0 (below the kernel's text mapping)",
    ]


def test_crlf_lines_as_hmp_sends_them_through_qmp() -> None:
    assert describe_cpu_positions(LONG_MODE.replace("\n", "\r\n")) == (
        describe_cpu_positions(LONG_MODE))


def test_no_registers_no_positions() -> None:
    assert describe_cpu_positions("") == []
    assert describe_cpu_positions("CPU#0\nno registers here\n") == []
