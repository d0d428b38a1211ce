"""``Secret``: KubernetesPodOperator's ``Secret`` without the cncf.kubernetes provider;
pure data, no I/O, no Airflow.

``DispatcherPodOperator(secrets=[...])`` takes this class and the provider's alike (it
reads them by attribute): a DAG keeps its ``Secret(...)`` calls and changes the import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Secret"]


@dataclass(frozen=True, slots=True)
class Secret:
    """A Kubernetes Secret given to the task's container, as the provider's ``Secret``.

    - ``Secret("env", "DB_PASSWORD", "db", "password")``: the variable ``DB_PASSWORD``
      from key ``password`` of Secret ``db`` (an env target is upper-cased, as the
      provider does);
    - ``Secret("env", None, "db")``: every key of ``db`` as a variable;
    - ``Secret("volume", "/etc/tls", "tls")``: ``tls`` mounted read-only at
      ``/etc/tls``; ``items`` (``k8s.V1KeyToPath`` or ``{"key": ..., "path": ...}``)
      picks keys and their file names.

    The Secret must exist in the namespace the task runs in, on whichever cluster the
    dispatcher picks.
    """

    deploy_type: Literal["env", "volume"]
    deploy_target: str | None
    secret: str
    key: str | None = None
    items: Sequence[Any] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.deploy_type not in ("env", "volume"):
            raise ValueError(
                f"Secret {self.secret!r}: deploy_type must be 'env' or 'volume', "
                f"not {self.deploy_type!r}"
            )
        if not isinstance(self.secret, str) or not self.secret:
            raise ValueError("Secret: secret must name a Kubernetes Secret")
        if self.key is not None and self.deploy_target is None:
            raise ValueError(
                f"Secret {self.secret!r}: key {self.key!r} needs a deploy_target "
                "(the variable to set)"
            )
        if self.deploy_type == "volume" and not self.deploy_target:
            raise ValueError(f"Secret {self.secret!r}: a volume needs a mount path")
        if self.deploy_type == "env" and self.items:
            raise ValueError(f"Secret {self.secret!r}: items are for volumes only")
        if self.deploy_type == "env" and self.deploy_target is not None:
            object.__setattr__(self, "deploy_target", self.deploy_target.upper())
        object.__setattr__(self, "items", tuple(self.items or ()))
