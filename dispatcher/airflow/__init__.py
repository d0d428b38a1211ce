"""Airflow integration: ``DispatcherPodOperator`` (a KubernetesPodOperator stand-in),
``DispatcherJobOperator`` (KubernetesJobOperator's common use),
``DispatcherHook`` (the ``dispatcher`` connection type), ``DispatcherJobTrigger``, and
``Secret`` (KubernetesPodOperator's, without the cncf.kubernetes provider). The
``@task.dispatcher`` and ``@task.dispatcher_cmd`` decorators (``decorators``) are found
through ``airflow.sdk.task``.

Installed with the ``airflow`` extra (``pip install 'kube-dispatcher[airflow]'``). The
rest of the package never imports Airflow; this package imports only Airflow's public
API (``airflow.sdk``, ``airflow.exceptions``, ``airflow.triggers.base``, and the task
SDK's ``airflow.sdk.bases.decorator``, on which providers build task decorators).

Names are loaded on first use, so Airflow's providers manager can read
``get_provider_info`` without importing the operator.

Modules: ``provider`` (entry point data), ``connection`` (connection -> settings),
``parameters`` (KPO parameters -> task spec), ``progress`` (what to log, when a job is
done), ``hooks``, ``following`` (the worker's threads), ``aio`` and ``triggers`` (the
triggerer's side), ``operators``, ``decorators``, ``secret``, ``check`` (``dispatcher
airflow check``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.airflow.hooks import DispatcherHook
    from dispatcher.airflow.job import DispatcherJobOperator
    from dispatcher.airflow.operators import DispatcherJobFailed, DispatcherPodOperator
    from dispatcher.airflow.provider import get_provider_info
    from dispatcher.airflow.secret import Secret
    from dispatcher.airflow.triggers import DispatcherJobTrigger

__all__ = [
    "DispatcherHook",
    "DispatcherJobFailed",
    "DispatcherJobOperator",
    "DispatcherJobTrigger",
    "DispatcherPodOperator",
    "Secret",
    "get_provider_info",
]

_WHERE = {
    "DispatcherHook": "dispatcher.airflow.hooks",
    "DispatcherJobFailed": "dispatcher.airflow.operators",
    "DispatcherJobOperator": "dispatcher.airflow.job",
    "DispatcherJobTrigger": "dispatcher.airflow.triggers",
    "DispatcherPodOperator": "dispatcher.airflow.operators",
    "Secret": "dispatcher.airflow.secret",
    "get_provider_info": "dispatcher.airflow.provider",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
