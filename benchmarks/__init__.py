"""Benchmarks; run each as `python -m benchmarks.<name>`."""

from __future__ import annotations

import os


def scratch_stack(state_dir: str, port_base: int) -> None:
    """Run on a stack of the benchmark's own unless the environment names one. Called from a
    benchmark's ``main``, never at import: importing a benchmark (as tests do) must not move
    the tests' stack."""
    os.environ.setdefault("KD_STACK_DIR", state_dir)
    os.environ.setdefault("KD_STACK_PORT_BASE", str(port_base))
