"""kube-dispatcher: routes batch tasks (mostly Airflow tasks needing GPUs) to the right
Kubernetes cluster.

Layers, innermost first (enforced by import-linter, see ``pyproject.toml``):
``errors`` < ``core`` (pure) < ``settings`` < edges (``credentials``, ``clusters``) <
``dispatching`` < interfaces (``api``, ``airflow``, ``cli``).
"""

__version__ = "0.1.0"
