"""The job state machine, pair by pair: every (state, event) is either in the table, with a
target and actions that keep the lifecycle's promises, or illegal (and then ignored)."""

from __future__ import annotations

import itertools

import pytest

from dispatcher.core.lifecycle import (
    FINISHED,
    LIVE,
    TABLE,
    Action,
    Event,
    State,
    Transition,
    transition,
)

ALL_PAIRS = list(itertools.product(State, Event))
SIDE_EFFECTS = {Action.CREATE_POD, Action.DELETE_POD, Action.CLEANUP_POD, Action.DELETE_RECORD}


def test_the_table_names_only_real_states_and_events() -> None:
    assert set(TABLE) <= set(ALL_PAIRS)
    assert all(isinstance(t, Transition) for t in TABLE.values())


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=str)
def test_every_pair_is_decided_by_the_table_alone(state: State, event: Event) -> None:
    step = transition(state, event)
    assert step == TABLE.get((state, event))
    if step is None:
        return
    actions = step.actions
    # A state change is always written before anything else happens.
    if step.target is not state:
        assert Action.WRITE_RECORD in actions, (state, event)
    if Action.WRITE_RECORD in actions:
        write = actions.index(Action.WRITE_RECORD)
        assert all(actions.index(a) > write for a in actions if a in SIDE_EFFECTS)
    # A finished job never becomes unfinished, and nothing it does launches a pod.
    if state in FINISHED:
        assert step.target is state
        assert Action.CREATE_POD not in actions
        assert Action.WRITE_RECORD not in actions
    # A pod is created only by a job whose record names the attempt (LAUNCHING).
    if Action.CREATE_POD in actions:
        assert step.target is State.LAUNCHING
    # Ending an attempt queues the job (or fails it); it never keeps a live attempt.
    if Action.END_ATTEMPT in actions:
        assert step.target is State.QUEUED
        assert actions.index(Action.END_ATTEMPT) < actions.index(Action.WRITE_RECORD)


@pytest.mark.parametrize("state", sorted(FINISHED))
@pytest.mark.parametrize("event", list(Event))
def test_a_finished_job_never_changes_state(state: State, event: Event) -> None:
    step = transition(state, event)
    assert step is None or step.target is state


@pytest.mark.parametrize("state", [*sorted(LIVE), State.QUEUED])
def test_cancel_is_legal_in_every_unfinished_state(state: State) -> None:
    step = transition(state, Event.CANCEL)
    assert step is not None
    if state is State.QUEUED:
        assert step.target is State.CANCELLED
    else:
        assert step.target is State.CANCELLING
        if state is not State.CANCELLING:
            assert step.actions == (Action.WRITE_RECORD, Action.DELETE_POD)


def test_a_create_answered_after_a_cancel_deletes_the_pod_it_made() -> None:
    # The race of issue 11: cancel lands while the create is in flight.
    assert transition(State.LAUNCHING, Event.CANCEL) == Transition(
        State.CANCELLING, (Action.WRITE_RECORD, Action.DELETE_POD)
    )
    assert transition(State.CANCELLING, Event.CREATED) == Transition(
        State.CANCELLING, (Action.DELETE_POD,)
    )
    # ...and a failed create after a cancel ends it, never queues it again.
    refused = transition(State.CANCELLING, Event.CREATE_REFUSED)
    assert refused is not None
    assert refused.target is State.CANCELLED
    # A pod of the cancelled attempt seen alive is deleted again.
    for seen in (Event.POD_PENDING, Event.POD_RUNNING):
        step = transition(State.CANCELLING, seen)
        assert step is not None
        assert Action.DELETE_POD in step.actions


def test_an_uncertain_create_is_resolved_by_reading_never_by_guessing() -> None:
    step = transition(State.LAUNCHING, Event.CREATE_UNCERTAIN)
    assert step == Transition(State.LAUNCHING, (Action.RESOLVE_LATER,))
    # Absent on a reachable cluster: the same attempt is created again (same pod name).
    assert transition(State.LAUNCHING, Event.POD_ABSENT) == Transition(
        State.LAUNCHING, (Action.CREATE_POD,)
    )
    # Present: adopted.
    pending = transition(State.LAUNCHING, Event.POD_PENDING)
    assert pending is not None
    assert pending.target is State.PENDING


def test_a_permanent_create_error_fails_the_job_at_once() -> None:
    step = transition(State.LAUNCHING, Event.CREATE_REFUSED)
    assert step == Transition(State.FAILED, (Action.WRITE_RECORD,))


@pytest.mark.parametrize("state", [State.PENDING, State.RUNNING])
def test_a_pod_deleted_behind_our_back_fails_the_job_and_never_runs_it_again(
    state: State,
) -> None:
    for event in (Event.POD_DELETED, Event.POD_ABSENT):
        step = transition(state, event)
        assert step is not None
        assert step.target is State.FAILED
        assert Action.CREATE_POD not in step.actions


def test_a_job_moves_only_after_its_pod_is_gone() -> None:
    move = transition(State.PENDING, Event.MOVE)
    assert move == Transition(State.MOVING, (Action.WRITE_RECORD, Action.DELETE_POD))
    # While moving, nothing but the pod's disappearance (RELEASE) queues it again.
    queued_by = {
        e for e in Event if (t := transition(State.MOVING, e)) and t.target is State.QUEUED
    }
    assert queued_by == {Event.RELEASE, Event.ABANDON, Event.CREATE_REFUSED}
    assert transition(State.RUNNING, Event.MOVE) is None


def test_illegal_pairs_exist_and_are_reported_as_none() -> None:
    illegal = [pair for pair in ALL_PAIRS if pair not in TABLE]
    assert (State.QUEUED, Event.CREATED) in illegal
    assert (State.RUNNING, Event.PLACED) in illegal
    assert transition(State.QUEUED, Event.POD_RUNNING) is None
