"""TOML keys of the newer step kinds: workload, expect_splat, expect_refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.scenario import load_scenario


def load(tmp_path: Path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def test_workload_splats_and_refusals_parse(tmp_path: Path) -> None:
    s = load(tmp_path, '''
[machine]
memory = "4G,slots=2,maxmem=8G"
numa = "2G,2G"
[guest]
expect_splats = ["UBSAN: .*"]
[[step]]
add = "a:1G@1"
[[step]]
add = "b:1G@1"
[[step]]
add = "c:1G@1"
expect_refusal = "no free slots"
[[step]]
workload = "w0"
node = 1
size = "64M"
[[step]]
offline = "a"
expect_splat = ["page dumped because: unmovable page"]
''')
    assert s.expect_splats == ("UBSAN: .*",)
    assert [st.action for st in s.steps] == ["add", "add", "add", "workload", "offline"]
    assert s.steps[2].expect_refusal == "no free slots" and not s.steps[2].is_model_op
    assert s.steps[3].workload is not None and s.steps[3].workload.size == 64 << 20
    assert s.steps[4].expect_splat == ("page dumped because: unmovable page",)
    assert [op.id for op in s.model_ops()] == ["a", "b"]
    assert "no free slots" in s.expected_refusals()[2].qemu_message


@pytest.mark.parametrize("step, message", [
    ('workload = "w0"\nsize = "1000"', "multiple of 1M"),
    ('workload = "0w"', "workload id"),
    ('add = "a:1G@1"\nexpect_refusal = 3', "expect_refusal must be"),
    ('add = "a:1G@1"\nexpect_splat = "("', "not a regular expression"),
    ('offline = "a"\nexpect_refusal = true', "unknown key"),
])
def test_bad_keys_are_named(tmp_path: Path, step: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[[step]]\nadd = "a:1G@1"\n[[step]]\n{step}\n')


def test_lifecycle_steps_and_coldplug_parse(tmp_path: Path) -> None:
    s = load(tmp_path, '''
[machine]
memory = "4G,slots=4,maxmem=8G"
numa = "2G,2G"
coldplug = ["cold0:512M@0", "cold1:256M@1:0x180000000"]
[[step]]
online = "cold0"
[[step]]
migrate = true
[[step]]
pause = true
[[step]]
add = "h:256M@1"
[[step]]
remove = "cold1"
[[step]]
resume = true
[[step]]
reboot = true
[[step]]
remove = "h"
wait = false
[[step]]
reset = true
''')
    assert [d.id for d in s.machine.coldplug] == ["cold0", "cold1"]
    assert s.machine.coldplug[1].addr == 0x180000000
    assert [st.action for st in s.steps] == ["online", "migrate", "pause", "add", "remove",
                                             "resume", "reboot", "remove", "reset"]
    assert s.steps[4].wait and not s.steps[7].wait
    assert [d.id for d in s.predict().boot.dimms] == ["cold0", "cold1"]


@pytest.mark.parametrize("steps, message", [
    ('migrate = 1', "migrate must be true"),
    ('pause = true\n[[step]]\npause = true', "already paused"),
    ('resume = true', "not paused"),
    ('pause = true\n[[step]]\nonline = "a"', "needs the guest running"),
    ('pause = true\n[[step]]\nreboot = true', "needs the guest running"),
    ('pause = true\n[[step]]\nreset = true\n[[step]]\nmigrate = true', "has not booted"),
    ('pause = true', "ends paused"),
    ('pause = true\n[[step]]\nremove = "a"\n[[step]]\nmigrate = true',
     "does not migrate an unplug"),
    ('remove = "a"\nwait = false\n[[step]]\nonline = "a"', "followed by reset"),
    ('remove = "a"\nwait = false', "ends the run"),
    ('remove = "a"\nwait = "no"', "wait must be a bool"),
    ('online = "a"\nwait = false', "unknown key"),
    ('migrate = true\npolicy = "online"', "unknown key"),
])
def test_lifecycle_order_is_checked_at_input(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[[step]]\nadd = "a:1G@1"\n[[step]]\n{steps}\n')


@pytest.mark.parametrize("value, message", [
    ('"cold0:512M@0"', "coldplug must be a list"),
    ('["cold0"]', "not ID:SIZE@NODE"),
    ('["c:64G@0"]', "exceeds maxmem"),
    ('["c:512M@0", "c:512M@1"]', "already in use"),
    ('["a:512M@0"]', "already in use"),  # the step's hot-add reuses a cold id
])
def test_bad_coldplug_is_named(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[machine]\ncoldplug = {value}\n[[step]]\nadd = "a:1G@1"\n')
