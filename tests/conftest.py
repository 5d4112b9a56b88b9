"""Shared pytest configuration: fixtures live in tests/support/ and are loaded as plugins."""

pytest_plugins = [
    "tests.support.common",
    "tests.support.dcgm",
    "tests.support.prometheus",
    "tests.support.alertmanager",
    "tests.support.vllm",
]
