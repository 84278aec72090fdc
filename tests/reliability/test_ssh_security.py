"""SSH to a real guest: quoting, pinning, timeouts, reconnection."""

from __future__ import annotations

import pytest

from harness.errors import VMError, WaitTimeout
from harness.guest.ssh import GuestShell
from harness.image.keys import generate_keypair

pytestmark = [pytest.mark.vm]

NASTY = ["'; touch /tmp/pwned; echo '", "$(touch /tmp/pwned2)", "`id`", "a b\tc", "x;y&&z|w",
         "\"quoted\"", "$HOME", "-n"]


@pytest.mark.memhp_machine(memory="1G,slots=2,maxmem=2G", numa="512M,512M")
def test_ssh_quoting_pinning_timeout_reconnect(memhp_vm) -> None:
    vm = memhp_vm
    # quoting: parameters reach the command verbatim, nothing is executed
    out = vm.ssh(["printf", "%s\\n", *NASTY]).stdout.splitlines()
    assert out == NASTY
    assert vm.ssh(["ls", "/tmp/pwned", "/tmp/pwned2"], check=False).status != 0
    # a wrong pinned host key is refused (RejectPolicy, never auto-added)
    _, other = generate_keypair("impostor")
    key = vm.guest_keys.client_key_path
    shell = GuestShell("127.0.0.1", vm.config.ssh_port, "root", key, other, connect_timeout=20)
    with pytest.raises(VMError, match="host key"):
        shell.connect()
    # a command past its timeout raises WaitTimeout naming it
    with pytest.raises(WaitTimeout, match="sleep"):
        vm.shell.run(["sleep", "30"], timeout=1.0)
    # a dropped transport is reconnected once, transparently
    vm.shell._client.get_transport().close()
    assert vm.ssh(["echo", "back"]).stdout.strip() == "back"
    # non-zero exit raises with the command in the message
    with pytest.raises(VMError, match="false"):
        vm.ssh(["false"])
