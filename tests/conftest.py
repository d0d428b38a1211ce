"""Shared pytest configuration: the test stack's fixtures are available everywhere."""

from __future__ import annotations

import os
import random

import pytest

pytest_plugins = ["tests.stack.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # One random fault-campaign seed per session, chosen before pytest-xdist starts its
    # workers (they inherit the environment), so every worker collects the same test ids.
    os.environ.setdefault("KD_CAMPAIGN_SEED", str(random.SystemRandom().randrange(1, 2**31)))
