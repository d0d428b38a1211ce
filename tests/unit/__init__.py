"""Unit tests: the pure core, settings and CLI; no cluster, no network."""
