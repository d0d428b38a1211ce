"""The dispatch cycle and job lifecycle (layer 3: may use the core and the edges).

``Dispatcher`` takes queued jobs, routes them on a snapshot, assumes the placement,
creates the pod, tracks it from informer events, cleans up, fails over and re-attaches
after a restart. ``JobStore`` keeps job records where a restart finds them.
"""

from dispatcher.dispatching.dispatcher import Cache, Connection, Dispatcher
from dispatcher.dispatching.jobs import Attempt, Job, JobState, job_id_for
from dispatcher.dispatching.store import ConfigMapStore, JobStore, MemoryStore

__all__ = [
    "Attempt",
    "Cache",
    "ConfigMapStore",
    "Connection",
    "Dispatcher",
    "Job",
    "JobState",
    "JobStore",
    "MemoryStore",
    "job_id_for",
]
