"""The job state machine: one table of allowed transitions, and pure functions over it.

Nothing here does I/O. A transition returns the next job (version + 1) and the timeline
event that explains it; the store writes both in one transaction, conditional on the
version the caller started from, so racing handlers have exactly one winner.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping

from chalicelib.errors import IllegalTransition
from chalicelib.models import TERMINAL, Event, Job, State

S = State
NON_TERMINAL = frozenset(State) - TERMINAL

ALLOWED: Mapping[State, frozenset[State]] = {
    S.REQUESTED: frozenset({S.FUNDED, S.ASSIGNED, S.REJECTED, S.FAILED, S.CANCELLED}),
    S.FUNDED: frozenset({S.ASSIGNED, S.FAILED, S.CANCELLED}),
    S.ASSIGNED: frozenset({S.RUNNING, S.RETRYING, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUBMITTED, S.RETRYING, S.FAILED}),
    S.RETRYING: frozenset({S.ASSIGNED, S.FAILED}),
    S.SUBMITTED: frozenset({S.VERIFYING, S.FAILED}),
    S.VERIFYING: frozenset({S.VERIFIED, S.RETRYING, S.FAILED}),
    # Failed from verified: the client reclaimed after the deadline, the release never came.
    S.VERIFIED: frozenset({S.SETTLED, S.DISPUTED, S.FAILED}),
    S.DISPUTED: frozenset({S.SETTLED}),
    S.SETTLED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
}

# The event each transition writes unless the caller names a more precise one.
DEFAULT_EVENT: Mapping[State, str] = {
    S.FUNDED: "escrow.funded",
    S.ASSIGNED: "job.assigned",
    S.RUNNING: "execution.started",
    S.RETRYING: "job.retrying",
    S.SUBMITTED: "execution.completed",
    S.VERIFYING: "verification.started",
    S.VERIFIED: "validation.passed",
    S.DISPUTED: "dispute.opened",
    S.SETTLED: "job.settled",
    S.FAILED: "job.failed",
    S.CANCELLED: "job.cancelled",
    S.REJECTED: "job.rejected",
}

CANCELLABLE = frozenset(s for s, targets in ALLOWED.items() if S.CANCELLED in targets)


def can_move(source: State, target: State) -> bool:
    return target in ALLOWED[source]


def transition(job: Job, target: State, *, at: datetime, event: str | None = None,
               data: Mapping[str, Any] | None = None, **changes: Any) -> tuple[Job, Event]:
    """Move `job` to `target`, or raise IllegalTransition naming both states."""
    if not can_move(job.state, target):
        raise IllegalTransition(
            f"job {job.job_id} cannot go from {job.state} to {target}",
            details={"from": job.state.value, "to": target.value})
    changes["next_deadline"] = next_deadline(job, target, at)
    return _advance(job, target, at, event or DEFAULT_EVENT[target], data, changes)


def note(job: Job, event: str, *, at: datetime,
         data: Mapping[str, Any] | None = None) -> tuple[Job, Event]:
    """Record a fact on the timeline without a state change (still versioned, still ordered)."""
    return _advance(job, job.state, at, event, data, {})


def next_deadline(job: Job, target: State, at: datetime) -> datetime | None:
    """When the sweeper should look at the job again if nothing else moves it: the state's
    timeout from the job's class, capped by the client's deadline."""
    if target in TERMINAL:
        return None
    candidates = [job.manifest.deadline] if job.manifest.deadline else []
    if target in job.timeouts_s:
        candidates.append(at + timedelta(seconds=job.timeouts_s[target]))
    return min(candidates) if candidates else None


def _advance(job: Job, target: State, at: datetime, event: str,
             data: Mapping[str, Any] | None, changes: dict[str, Any]) -> tuple[Job, Event]:
    moved = job.model_copy(update={**changes, "state": target, "version": job.version + 1,
                                   "updated_at": at})
    return moved, Event(job_id=job.job_id, seq=moved.version, type=event, at=at, state=target,
                        correlation_id=job.correlation_id, data=dict(data or {}))
