"""Leases: how a marketplace worker takes a task offered to it, hands back a signed result,
or gives the task up, and how the sweeper moves on from workers that went quiet.

A worker sees only its own offers (they live in its partition) and can act only on tasks
that name it. A lease comes with presigned URLs: GET for the input segment, PUT for the
attempt-scoped output key, so a worker never holds AWS credentials and a retry never
touches another attempt's files. Heartbeats keep a lease alive: at its deadline the sweeper
extends the lease of a worker that still beats, and takes the task back from one that does
not. Results are verified by the control plane like any pool's (`transcode.judged`).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from aws_lambda_powertools import Logger

from chalicelib.aws.blobs import S3Uri
from chalicelib.context import Ports
from chalicelib.errors import Conflict, Forbidden, InvalidRequest, JobNotFound, StaleVersion
from chalicelib.identity.signing import SIGNATURE_HEADER, address_of
from chalicelib.jobs import states
from chalicelib.jobs.lifecycle import apply
from chalicelib.market.evidence import frozen
from chalicelib.market.job_leases import take
from chalicelib.market.registry import SegmentExecution, execution_report
from chalicelib.market.workers import signed
from chalicelib.media import tasks as transcode
from chalicelib.models import Job, Output, State, Task, TaskState
from chalicelib.settlement.escrow import domain, result_hash, result_signer
from chalicelib.settlement.rules import ReleaseBlocked, release_evidence

logger = Logger(child=True)

MAX_OUTPUTS = 1                       # marketplace workers take video tasks: one segment each
MAX_TASKS = 16                        # the most renditions of one segment a lease hands out


class TaskNotFound(JobNotFound):
    reason = "task_not_found"


# -- task references in paths: "<job id>~<task id>" ------------------------------------------
def task_ref(task: Task) -> str:
    return f"{task.job_id}~{task.task_id}"


def parse_ref(ref: str) -> tuple[str, str]:
    job_id, sep, task_id = ref.rpartition("~")
    if not sep or not job_id or not task_id:
        raise InvalidRequest(f"{ref!r} is not a task reference (<job id>~<task id>)",
                             reason="invalid_task_ref")
    return job_id, task_id


def output_name(task: Task) -> str:
    return f"{task.rendition}/seg_{task.index:05d}.ts"


def output_uri(ports: Ports, task: Task, name: str) -> S3Uri:
    """The same attempt-scoped key the pool's worker writes to."""
    return S3Uri(ports.settings.artifacts_bucket,
                 f"attempts/{task.job_id}/tasks/{task.task_id}/{task.attempt:03d}/{name}")


# -- lease ------------------------------------------------------------------------------------
def lease(ports: Ports, headers, did: str, body: dict) -> dict | None:
    """The next task offered to `did`, now leased to it, with up to `max_tasks` (default 1)
    renditions of the same segment offered to it beside (a "segment" lease: one download,
    one decode); None when nothing is offered."""
    _body_names(body, did)
    together = body.get("max_tasks", 1)
    if isinstance(together, bool) or not isinstance(together, int) or not (
            1 <= together <= MAX_TASKS):
        raise InvalidRequest(f"max_tasks is a whole number from 1 to {MAX_TASKS}",
                             reason="invalid_max_tasks")
    did = signed(ports, headers, action="lease", body=body, did=did)
    ports.workers.get(did)                                   # registered, or 404
    for job_id in ports.tasks.signatures_asked(did):
        request = _signature_request(ports, did, job_id)
        if request is not None:
            return request
        ports.tasks.signature_given(did, job_id)             # stale: settled or moved on
    for job_id, task_id in ports.tasks.offers(did):
        if not task_id:                                      # a whole job (inference)
            leased = take(ports, did, job_id)
        else:
            leased = _take_segment(ports, did, job_id, task_id, together)
        ports.tasks.withdraw(did, job_id, task_id)
        if leased is not None:
            return leased
    return None


def _take_segment(ports: Ports, did: str, job_id: str, task_id: str,
                  together: int) -> dict | None:
    """Lease the offered task and, up to `together`, the other renditions of its segment
    that are offered to the same worker (each a lease of its own, on its own attempt)."""
    try:
        job = ports.store.get(job_id)
    except JobNotFound:
        return None
    first = _take(ports, did, job, task_id)
    if first is None:
        return None
    leased = [first]
    if first.kind == "video":
        for rendition in job.plan.renditions:
            sibling = f"{rendition['name']}-{first.index:05d}"
            if len(leased) >= together or sibling == first.task_id:
                continue
            taken = _take(ports, did, job, sibling)
            if taken is not None:
                ports.tasks.withdraw(did, job_id, sibling)
                leased.append(taken)
    return document(ports, job, leased)


def _take(ports: Ports, did: str, job: Job, task_id: str) -> Task | None:
    try:
        task = ports.tasks.get(job.job_id, task_id)
    except KeyError:
        return None
    if job.state.terminal or task.state != TaskState.ASSIGNED or task.worker != did:
        return None
    now = ports.clock()
    expires = now + timedelta(seconds=ports.settings.worker_lease_s)
    return transcode.advance(ports, task, TaskState.RUNNING, "segment.leased",
                             {"attempt": task.attempt, "worker": did,
                              "lease_expires_at": expires.isoformat()}, deadline=expires)


def document(ports: Ports, job: Job, tasks: list[Task]) -> dict:
    """What a worker needs to run the tasks it leased, and nothing of anyone else's: one
    task's lease, or a segment's ("tasks", sharing one input and the plan)."""
    ttl = ports.settings.presign_seconds
    shared = {"job_id": job.job_id, "plan": job.plan.model_dump(mode="json"),
              "input": {"url": ports.blobs.presign_get(S3Uri.parse(tasks[0].input_uri), ttl),
                        "sha256": tasks[0].input_hash}}
    entries = [_entry(ports, task, ttl) for task in tasks]
    if len(entries) == 1:
        return {"kind": "task", **entries[0], **shared}
    return {"kind": "segment", "index": tasks[0].index, **shared, "tasks": entries}


def _entry(ports: Ports, task: Task, ttl: int) -> dict:
    name = output_name(task)
    return {"task_ref": task_ref(task), "task_id": task.task_id, "attempt": task.attempt,
            "lease_expires_at": task.deadline.isoformat(),
            "task": task.model_dump(mode="json", include={
                "job_id", "task_id", "kind", "rendition", "index", "start_s", "duration_s",
                "input_uri", "input_hash", "attempt", "updated_at"}),
            "outputs": [{"name": name,
                         "url": ports.blobs.presign_put(output_uri(ports, task, name), ttl)}]}


# -- countersignature: an escrow's payee signs the verified package ------------------------------
def _signature_request(ports: Ports, did: str, job_id: str) -> dict | None:
    view = ports.store.view(job_id)
    job = view.job
    if job.worker != did or job.escrow is None or job.state != State.VERIFIED:
        return None
    try:
        hashes = release_evidence(job, view.events)
    except ReleaseBlocked:
        return None
    mine = sorted({o.sha256 for t in view.tasks if t.worker == did for o in t.outputs})
    return {"kind": "countersign", "job_id": job_id, "job_key": job.escrow.job_key,
            "outputs": hashes, "result_hash": "0x" + result_hash(hashes).hex(),
            "domain": domain(job.escrow.chain_id, job.escrow.contract),
            "your_segments": mine,
            "package_url": ports.blobs.presign_get(S3Uri.parse(job.outputs[0].uri),
                                                   ports.settings.presign_seconds)}


def countersign(ports: Ports, headers, job_id: str, body: dict) -> None:
    """The payee's EIP-712 signature over (job key, result hash): checked here as the
    contract will check it, kept on the job's attempt, and the release sent again."""
    did = body.get("did") if isinstance(body, dict) else None
    if not isinstance(did, str) or body.get("job_id") != job_id:
        raise InvalidRequest("a countersignature names its did and job_id", reason="did_mismatch")
    did = signed(ports, headers, action="countersign", body=body, did=did)
    view = ports.store.view(job_id)
    job = view.job
    if job.worker != did:
        raise Forbidden(f"job {job_id} does not pay {did}", reason="not_your_job")
    if job.state != State.VERIFIED or job.escrow is None:
        raise Conflict(f"job {job_id} is {job.state.value}; nothing to countersign",
                       reason="not_awaiting_signature")
    expected = result_hash(release_evidence(job, view.events))
    try:
        signature = bytes.fromhex(str(body.get("signature", "")).removeprefix("0x"))
        signer = result_signer(domain(job.escrow.chain_id, job.escrow.contract),
                               bytes.fromhex(job.escrow.job_key[2:]), expected, signature)
    except (ValueError, TypeError):
        signer = None
    if signer != address_of(did):
        raise InvalidRequest("the signature is not the payee's over this job's result hash "
                             f"(0x{expected.hex()})", reason="bad_result_signature")
    attempt = next(a for a in view.attempts if a.number == job.attempt)
    now = ports.clock()

    def plan(j: Job):
        if j.state != State.VERIFIED:
            return None
        noted, event = states.note(j, "result.countersigned", at=now, data={
            "worker": did, "result_hash": "0x" + expected.hex()})
        return noted, [event], [attempt.model_copy(update={"signature": "0x" + signature.hex()})]
    apply(ports, job, plan)
    ports.tasks.signature_given(did, job_id)
    ports.queues.send("settlement", {"action": "release", "job_id": job_id})


# -- result -----------------------------------------------------------------------------------
def submit_result(ports: Ports, headers, ref: str, body: dict) -> Task:
    """A signed result: the worker's EIP-712 signature covers the task reference, the
    attempt and every output's sha256. The bytes must be where the lease said; the verifier
    measures them and trusts none of the rest."""
    job_id, task_id = parse_ref(ref)
    did = body.get("did") if isinstance(body, dict) else None
    if not isinstance(did, str) or body.get("task_ref") != ref:
        raise InvalidRequest("a result names its did and the task_ref it is for",
                             reason="did_mismatch")
    did = signed(ports, headers, action="result", body=body, did=did)
    task = _own_task(ports, did, job_id, task_id)
    if body.get("attempt") != task.attempt or task.state != TaskState.RUNNING:
        raise Conflict(f"task {ref} attempt {body.get('attempt')} is not leased to you now "
                       f"(attempt {task.attempt}, {task.state.value})", reason="lease_not_held")
    outputs = _outputs(ports, task, body.get("outputs"))
    try:
        execution = execution_report(SegmentExecution, body.get("execution"))
    except ValueError as exc:
        raise InvalidRequest(f"execution: {exc}", reason="invalid_execution") from None
    execution.update(worker=did, signature=headers_signature(headers))
    submitted = transcode.submit(ports, task, outputs, execution)
    if submitted is None:
        raise Conflict(f"task {ref} moved while the result came in", reason="lease_not_held")
    return submitted


def headers_signature(headers) -> str | None:
    return {k.lower(): v for k, v in dict(headers).items()}.get(SIGNATURE_HEADER.lower())


def _outputs(ports: Ports, task: Task, claimed) -> list[Output]:
    if not isinstance(claimed, list) or not claimed or len(claimed) > MAX_OUTPUTS:
        raise InvalidRequest(f"a result lists its {MAX_OUTPUTS} output(s)",
                             reason="invalid_outputs")
    outputs = []
    for item in claimed:
        try:
            name, sha256, size = item["name"], item["sha256"], int(item["size_bytes"])
        except (KeyError, TypeError, ValueError):
            raise InvalidRequest("each output has name, sha256 and size_bytes",
                                 reason="invalid_outputs") from None
        if name != output_name(task):
            raise InvalidRequest(f"output {name!r} is not this task's ({output_name(task)})",
                                 reason="invalid_outputs")
        upload = output_uri(ports, task, name)
        try:
            output = Output(name=name, uri=str(upload), sha256=sha256, size_bytes=size)
        except ValueError:
            raise InvalidRequest(f"{sha256!r} is not a sha256:<hex> digest",
                                 reason="invalid_outputs") from None
        outputs.append(frozen(ports, output))
    return outputs


# -- release ------------------------------------------------------------------------------------
def release(ports: Ports, headers, ref: str, body: dict) -> Task | None:
    """A worker gives its lease back (it is shutting down, or cannot run the task): the task
    goes to another worker at once instead of at the lease's end."""
    job_id, task_id = parse_ref(ref)
    did = body.get("did") if isinstance(body, dict) else None
    if not isinstance(did, str) or body.get("task_ref") != ref:
        raise InvalidRequest("a release names its did and the task_ref", reason="did_mismatch")
    did = signed(ports, headers, action="release", body=body, did=did)
    task = _own_task(ports, did, job_id, task_id)
    if task.state != TaskState.RUNNING:
        raise Conflict(f"task {ref} is not leased ({task.state.value})", reason="lease_not_held")
    return transcode.retry_or_fail(ports, task, reason="lease_released",
                                   event="segment.released",
                                   data={"message": str(body.get("reason", ""))[:200]})


def _own_task(ports: Ports, did: str, job_id: str, task_id: str) -> Task:
    try:
        task = ports.tasks.get(job_id, task_id)
    except KeyError:
        raise TaskNotFound(f"no task {job_id}~{task_id}") from None
    if task.worker != did:
        raise Forbidden(f"task {job_id}~{task_id} is not assigned to {did}",
                        reason="not_your_task")
    return task


def _body_names(body, did: str) -> None:
    if not isinstance(body, dict) or body.get("did") != did:
        raise InvalidRequest("the body names the worker's did", reason="did_mismatch")


# -- the sweeper's part ---------------------------------------------------------------------------
def sweep(ports: Ports) -> list[tuple[str, str]]:
    """Offers nobody leased in time go elsewhere; a lease whose worker still beats is
    extended, one whose worker went quiet is retried on another worker."""
    now = ports.clock()
    actions = []
    for task in ports.tasks.lapsed(now):
        action = _lapse(ports, task, now)
        if action:
            actions.append((f"{task.job_id}~{task.task_id}", action))
    return actions


def _lapse(ports: Ports, task: Task, now: datetime) -> str | None:
    if task.state == TaskState.ASSIGNED:
        ports.tasks.withdraw(task.worker, task.job_id, task.task_id)
        transcode.observe(ports, task, "lost")
        if transcode.pinned(ports.store.get(task.job_id)):    # only that worker may do it
            moved = transcode.retry_or_fail(ports, task, reason="offer_lapsed",
                                            event="segment.offer_lapsed", data={})
            return "offer_lapsed" if moved else None
        moved = transcode.advance(ports, task, TaskState.ASSIGNED, "segment.offer_lapsed",
                                   {"attempt": task.attempt, "worker": task.worker},
                                   worker=None, deadline=None, tried=[*task.tried, task.worker])
        if moved:
            transcode.send_task(ports, moved)
        return "offer_lapsed" if moved else None
    worker = ports.workers.get(task.worker)
    lease_s = ports.settings.worker_lease_s
    if (worker.last_heartbeat and worker.fresh(now, ports.settings.heartbeat_ttl_s)
            and worker.last_heartbeat + timedelta(seconds=lease_s) > now):
        extended = task.model_copy(update={
            "deadline": worker.last_heartbeat + timedelta(seconds=lease_s),
            "version": task.version + 1})
        try:
            ports.tasks.commit(task, extended)
        except StaleVersion:         # moved meanwhile (its result came in): nothing to extend
            return None
        return "lease_extended"
    transcode.observe(ports, task, "timeout")
    moved = transcode.retry_or_fail(ports, task, reason="lease_expired",
                                    event="segment.lease_expired",
                                    data={"last_heartbeat": worker.last_heartbeat.isoformat()
                                          if worker.last_heartbeat else None})
    return "lease_expired" if moved else None
