"""The pytest plugin, tested with pytester (no VM boots here)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_markers_and_options_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["*memhp_machine*", "*kvm*", "*slow*", "*memhp_cold_boot*",
                                 "*needs_config*"])
    help_text = pytester.runpytest("--help").stdout.str()
    for opt in ("--memhp-kernel", "--memhp-disk", "--memhp-qemu", "--memhp-accel",
                "--memhp-artifacts", "--memhp-timeout-scale", "--memhp-shard",
                "--memhp-cold-boot"):
        assert opt in help_text


def test_settings_resolve_option_then_env_then_ini(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\nmemhp_timeout_scale = 3\nmemhp_accel = kvm\n")
    pytester.makepyfile("""
        def test_s(memhp_settings):
            print("SCALE", memhp_settings.timeout_scale, "ACCEL", memhp_settings.accel)
    """)
    monkeypatch.setenv("MEMHP_ACCEL", "tcg")
    out = pytester.runpytest("-s", "--memhp-timeout-scale=2").stdout.str()
    assert "SCALE 2.0 ACCEL tcg" in out  # option beats ini; env beats ini


def test_machine_setting_is_the_default_of_unpinned_tests(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """CI matrices over machine types: MEMHP_MACHINE=q35 moves the tests that
    do not pin a machine, and the model follows."""
    pytester.makepyfile("""
        import pytest

        def test_default(memhp_model):
            print("DEFAULT", memhp_model.layout.machine)

        @pytest.mark.memhp_machine(machine="pc")
        def test_pinned(memhp_model):
            print("PINNED", memhp_model.layout.machine)
    """)
    monkeypatch.setenv("MEMHP_MACHINE", "q35")
    out = pytester.runpytest("-s").stdout.str()
    assert "DEFAULT q35" in out and "PINNED pc" in out


@pytest.mark.parametrize(("args", "needle"), [
    (["--memhp-accel=hvf"], "use auto, kvm or tcg"),
    (["--memhp-timeout-scale=fast"], "not a number"),
    (["--memhp-shard=3/2"], "I/N"),
    (["--memhp-machine=microvm"], "use one of pc, q35, virt"),
    (["--memhp-kernel=/nonexistent"], "is not a file"),
    (["--memhp-disk=/etc/hostname"], "needs --memhp-ssh-key"),
    (["--memhp-cold-boot=maybe"], "use true or false"),
])
def test_bad_settings_are_usage_errors(pytester: pytest.Pytester, args: list[str],
                                       needle: str) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert needle in result.stderr.str()


def test_shards_partition_the_tests_deterministically(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("\n".join(f"def test_{i}():\n    pass\n" for i in range(20)))
    seen: list[set[str]] = []
    for i in (1, 2, 3):
        result = pytester.runpytest("--memhp-shard", f"{i}/3", "-v")
        seen.append({line.split("::")[1].split()[0] for line in result.outlines
                     if "PASSED" in line})
    assert set().union(*seen) == {f"test_{i}" for i in range(20)}
    assert sum(len(s) for s in seen) == 20
    again = pytester.runpytest("--memhp-shard", "2/3", "-v")
    assert {line.split("::")[1].split()[0] for line in again.outlines
            if "PASSED" in line} == seen[1]


def test_cold_boot_setting_from_option_env_and_ini(pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\nmemhp_cold_boot = true\n")
    pytester.makepyfile("""
        def test_s(memhp_settings):
            print("COLD", memhp_settings.cold_boot)
    """)
    assert "COLD True" in pytester.runpytest("-s").stdout.str()
    assert "COLD False" in pytester.runpytest("-s", "--memhp-cold-boot=false").stdout.str()
    monkeypatch.setenv("MEMHP_COLD_BOOT", "no")
    assert "COLD False" in pytester.runpytest("-s").stdout.str()


def test_boot_attempts_setting_and_its_bad_values(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_s(memhp_settings):
            print("ATTEMPTS", memhp_settings.boot_attempts)
    """)
    assert "ATTEMPTS 2" in pytester.runpytest("-s").stdout.str()
    assert "ATTEMPTS 3" in pytester.runpytest("-s", "--memhp-boot-attempts=3").stdout.str()
    for bad in ("0", "x", "11"):
        result = pytester.runpytest(f"--memhp-boot-attempts={bad}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert f"--memhp-boot-attempts={bad!r}: give a whole number from 1 to 10" in (
            result.stderr.str())


def test_a_retried_boot_is_a_warning_and_a_junit_property(pytester: pytest.Pytester) -> None:
    """FakeVM: a stand-in with the retried-boot record a real VM keeps (the
    real retry is tests/reliability/test_boot_retry.py); what is tested here
    is only that the plugin reports it on a passing test."""
    pytester.makeconftest("""
        import contextlib
        import pytest
        import harness.launch

        class FakeVM:
            scenario = None
            def __init__(self, name):
                self.config = type("C", (), {"name": name})()
                self.boot_retries = [{"attempt": 1, "when": "boot", "seconds": 240.0,
                                      "error": "timed out", "serial_tail": "",
                                      "cpus": "QEMU running; CPU0 RIP=ffffffff81000000"}]

        @contextlib.contextmanager
        def fake_launch_vm(scenario, guest, **kwargs):
            yield FakeVM(kwargs["name"]), None

        @pytest.fixture
        def memhp_resolved_guest():
            return None

        @pytest.fixture
        def memhp_accel():
            return type("A", (), {"accel": "tcg"})()

        @pytest.fixture(autouse=True)
        def _fake(monkeypatch):
            monkeypatch.setattr(harness.launch, "launch_vm", fake_launch_vm)
            monkeypatch.setattr("harness.pytest_plugin.fixtures._skip_for_missing_config",
                                lambda request, vm: None)
    """)
    pytester.makepyfile("""
        def test_boots(memhp_vm_factory):
            memhp_vm_factory()
    """)
    result = pytester.runpytest("--junitxml=out.xml", "-p", "no:xdist")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*MemhpBootRetry: test_boots: boot, boot attempt 1 hung "
                                 "after 240s (QEMU running; CPU0 RIP=ffffffff81000000)*"])
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="memhp.boot_retry.test_boots.1"' in xml
