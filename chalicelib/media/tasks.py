"""Services for split jobs (transcodes): record the plan and its tasks, move each task
through its attempts and verification, and close the job when the assembled package passed.

The job stays `running` while its tasks run; each task changes with conditional writes of
its own, and an atomic counter tells exactly one verifier that the last task passed, which
then asks for the assembly. A task whose attempts run out fails the job with the reason.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from aws_lambda_powertools import Logger

from chalicelib.context import Ports
from chalicelib.errors import StaleVersion
from chalicelib.jobs import states
from chalicelib.jobs.attempts import promote_and_record
from chalicelib.jobs.lifecycle import apply, move_payee
from chalicelib.market import routing, workers
from chalicelib.media import profiles
from chalicelib.models import (
    Event,
    Job,
    Output,
    State,
    Task,
    TaskState,
    TranscodePlan,
    is_marketplace,
)
from chalicelib.settlement import pricing
from chalicelib.settlement.pricing import PriceAboveCeiling
from chalicelib.telemetry import metrics
from chalicelib.verification.policies import Verdict

logger = Logger(child=True)


def record_plan(ports: Ports, job: Job, plan: TranscodePlan, tasks: list[Task]) -> Job | None:
    """Put the plan on the job and its tasks beside it, then dispatch every unfinished task
    (a re-run planner finds the tasks of an earlier attempt and keeps what they did)."""
    now = ports.clock()
    summary = {"attempt": job.attempt, "segments": len(plan.segments),
               "renditions": [r["name"] for r in plan.renditions], "tasks": len(tasks),
               "audio": plan.has_audio, "split": plan.split,
               "command_template": plan.command_template}

    def note(j: Job):
        if j.state != State.RUNNING or j.attempt != job.attempt:
            return None
        planned = j.model_copy(update={"plan": plan})
        changes, data = {"plan": plan}, summary
        if j.escrow is not None and j.escrow.price is None:
            # The price is fixed now, from the probed source: the chain's assign carries it.
            try:
                price = pricing.price(planned, ports.catalog.job_class(j.kind))
            except PriceAboveCeiling as over:
                failed, event = states.transition(j, State.FAILED, at=now, reason=over.reason,
                                                  data=over.to_dict())
                return failed, [event], []
            changes["escrow"] = j.escrow.model_copy(update={"price": price})
            data = {**summary, "price": str(price), "symbol": j.escrow.symbol}
        noted, event = states.note(j, "segments.planned", at=now, data=data)
        return noted.model_copy(update=changes), [event], []

    moved = apply(ports, job, note)
    if moved is None or moved.state == State.FAILED:
        return None
    ports.tasks.create(tasks)
    stored = ports.tasks.list(job.job_id)
    dispatch(ports, [t for t in stored if t.state == TaskState.ASSIGNED])
    for task in stored:
        if task.state != TaskState.ASSIGNED:
            resume(ports, task)
    if stored and all(t.state == TaskState.PASSED for t in stored):
        request_assembly(ports, moved)
    return moved


def resume(ports: Ports, task: Task) -> None:
    """Drive an unfinished task of a re-planned job (the job's attempt was retried, e.g. by
    the sweeper): whatever message moved it last may be long gone."""
    if task.state == TaskState.ASSIGNED:
        send_task(ports, task)
    elif task.state == TaskState.RUNNING and is_marketplace(task.worker):
        pass                                     # a marketplace lease outlives the attempt
    elif task.state == TaskState.RUNNING:        # its worker is gone with the old attempt
        retry_or_fail(ports, task, reason="lease_lost", event="segment.lost", data={})
    elif task.state == TaskState.SUBMITTED:      # its check may have been lost
        ports.queues.send("checks", check_message(task))


def check_message(task: Task) -> dict:
    return {"type": "check", "job_id": task.job_id, "task_id": task.task_id,
            "attempt": task.attempt}


def dispatch(ports: Ports, tasks: list[Task]) -> None:
    """Send assigned tasks out, the renditions of one segment together: the pool's worker
    makes them from one decode of the segment, and a marketplace worker leases them together
    so the segment moves once. Each task keeps its own attempts and verdict, and a retry
    goes out alone."""
    for group in segment_groups(tasks):
        send_group(ports, group)


def segment_groups(tasks: list[Task]) -> list[list[Task]]:
    """Video tasks grouped by job and segment; any other task alone."""
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in tasks:
        key = str(task.index) if task.kind == "video" else f"{task.kind}:{task.task_id}"
        groups.setdefault((task.job_id, key), []).append(task)
    return list(groups.values())


def send_task(ports: Ports, task: Task) -> None:
    send_group(ports, [task])


def send_group(ports: Ports, group: list[Task]) -> None:
    """Hand assigned tasks of one segment to whoever the router picks for them: the pool's
    queue (one message), or offers the chosen marketplace worker takes with a lease
    (`leases.py`)."""
    fresh = []
    for task in group:
        if is_marketplace(task.worker) and task.deadline:
            ports.tasks.offer(task)              # offered already; restore its pointer
        else:
            fresh.append(task)
    if not fresh:
        return
    job = ports.store.get(fresh[0].job_id)
    worker, data = _route(ports, job, fresh)
    if is_marketplace(worker):
        deadline = ports.clock() + timedelta(seconds=ports.settings.offer_s)
        for task in fresh:
            offered = advance(ports, task, TaskState.ASSIGNED, "segment.offered",
                              {"attempt": task.attempt, "worker": worker,
                               "offer_expires_at": deadline.isoformat(), **data},
                              worker=worker, deadline=deadline)
            if offered:
                ports.tasks.offer(offered)
        return
    if data:
        fresh = [moved for task in fresh
                 if (moved := advance(ports, task, TaskState.ASSIGNED, "segment.routed",
                                      {"attempt": task.attempt, "worker": worker, **data}))]
    if fresh:
        ports.queues.send("segments", {"type": "tasks", "job_id": fresh[0].job_id,
                                       "tasks": [{"task_id": t.task_id, "attempt": t.attempt}
                                                 for t in fresh]})


def _route(ports: Ports, job: Job, group: list[Task]) -> tuple[str, dict]:
    """(worker, what to record) for one segment's tasks. Marketplace workers take video
    tasks; each segment is routed on its own, except where one worker must do them all: a
    challenge job's go to the worker it tests, and an escrow job's to its payee (the router
    chose it when the job was funded; the escrow pays one signer)."""
    job_class = ports.catalog.job_class(job.kind)
    pool = f"pool:{job_class.pool}"
    if group[0].kind != "video" or ports.workers is None:
        return pool, {}
    if job.challenge:
        return job.challenge, {"challenge": True,
                               "reason": "a challenge job's tasks go to the worker it tests"}
    if job.escrow:
        if is_marketplace(job.worker):
            return job.worker, {"reason": "the escrow pays this worker: it does every video "
                                          "task, or the client is refunded"}
        return pool, {}
    now = ports.clock()
    candidates = ports.workers.candidates(now)
    if not candidates:
        return pool, {}
    assignment = routing.route_segment(
        job_class, job, group, candidates,
        pool_price=profiles.default_profiles().pricing.compute_per_megapixel_second,
        heartbeat_ttl_s=ports.settings.heartbeat_ttl_s, now=now.timestamp(),
        region=ports.settings.region)
    return assignment.worker, {"reason": assignment.reason, "ranking": assignment.ranking}


def pinned(job: Job) -> bool:
    """Whether every video task of `job` must go to one worker (see `_route`)."""
    return bool(job.challenge) or (job.escrow is not None and is_marketplace(job.worker))


def observe(ports: Ports, task: Task, outcome: str) -> None:
    """What a marketplace worker's attempt at a task came to joins its reputation."""
    if is_marketplace(task.worker):
        job = ports.store.get(task.job_id)
        passed = outcome == "passed"
        workers.observe(ports.workers, task.worker, job.kind, outcome, now=ports.clock(),
                        runtime_s=task.runtime_s if passed else None,
                        units=float(routing.task_units(job, task)) if passed else 0.0)


def request_assembly(ports: Ports, job: Job) -> None:
    ports.queues.send("checks", {"type": "assemble", "job_id": job.job_id,
                                 "attempt": job.attempt})


def start(ports: Ports, job_id: str, task_id: str, attempt: int, worker: str, *,
          redelivered: bool) -> tuple[Job, Task] | None:
    """Mark the task running, or None when this delivery is stale. A redelivery that finds
    the task running means its worker died mid-segment: that attempt is lost, a new one sent."""
    job = ports.store.get(job_id)
    task = ports.tasks.get(job_id, task_id)
    if job.state.terminal or task.attempt != attempt or task.done:
        return None
    if task.state == TaskState.RUNNING and redelivered:
        retry_or_fail(ports, task, reason="lease_lost", event="segment.lost", data={})
        return None
    if task.state != TaskState.ASSIGNED or is_marketplace(task.worker):
        return None                  # offered to a marketplace worker meanwhile
    running = advance(ports, task, TaskState.RUNNING, "segment.started",
                       {"attempt": attempt, "worker": worker}, worker=worker)
    return (job, running) if running else None


def submit(ports: Ports, task: Task, outputs: list[Output], execution: dict) -> Task | None:
    submitted = advance(ports, task, TaskState.SUBMITTED, "segment.submitted",
                         {"attempt": task.attempt, **execution,
                          "outputs": [o.model_dump() for o in outputs]}, outputs=outputs,
                         deadline=None, runtime_s=execution.get("wall_s"))
    if submitted:
        ports.queues.send("checks", check_message(submitted))
    return submitted


def fail(ports: Ports, task: Task, reason: str, message: str) -> Task | None:
    return retry_or_fail(ports, task, reason=reason, event="segment.failed",
                         data={"message": message[:1000]})


def judged(ports: Ports, task: Task, verdict: Verdict, promoted: list[Output],
           after_pass: Callable[[Task], None] = lambda passed: None) -> Task | None:
    """Record the verifier's verdict on a submitted task; the last task to pass asks for
    the assembly. `after_pass` runs once the pass is committed (by the one check whose
    commit won) and before that request: the verifier places the passed task's outputs
    in its job's package there."""
    if not verdict.passed:
        observe(ports, task, "validation_failed")
        return retry_or_fail(ports, task, reason=verdict.reason or "validation_failed",
                             event="segment.rejected", data=verdict.as_event())
    passed = advance(ports, task, TaskState.PASSED, "segment.verified",
                      {"attempt": task.attempt, "worker": task.worker, **verdict.as_event()},
                      outputs=promoted)
    if passed:
        observe(ports, task, "passed")
        after_pass(passed)
    if passed and ports.tasks.count_passed(task.job_id) >= _total(ports, task.job_id):
        request_assembly(ports, ports.store.get(task.job_id))
    return passed


def retry_or_fail(ports: Ports, task: Task, *, reason: str, event: str, data: dict) -> Task | None:
    """A new attempt of this task alone (new path, other segments untouched) while attempts
    remain; otherwise the task fails and takes the job with it."""
    data = {**data, "attempt": task.attempt, "reason": reason, "worker": task.worker}
    job = ports.store.get(task.job_id)
    if job.escrow and job.worker == task.worker and is_marketplace(task.worker):
        move_payee(ports, job, reason=reason, failed=task.worker)   # caught, or lapsed
    tried = task.tried
    if is_marketplace(task.worker) and task.worker not in tried:
        tried = [*tried, task.worker]
    tag = {"job_id": task.job_id, "task": task.task_id}
    if task.attempt < task.max_attempts:
        retried = advance(ports, task, TaskState.ASSIGNED, event, data,
                           attempt=task.attempt + 1, outputs=[], worker=None, reason=reason,
                           tried=tried, deadline=None)
        if retried:
            _count_rejection(job, event, reason, tag)
            metrics.count("Retry", kind=job.kind, reason=reason, metadata=tag)
            send_task(ports, retried)
        return retried
    failed = advance(ports, task, TaskState.FAILED, event, data, reason=reason, tried=tried,
                      deadline=None)
    if failed:
        _count_rejection(job, event, reason, tag)
        now = ports.clock()

        def fail_job(j: Job):
            if j.state.terminal:
                return None
            moved, e = states.transition(j, State.FAILED, at=now, reason="segment_failed",
                                         data={"reason": "segment_failed", "task": task.task_id,
                                               "last": reason, "attempts": task.attempt})
            return moved, [e], []
        apply(ports, ports.store.get(task.job_id), fail_job)
    return failed


def _count_rejection(job: Job, event: str, reason: str, tag: dict) -> None:
    """A segment the verifier rejected counts as a validation failure of its job's class."""
    if event == "segment.rejected":
        metrics.count("ValidationFailed", kind=job.kind, reason=reason, metadata=tag)


def complete(ports: Ports, job: Job, output: Output, verdict: Verdict, *,
             execution: dict, signature: str | None) -> Job | None:
    """The assembled package was checked: the job passes submitted → verifying → verified
    (and settles at once without escrow; with escrow the settlement handler releases it)."""
    return promote_and_record(ports, job, output, verdict, execution=execution,
                              signature=signature)


def _total(ports: Ports, job_id: str) -> int:
    plan = ports.store.get(job_id).plan
    return plan.tasks_total if plan else 1 << 30


def advance(ports: Ports, task: Task, target: TaskState, event: str, data: dict,
             **changes) -> Task | None:
    """One conditional write of the task and its timeline entry; None when another
    delivery moved it first."""
    now = ports.clock()
    moved = task.model_copy(update={**changes, "state": target, "version": task.version + 1,
                                    "updated_at": now})
    entry = Event(job_id=task.job_id, seq=moved.version, type=event, at=now,
                  state=State.RUNNING, correlation_id=task.job_id, task=task.task_id,
                  data={"task": task.task_id, "rendition": task.rendition,
                        "index": task.index, **data})
    try:
        ports.tasks.commit(task, moved, [entry])
    except StaleVersion:
        logger.info("task moved underneath", extra={"task": task.task_id, "to": target.value})
        return None
    return moved
