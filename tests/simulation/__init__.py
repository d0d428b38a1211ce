"""Deterministic simulation of the dispatcher: in-memory clusters and store, a fake clock,
a hand-driven task runner and injected faults (see ``world`` and ``harness``).

Nothing here does I/O, starts a thread or reads the real clock: a failing schedule replays
exactly.
"""
