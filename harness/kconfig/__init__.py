"""Kernel config validation for memory hotplug."""

from harness.kconfig.check import Finding, Report, check_config, check_values, online_policy
from harness.kconfig.source import parse_values, read_config

__all__ = ["Finding", "Report", "check_config", "check_values", "online_policy",
           "parse_values", "read_config"]
