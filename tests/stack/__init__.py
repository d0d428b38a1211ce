"""The local multi-cluster test stack (see README.md in this folder)."""

from .launcher import ClusterEnv, Stack, StackEnv, StackError, VaultEnv, running_stack

__all__ = ["ClusterEnv", "Stack", "StackEnv", "StackError", "VaultEnv", "running_stack"]
