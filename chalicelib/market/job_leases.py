"""Whole jobs for marketplace workers: inference jobs (`routing.MARKETPLACE_JOB_CLASSES`)
are offered, leased and answered whole, where a transcode's are per task (`leases.py`).

The router ranks the pool and the verified workers when an attempt is dispatched; a worker
that wins gets an offer in its partition, leases it (the attempt starts under its DID), and
submits a signed result whose output is then re-executed on the trusted pool like the
pool's own. Inputs reach an untrusted worker redacted of the class's patterns; the timeline
keeps how many were removed and the hash of what was sent, never the inputs. Workers whose
attempt at a job failed are not offered it again. An unleased offer lapses at its deadline;
a lease lives `worker_lease_s` past the worker's latest heartbeat (up to the class's
`running` timeout), and the sweeper retries the attempt of a worker gone quiet.
"""
from __future__ import annotations

from datetime import timedelta

from chalicelib.aws.blobs import S3Uri, attempt_key
from chalicelib.catalog import JobClass
from chalicelib.context import Ports
from chalicelib.errors import Conflict, Forbidden, InvalidRequest, ProoflineError
from chalicelib.jobs import states
from chalicelib.jobs.attempts import fail, start, submit
from chalicelib.jobs.lifecycle import apply
from chalicelib.market.evidence import frozen
from chalicelib.market.inference_inputs import (
    digest,
    dispatched_prompt,
    dispatched_texts,
    redacts_for,
)
from chalicelib.market.registry import ModelExecution, execution_report
from chalicelib.market.routing import MARKETPLACE_JOB_CLASSES, route
from chalicelib.market.workers import signed
from chalicelib.models import AttemptResult, Job, Output, State, is_marketplace
from chalicelib.settlement.escrow import domain


def offer_job(ports: Ports, job: Job, job_class: JobClass) -> bool:
    """Offer an assigned attempt to a marketplace worker when one is to do it; False
    leaves it to the pool's queue."""
    if job_class.name not in MARKETPLACE_JOB_CLASSES or ports.workers is None:
        return False
    now = ports.clock()
    if job.challenge:
        worker, data = job.challenge, {"challenge": True}
    elif is_marketplace(job.worker):              # an escrow's payee, chosen at funding
        worker, data = job.worker, {"reason": "the escrow's payee"}
    elif job.escrow:
        return False
    else:
        failed = _failed_workers(ports, job)
        candidates = [c for c in ports.workers.candidates(now) if c.worker not in failed]
        if not candidates:
            return False
        assignment = route(job_class, job.model_copy(update={"worker": None}),
                           now=now.timestamp(), candidates=candidates,
                           pool_price=job_class.price_per_second or 0,
                           heartbeat_ttl_s=ports.settings.heartbeat_ttl_s,
                           allow_list=ports.settings.trusted_workers)
        if not is_marketplace(assignment.worker):
            return False
        worker, data = assignment.worker, {"reason": assignment.reason,
                                           "ranking": assignment.ranking}
    offered = job.model_copy(update={"worker": worker})
    sent = (dispatched_texts(ports, offered) if job.kind == "embed_batch"
            else dispatched_prompt(ports, offered))
    deadline = now + timedelta(seconds=ports.settings.offer_s)

    def plan(j: Job):
        if j.state != State.ASSIGNED or j.attempt != job.attempt:
            return None
        noted, event = states.note(j, "job.offered", at=now, data={
            "attempt": j.attempt, "worker": worker, "offer_expires_at": deadline.isoformat(),
            "input_sha256": digest(sent),
            "redacted": redacts_for(ports, offered),
            **data})
        return noted.model_copy(update={"worker": worker, "next_deadline": deadline}), [event], []
    if apply(ports, job, plan) is not None:
        ports.tasks.offer_job(worker, job.job_id)
    return True


def _failed_workers(ports: Ports, job: Job) -> set[str]:
    if job.attempt <= 1:
        return set()
    return {a.worker for a in ports.store.view(job.job_id).attempts
            if a.state in ("failed", "lost") and is_marketplace(a.worker)}


def take(ports: Ports, did: str, job_id: str) -> dict | None:
    """Lease an offered job: its attempt starts under the worker's DID."""
    job = ports.store.get(job_id)
    if job.state != State.ASSIGNED or job.worker != did:
        return None
    running = start(ports, job, job.attempt, did, redelivered=False)
    if running is None:
        return None
    now = ports.clock()
    expires = min(now + timedelta(seconds=ports.settings.worker_lease_s), running.next_deadline)

    def lease(j: Job):
        if j.state != State.RUNNING or j.attempt != running.attempt:
            return None
        noted, event = states.note(j, "job.leased", at=now, data={
            "attempt": j.attempt, "worker": did, "lease_expires_at": expires.isoformat()})
        return noted.model_copy(update={"next_deadline": expires}), [event], []
    leased = apply(ports, running, lease)
    return document(ports, leased) if leased is not None else None


def extend(ports: Ports, job: Job, now) -> Job | None:
    """At a leased job's deadline: a worker that still beats keeps it, for another lease
    past its latest heartbeat, up to the class's `running` timeout from the lease's start."""
    if job.state != State.RUNNING or not is_marketplace(job.worker):
        return None
    try:
        worker = ports.workers.get(job.worker)
    except Exception:  # noqa: BLE001 - an unknown worker keeps nothing
        return None
    lease_s = ports.settings.worker_lease_s
    until = (worker.last_heartbeat + timedelta(seconds=lease_s)) if worker.last_heartbeat else None
    started = next((e.at for e in reversed(ports.store.view(job.job_id).events)
                    if e.type == "job.leased" and e.data.get("attempt") == job.attempt), None)
    cap = started + timedelta(seconds=ports.catalog.job_class(job.kind).timeouts_s.get(
        State.RUNNING, lease_s)) if started else now
    if until is None or until <= now or now >= cap or not worker.fresh(
            now, ports.settings.heartbeat_ttl_s):
        return None

    def longer(j: Job):
        if j.state != State.RUNNING or j.attempt != job.attempt:
            return None
        noted, event = states.note(j, "lease.extended", at=now, data={
            "attempt": j.attempt, "worker": j.worker, "until": min(until, cap).isoformat()})
        return noted.model_copy(update={"next_deadline": min(until, cap)}), [event], []
    return apply(ports, job, longer)


def document(ports: Ports, job: Job) -> dict:
    job_class = ports.catalog.job_class(job.kind)
    target = S3Uri(ports.settings.artifacts_bucket,
                   attempt_key(job.job_id, job.attempt, job_class.output))
    inputs = ({"texts": dispatched_texts(ports, job)} if job.kind == "embed_batch" else
              {"prompt": dispatched_prompt(ports, job), "max_tokens": job.manifest.max_tokens
               or 64, "seed": job.manifest.seed or 0})
    escrow = None
    if job.escrow:
        escrow = {"domain": domain(job.escrow.chain_id, job.escrow.contract),
                  "job_key": job.escrow.job_key}
    return {"kind": "job", "job_id": job.job_id, "attempt": job.attempt,
            "job_class": job.kind, "model": job_class.model, "inputs": inputs,
            "lease_expires_at": job.next_deadline.isoformat() if job.next_deadline else None,
            "output": {"name": job_class.output,
                       "url": ports.blobs.presign_put(target, ports.settings.presign_seconds)},
            "escrow": escrow}


def submit_result(ports: Ports, headers, job_id: str, body: dict) -> Job | None:
    """A signed result for a leased job; with escrow it carries the worker's signature
    over (job key, output hash), which the verifier checks as the contract will."""
    did, job = _leased(ports, headers, job_id, body, action="result")
    if job.state != State.RUNNING or body.get("attempt") != job.attempt:
        raise Conflict(f"job {job_id} attempt {body.get('attempt')} is not leased to you now",
                       reason="lease_not_held")
    name = ports.catalog.job_class(job.kind).output
    claimed = body.get("output") if isinstance(body.get("output"), dict) else {}
    upload = S3Uri(ports.settings.artifacts_bucket, attempt_key(job_id, job.attempt, name))
    try:
        output = Output(name=name, uri=str(upload), sha256=claimed["sha256"],
                        size_bytes=int(claimed["size_bytes"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest("output needs sha256 and size_bytes", reason="invalid_outputs") from None
    output = frozen(ports, output)
    try:
        execution = execution_report(ModelExecution, body.get("execution")) | {"worker": did}
    except ValueError as exc:
        raise InvalidRequest(f"execution: {exc}", reason="invalid_execution") from None
    return submit(ports, job, AttemptResult(
        job_id=job_id, attempt=job.attempt, worker=did, output=output,
        duration_ms=int(float(execution.get("model_s") or 0) * 1000), execution=execution,
        signature=body.get("signature") if isinstance(body.get("signature"), str) else None))


class LeaseReleased(ProoflineError):
    """A worker gave a whole job back: the attempt ends now, and the job goes elsewhere."""
    status = 409
    reason = "lease_released"


def release(ports: Ports, headers, job_id: str, body: dict) -> Job | None:
    """A worker gives a leased job back (it cannot run it, or is leaving): its attempt fails
    at once, as an absence (a challenge is offered again), and the job goes to another
    worker instead of waiting for a lease its heartbeats would keep alive."""
    did, job = _leased(ports, headers, job_id, body, action="release")
    if job.state != State.RUNNING:
        raise Conflict(f"job {job_id} is not leased ({job.state.value})", reason="lease_not_held")
    return fail(ports, job, job.attempt, LeaseReleased(
        f"released by {did}: {str(body.get('reason', ''))[:200]}"))


def _leased(ports: Ports, headers, job_id: str, body: dict, *, action: str) -> tuple[str, Job]:
    """The signing worker's DID and the job, which must be assigned to it."""
    did = body.get("did") if isinstance(body, dict) else None
    if not isinstance(did, str) or body.get("job_id") != job_id:
        raise InvalidRequest(f"a {action} names its did and the job_id", reason="did_mismatch")
    did = signed(ports, headers, action=action, body=body, did=did)
    job = ports.store.get(job_id)
    if job.worker != did:
        raise Forbidden(f"job {job_id} is not leased to {did}", reason="not_your_job")
    return did, job
