"""The job state machine: the transition table, transition/note, and next_deadline."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.aws.store import stamp
from chalicelib.errors import Conflict, IllegalTransition
from chalicelib.jobs.states import ALLOWED, DEFAULT_EVENT, next_deadline, note, transition
from chalicelib.models import TERMINAL, Job, Manifest, State

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
TIMEOUTS = {State.ASSIGNED: 3600, State.RUNNING: 300}


def make_job(state: State = State.REQUESTED, *, deadline: datetime | None = None,
             timeouts: dict | None = None, version: int = 1) -> Job:
    return Job(job_id="job-test1", kind="media_probe", state=state, version=version,
               manifest=Manifest(kind="media_probe", input_uri="s3://bucket-a/key",
                                 deadline=deadline),
               payment_policy="none", max_attempts=3, correlation_id="c-1", source="http",
               created_at=NOW, updated_at=NOW,
               timeouts_s=dict(TIMEOUTS) if timeouts is None else timeouts)


# -- the whole table ------------------------------------------------------------------------
PAIRS = list(itertools.product(State, State))


@pytest.mark.parametrize("source,target", PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_every_pair_follows_the_table(source, target):
    job = make_job(source, version=4)
    at = NOW + timedelta(minutes=5)
    if target in ALLOWED[source]:
        moved, event = transition(job, target, at=at)
        assert moved.state == target
        assert moved.version == 5
        assert moved.updated_at == at
        assert (event.seq, event.type, event.state) == (5, DEFAULT_EVENT[target], target)
        assert (event.job_id, event.correlation_id, event.at) == ("job-test1", "c-1", at)
        assert job.state == source and job.version == 4   # the input is not mutated
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(job, target, at=at)
        err = info.value
        assert isinstance(err, Conflict)
        assert err.status == 409 and err.reason == "illegal_transition"
        assert err.details == {"from": source.value, "to": target.value}
        assert source.value in err.message and target.value in err.message


def test_table_covers_every_state_and_every_target_has_a_default_event():
    assert set(ALLOWED) == set(State)
    for targets in ALLOWED.values():
        assert targets <= set(DEFAULT_EVENT)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_allow_nothing(terminal):
    assert terminal.terminal
    assert ALLOWED[terminal] == frozenset()


@pytest.mark.parametrize("source,target,allowed", [
    (State.REQUESTED, State.FUNDED, True),
    (State.REQUESTED, State.ASSIGNED, True),
    (State.REQUESTED, State.REJECTED, True),
    (State.REQUESTED, State.CANCELLED, True),
    (State.RUNNING, State.CANCELLED, False),
    (State.VERIFIED, State.SETTLED, True),
    (State.RETRYING, State.ASSIGNED, True),
    (State.RUNNING, State.SUBMITTED, True),
    (State.SUBMITTED, State.RUNNING, False),
    (State.VERIFIED, State.FAILED, True),      # the deadline passed unpaid: reclaimed
    (State.VERIFIED, State.ASSIGNED, False),
    (State.DISPUTED, State.SETTLED, True),
    *[(State.SETTLED, t, False) for t in State],
])
def test_table_matches_design(source, target, allowed):
    assert (target in ALLOWED[source]) is allowed


def test_custom_event_name_data_and_changes():
    job = make_job(State.VERIFIED)
    moved, event = transition(job, State.SETTLED, at=NOW, event="settlement.skipped",
                              data={"payment_policy": "none"}, reason="done")
    assert event.type == "settlement.skipped"
    assert event.data == {"payment_policy": "none"}
    assert moved.reason == "done"


def test_note_keeps_state_and_bumps_version():
    job = make_job(State.RUNNING, version=7)
    noted, event = note(job, "output.uploaded", at=NOW, data={"k": 1})
    assert noted.state == State.RUNNING
    assert noted.version == 8
    assert (event.seq, event.type, event.state, event.data) == (8, "output.uploaded",
                                                                 State.RUNNING, {"k": 1})
    again, event2 = note(noted, "x", at=NOW)
    assert (again.version, event2.seq) == (9, 9)


# -- next_deadline ---------------------------------------------------------------------------
def test_next_deadline_uses_the_state_timeout():
    assert next_deadline(make_job(), State.ASSIGNED, NOW) == NOW + timedelta(seconds=3600)
    assert next_deadline(make_job(), State.RUNNING, NOW) == NOW + timedelta(seconds=300)


def test_next_deadline_is_capped_by_the_client_deadline():
    soon = NOW + timedelta(seconds=60)
    late = NOW + timedelta(days=1)
    assert next_deadline(make_job(deadline=soon), State.ASSIGNED, NOW) == soon
    assert next_deadline(make_job(deadline=late), State.ASSIGNED, NOW) == NOW + timedelta(hours=1)
    # no timeout for the state: the client deadline alone
    assert next_deadline(make_job(deadline=late), State.VERIFIED, NOW) == late


@pytest.mark.parametrize("target", sorted(TERMINAL))
def test_next_deadline_is_none_for_terminal_targets(target):
    job = make_job(deadline=NOW + timedelta(hours=1),
                   timeouts={s: 10 for s in State})
    assert next_deadline(job, target, NOW) is None


def test_next_deadline_is_none_when_nothing_applies():
    assert next_deadline(make_job(timeouts={}), State.ASSIGNED, NOW) is None
    assert next_deadline(make_job(), State.VERIFIED, NOW) is None


def test_transition_sets_next_deadline_and_clears_it_when_terminal():
    assigned, _ = transition(make_job(), State.ASSIGNED, at=NOW)
    assert assigned.next_deadline == NOW + timedelta(hours=1)
    failed, _ = transition(assigned, State.FAILED, at=NOW)
    assert failed.next_deadline is None


def test_stamp_is_fixed_width_and_sorts_like_time():
    a = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    b = a + timedelta(microseconds=1)
    assert stamp(a) == "2026-01-02T03:04:05.000006Z"
    assert len(stamp(a)) == len(stamp(b)) and stamp(a) < stamp(b)


# Sort keys must be UTC: a stamp that kept the wall-clock time and appended "Z" would misplace
# next_deadline returns the client's deadline as given (e.g. +02:00), and the store writes
# stamp(job.next_deadline) into the `due` index, so such a job is stamped 2 hours late and
# the sweeper's `next_deadline <= stamp(now)` query finds it 2 hours after its deadline.
def test_stamp_of_a_client_deadline_with_an_offset_is_utc():
    deadline = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))  # 10:30Z
    moved, _ = transition(make_job(deadline=deadline), State.ASSIGNED, at=NOW - timedelta(hours=2))
    assert moved.next_deadline == deadline
    assert stamp(moved.next_deadline) == "2026-03-01T10:30:00.000000Z"
