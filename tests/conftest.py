"""Shared pytest configuration: the test stack's fixtures are available everywhere."""

pytest_plugins = ["tests.stack.fixtures"]
