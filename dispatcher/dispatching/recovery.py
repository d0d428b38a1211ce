"""Re-attaching after a restart (or an election): records first, then every managed pod.

Records come first (a pod's job always has a record before the pod exists), then, per
listed cluster: a pod with no record is an orphan left by a crash between a record's
deletion and its pod's, and is deleted; pods of attempts that are not their job's current
one are deleted before anything else is done for that job; the current attempt's pod is
observed; a live attempt whose pod is not in a listed cluster's cache is resolved by
reading the pod (the cache may lag the apiserver): if the read finds none, the state
machine decides (``POD_ABSENT``: a create that never happened is sent again under the same
name; a pod deleted while we were down fails its job, never runs it twice). A cluster
that could not be listed is marked unreachable: its jobs wait for it to be seen again.

I/O: the record store's list (through the ``Recorder``) and the cache's pod lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog

from dispatcher.core.lifecycle import LIVE
from dispatcher.dispatching.jobs import Job
from dispatcher.dispatching.mailbox import RESOLVE, Mail, Mailboxes
from dispatcher.dispatching.pod_events import PodEvents
from dispatcher.dispatching.pods import PodActions
from dispatcher.dispatching.ports import Cache
from dispatcher.dispatching.recording import Recorder
from dispatcher.dispatching.table import JobTable
from dispatcher.dispatching.tracking import (
    Reachability,
    observation_mail,
    pod_identity,
    same_attempt,
)

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["reattach"]


def reattach(
    recorder: Recorder,
    table: JobTable,
    cache: Cache,
    clusters: Iterable[str],
    *,
    mail: Mailboxes,
    pods: PodActions,
    events: PodEvents,
    reach: Reachability,
    clock: Callable[[], float],
) -> None:
    """Rebuild the job table from the records, judge every managed pod, then go active."""
    for item in recorder.list():
        try:
            table.put(Job.from_record(item.record, item.version))
        except (KeyError, ValueError, TypeError) as exc:
            log.error("job.record_unreadable", job_id=item.record.get("id"), error=str(exc))
    adopted = 0
    for cluster in clusters:
        if not cache.synced(cluster):
            log.warning("reattach.cluster_unavailable", cluster=cluster)
            reach.lost(cluster, clock())
            continue
        present: set[tuple[str, int]] = set()
        for pod in cache.managed_pods(cluster):
            identity = pod_identity(pod)
            if identity is None:
                name = (pod.get("metadata") or {}).get("name")
                log.warning("reattach.pod_unreadable", cluster=cluster, pod=name)
                continue
            owner = table.get(identity.job_id)
            if owner is None:
                log.warning("reattach.orphan_deleted", cluster=cluster, pod=identity.name)
                pods.delete_stale(cluster, identity.namespace, identity.name)
            elif not same_attempt(owner.attempt, identity, cluster):
                events.stale(owner, cluster, pod)
            else:
                present.add((owner.id, identity.attempt))
                if not owner.state.finished:
                    adopted += 1
                    mail.post(owner.id, observation_mail(pod, seen_deleted=False))
        # Not in the cache's list: gone, or not seen yet (the informer lags the apiserver).
        # Only a read says which; the state machine decides on what the read finds.
        for job in table.select(_live_on(cluster, present)):
            mail.post(job.id, Mail(RESOLVE))
    events.active = True
    log.info("reattach.done", jobs=len(table), pods_adopted=adopted)


def _live_on(cluster: str, present: set[tuple[str, int]]) -> Callable[[Job], bool]:
    """Live jobs whose current attempt is on ``cluster`` and whose pod is not ``present``."""

    def missing(job: Job) -> bool:
        attempt = job.attempt
        return (
            job.state in LIVE
            and attempt is not None
            and attempt.cluster == cluster
            and (job.id, attempt.number) not in present
        )

    return missing
