"""The sweeper (every minute): the backstop that finds every job and task past its
state's deadline through the sparse `by_deadline` index, and moves it on. Each state's
remedy belongs to its capability; this module only composes them, so it sits above all of
them. It also finishes work a crash left undone between a commit and its side effects.
"""
from __future__ import annotations

from datetime import datetime

from aws_lambda_powertools import Logger

from chalicelib.context import Ports
from chalicelib.jobs import states
from chalicelib.jobs.lifecycle import apply, request_verification, retry_or_fail
from chalicelib.market import leases
from chalicelib.market.job_leases import extend
from chalicelib.market.workers import observe
from chalicelib.models import Attempt, AttemptResult, Job, State
from chalicelib.settlement.payments import release_due
from chalicelib.status import board

logger = Logger(child=True)


def sweep(ports: Ports) -> list[tuple[str, str]]:
    """Move every job and task whose deadline passed; returns (job or task, action) pairs."""
    repaired = [(key, "status_counted") for key in board.repair_status(ports, ports.clock())]
    return sweep_jobs(ports) + leases.sweep(ports) + repaired


def sweep_jobs(ports: Ports) -> list[tuple[str, str]]:
    """Move every job whose deadline passed; returns (job id, action) pairs."""
    now = ports.clock()
    actions = []
    for job in ports.store.due(now):
        action = sweep_job(ports, job, now)
        if action:
            actions.append((job.job_id, action))
    return actions


def sweep_job(ports: Ports, job: Job, now: datetime) -> str | None:
    """The remedy for one job past its deadline, by state; the action taken, or None."""
    job_class = ports.catalog.job_class(job.kind)
    if (job.manifest.deadline and job.manifest.deadline <= now
            and states.can_move(job.state, State.FAILED)):
        def expire(j: Job):
            if j.state.terminal:
                return None
            failed, event = states.transition(j, State.FAILED, at=now, reason="deadline_passed",
                                              data={"reason": "deadline_passed"})
            return failed, [event], []
        return "failed" if apply(ports, job, expire) else None
    if job.state in (State.ASSIGNED, State.RUNNING):
        if extend(ports, job, now) is not None:
            return "lease_extended"

        def plan(j: Job):
            if j.state not in (State.ASSIGNED, State.RUNNING) or not _overdue(j, now):
                return None
            lost = Attempt(job_id=j.job_id, number=j.attempt, worker=j.worker or "unknown",
                           state="lost", finished_at=now, reason="lease_expired")
            return retry_or_fail(j, job_class, at=now, reason="lease_expired",
                                 event="lease.expired",
                                 data={"attempt": j.attempt, "state": j.state.value},
                                 failed_attempt=lost)
        moved = apply(ports, job, plan)
        if moved is not None:    # an offer left lapsing, or a lease that went quiet
            observe(ports.workers, job.worker, job.kind,
                    "lost" if job.state == State.ASSIGNED else "timeout", now=now)
        return moved.state.value if moved else None
    if job.state == State.SUBMITTED:
        return _reverify(ports, job, now)
    if job.state == State.VERIFIED and job.escrow:
        return "settlement.due" if release_due(ports, job) else None
    if job.state == State.REQUESTED:
        def unfunded(j: Job):
            if j.state != State.REQUESTED or not _overdue(j, now):
                return None
            failed, event = states.transition(j, State.FAILED, at=now, reason="funding_timeout",
                                              data={"reason": "funding_timeout"})
            return failed, [event], []
        return "failed" if apply(ports, job, unfunded) else None
    logger.warning("job overdue with no automatic remedy",
                   extra={"job_id": job.job_id, "state": job.state.value})
    return None


def _reverify(ports: Ports, job: Job, now: datetime) -> str | None:
    """The verification request was lost (or its handler kept failing): ask again."""
    attempt = next((a for a in ports.store.view(job.job_id).attempts
                    if a.number == job.attempt and a.output), None)
    if attempt is None:
        return None

    def plan(j: Job):
        if j.state != State.SUBMITTED or j.attempt != attempt.number or not _overdue(j, now):
            return None
        noted, event = states.note(j, "verification.requested", at=now,
                                   data={"attempt": attempt.number, "by": "sweeper"})
        return noted.model_copy(update={"next_deadline": states.next_deadline(
            noted, noted.state, now)}), [event], []

    moved = apply(ports, job, plan)
    if moved:
        request_verification(ports, moved, AttemptResult(
            job_id=job.job_id, attempt=attempt.number, worker=attempt.worker,
            output=attempt.output, duration_ms=0).model_dump(mode="json"))
    return "verification.requested" if moved else None


def _overdue(job: Job, now: datetime) -> bool:
    return job.next_deadline is not None and job.next_deadline <= now
