"""The dispatch cycle and job lifecycle (layer 3: may use the core and the edges).

``Dispatcher`` routes queued jobs on a snapshot, writes each attempt ahead into the job's
record, creates the pod, tracks it from informer events through the state machine of
``dispatcher.core.lifecycle``, cleans up, fails over and re-attaches after a restart.
``KubernetesRecords`` keeps job records (``DispatchJob`` objects) where a restart or the
next leader finds them; ``LeaderElector`` holds the Lease whose term fences every write.
"""

from dispatcher.dispatching.dispatcher import Cache, Connection, Dispatcher
from dispatcher.dispatching.jobs import Attempt, Job, JobState, job_id_for
from dispatcher.dispatching.records import (
    Fence,
    KubernetesRecords,
    MemoryRecords,
    RecordStore,
    Stored,
)
from dispatcher.dispatching.runner import Runner, ThreadRunner

__all__ = [
    "Attempt",
    "Cache",
    "Connection",
    "Dispatcher",
    "Fence",
    "Job",
    "JobState",
    "KubernetesRecords",
    "MemoryRecords",
    "RecordStore",
    "Runner",
    "Stored",
    "ThreadRunner",
    "job_id_for",
]
