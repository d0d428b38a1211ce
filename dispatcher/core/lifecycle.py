"""The job state machine: every (state, event) pair and what it leads to, in one table.

Pure: no I/O, no clock. ``transition(state, event)`` is the only place where the next state
of a job is decided; the dispatching layer feeds it events (what it routed, what the API
server answered, what the informers saw, what the timers found) and carries out the
actions it returns, in order. A pair missing from the table is illegal: the caller logs
and ignores it (a late or duplicated event must never move a job backwards).

States::

    QUEUED ──PLACED──► LAUNCHING ──CREATED / POD_PENDING──► PENDING ──POD_RUNNING──► RUNNING
      │                  │   ▲                                  │                      │
      │                  │   └─POD_ABSENT (create again, same   │                      │
      │                  │      name: never two pods)           │ MOVE (unschedulable) │
      │                  └─RELEASE (absent, retries spent)──┐   ▼                      │
      │◄──────────────────────────── RELEASE ───────────── MOVING ◄────────────────────┘ (ABANDON)
      │                                                      (pod being deleted)
      └─CANCEL─► CANCELLED ◄─POD_ABSENT/POD_DELETED─ CANCELLING ◄─CANCEL─ (any live state)

    finished: SUCCEEDED, FAILED, CANCELLED, REJECTED (never left; FORGET and LINGER_DUE only
    clean up what they left behind)

Write-ahead: a transition whose actions start with ``WRITE_RECORD`` is committed only once
the record is written (synchronously, with its resourceVersion, fenced by the leader
term); the side effects after it (``CREATE_POD``...) are carried out only then. So the
record names attempt N, its cluster and its pod before that pod can exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "FINISHED",
    "LIVE",
    "TABLE",
    "Action",
    "Event",
    "State",
    "Transition",
    "transition",
]


class State(StrEnum):
    QUEUED = "queued"  # no attempt alive: waiting for a cluster with room
    LAUNCHING = "launching"  # attempt recorded; its pod may or may not exist yet
    PENDING = "pending"  # its pod exists, not running yet
    RUNNING = "running"
    CANCELLING = "cancelling"  # cancel accepted; waiting for the pod to be gone
    MOVING = "moving"  # the attempt's pod is being deleted; then the job queues again
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # no cluster could ever run it

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.REJECTED})
#: States with an attempt whose pod may exist.
LIVE = frozenset({State.LAUNCHING, State.PENDING, State.RUNNING, State.CANCELLING, State.MOVING})


class Event(StrEnum):
    # routing (the cycle)
    PLACED = "placed"  # a cluster was chosen: attempt N goes there as pod P
    REJECTED = "rejected"  # no cluster can ever run it
    # the create's answer
    CREATED = "created"  # the API server answered the create (or 409: the pod exists)
    CREATE_REFUSED = "create_refused"  # a permanent error (400, 403, 404 namespace, 422)
    CREATE_UNCERTAIN = "create_uncertain"  # timeout, 5xx, 429, unreachable: may exist
    # what was seen of the attempt's pod (informer events or a read)
    POD_PENDING = "pod_pending"
    POD_RUNNING = "pod_running"
    POD_SUCCEEDED = "pod_succeeded"
    POD_FAILED = "pod_failed"
    POD_TERMINATING = "pod_terminating"  # deletionTimestamp set
    POD_DELETED = "pod_deleted"  # it existed and is gone
    POD_ABSENT = "pod_absent"  # a read of a reachable cluster found none
    # decisions of timers and of the dispatcher
    RELEASE = "release"  # the attempt's pod is confirmed gone: queue the next attempt
    GIVE_UP = "give_up"  # no attempts (or create retries) left; the pod is confirmed gone
    MOVE = "move"  # unschedulable too long: delete the pod, then queue again
    ABANDON = "abandon"  # its cluster is unreachable and the policy allows a relaunch
    FAIL = "fail"  # a timer or an observation ends the job as failed (startup timeout...)
    NOTE = "note"  # a condition changed (its cluster unreachable, back): recorded, no move
    # the client
    CANCEL = "cancel"
    FORGET = "forget"  # acknowledged or expired: remove what is left
    LINGER_DUE = "linger_due"  # a finished pod's linger time is over


class Action(StrEnum):
    END_ATTEMPT = "end_attempt"  # the current attempt goes to the history
    WRITE_RECORD = "write_record"  # synchronous, versioned, fenced; nothing after it on failure
    CREATE_POD = "create_pod"
    DELETE_POD = "delete_pod"  # the current attempt's pod, now
    CLEANUP_POD = "cleanup_pod"  # as on_finish_action says (possibly after a linger)
    RESOLVE_LATER = "resolve_later"  # read the pod after a backoff and feed what is seen
    DELETE_RECORD = "delete_record"


@dataclass(frozen=True, slots=True)
class Transition:
    target: State
    actions: tuple[Action, ...] = ()


_W = Action.WRITE_RECORD
_LAUNCHED = (State.LAUNCHING, State.PENDING, State.RUNNING)
_STOPPING = (State.CANCELLING, State.MOVING)


def _table() -> dict[tuple[State, Event], Transition]:
    t: dict[tuple[State, Event], Transition] = {}

    def put(
        states: tuple[State, ...], event: Event, target: State | None, *actions: Action
    ) -> None:
        for state in states:
            t[state, event] = Transition(target or state, actions)

    # Routing.
    put((State.QUEUED,), Event.PLACED, State.LAUNCHING, _W, Action.CREATE_POD)
    put((State.QUEUED,), Event.REJECTED, State.REJECTED, _W)
    # The create's answer. While stopping, a pod that got created after all is deleted.
    put((State.LAUNCHING,), Event.CREATED, State.PENDING, _W)
    put(_STOPPING, Event.CREATED, None, Action.DELETE_POD)
    # The watch can tell of the pod before the create's answer arrives.
    put((State.PENDING, State.RUNNING), Event.CREATED, None)
    put((State.LAUNCHING,), Event.CREATE_REFUSED, State.FAILED, _W)
    put((State.CANCELLING,), Event.CREATE_REFUSED, State.CANCELLED, _W)
    put((State.MOVING,), Event.CREATE_REFUSED, State.QUEUED, Action.END_ATTEMPT, _W)
    put((State.LAUNCHING, *_STOPPING), Event.CREATE_UNCERTAIN, None, Action.RESOLVE_LATER)
    # Observations of the attempt's pod.
    put((State.LAUNCHING,), Event.POD_PENDING, State.PENDING, _W)
    put((State.PENDING,), Event.POD_PENDING, None)
    put((State.LAUNCHING, State.PENDING), Event.POD_RUNNING, State.RUNNING, _W)
    put((State.RUNNING,), Event.POD_RUNNING, None)
    put(_LAUNCHED, Event.POD_SUCCEEDED, State.SUCCEEDED, _W, Action.CLEANUP_POD)
    put(_LAUNCHED, Event.POD_FAILED, State.FAILED, _W, Action.CLEANUP_POD)
    put(_LAUNCHED, Event.POD_TERMINATING, None)
    # A pod seen alive while stopping was created after our delete: delete it again.
    for seen in (Event.POD_PENDING, Event.POD_RUNNING, Event.POD_SUCCEEDED, Event.POD_FAILED):
        put(_STOPPING, seen, None, Action.DELETE_POD)
    put(_STOPPING, Event.POD_TERMINATING, None)
    # Gone: deleted behind our back ends the job (never a silent second run); the create
    # that never happened is sent again under the same name.
    put(_LAUNCHED, Event.POD_DELETED, State.FAILED, _W)
    put((State.LAUNCHING,), Event.POD_ABSENT, None, Action.CREATE_POD)
    put((State.PENDING, State.RUNNING), Event.POD_ABSENT, State.FAILED, _W)
    put((State.CANCELLING,), Event.POD_DELETED, State.CANCELLED, _W)
    put((State.CANCELLING,), Event.POD_ABSENT, State.CANCELLED, _W)
    # MOVING + gone: the dispatcher decides RELEASE or GIVE_UP (attempts left or not).
    put((State.LAUNCHING, State.MOVING), Event.RELEASE, State.QUEUED, Action.END_ATTEMPT, _W)
    put((State.QUEUED, State.LAUNCHING, State.MOVING), Event.GIVE_UP, State.FAILED, _W)
    # Timers.
    put((State.PENDING,), Event.MOVE, State.MOVING, _W, Action.DELETE_POD)
    put((*_LAUNCHED, State.MOVING), Event.ABANDON, State.QUEUED, Action.END_ATTEMPT, _W)
    # A job the dispatcher fails (startup timeout) has a pod that may still start: it goes,
    # whatever on_finish_action keeps (that is about pods that ran to their end).
    put(_LAUNCHED, Event.FAIL, State.FAILED, _W, Action.DELETE_POD)
    put(tuple(LIVE), Event.NOTE, None, _W)
    # The client.
    put((State.QUEUED,), Event.CANCEL, State.CANCELLED, _W)
    put((*_LAUNCHED, State.MOVING), Event.CANCEL, State.CANCELLING, _W, Action.DELETE_POD)
    put((State.CANCELLING, *FINISHED), Event.CANCEL, None)
    put(tuple(FINISHED), Event.FORGET, None, Action.DELETE_RECORD)
    put(tuple(FINISHED), Event.LINGER_DUE, None, Action.DELETE_POD)
    # Late observations of a finished job's pod change nothing (cleanup is separate).
    for late in (
        Event.CREATED,
        Event.CREATE_REFUSED,
        Event.CREATE_UNCERTAIN,
        Event.POD_PENDING,
        Event.POD_RUNNING,
        Event.POD_SUCCEEDED,
        Event.POD_FAILED,
        Event.POD_TERMINATING,
        Event.POD_DELETED,
        Event.POD_ABSENT,
    ):
        put(tuple(FINISHED), late, None)
    return t


#: Every legal (state, event) pair. Anything else is illegal and ignored.
TABLE: dict[tuple[State, Event], Transition] = _table()


def transition(state: State, event: Event) -> Transition | None:
    """What ``event`` does to a job in ``state``; ``None`` when the pair is illegal."""
    return TABLE.get((state, event))
