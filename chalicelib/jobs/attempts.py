"""Attempt services: a worker starts, submits or fails an attempt; the verifier judges it.

Each is driven by a message that carries the job as it was when the message was sent; the
commit is conditional on that version, so duplicate and late deliveries find the job moved
and do nothing (`apply` re-plans from the stored job).
"""
from __future__ import annotations

from aws_lambda_powertools import Logger

from chalicelib.aws.blobs import S3Uri, output_key
from chalicelib.context import Ports
from chalicelib.errors import InputError, ProoflineError
from chalicelib.jobs import states
from chalicelib.jobs.lifecycle import apply, request_verification, retry_or_fail
from chalicelib.market.workers import observe
from chalicelib.media.probe import sha256_bytes
from chalicelib.models import Attempt, AttemptResult, Job, Output, State, is_marketplace
from chalicelib.settlement.escrow import domain, result_hash, result_signer
from chalicelib.settlement.rules import payee
from chalicelib.verification.policies import POLICIES, Evidence, Verdict

logger = Logger(child=True)


def start(ports: Ports, job: Job, attempt: int, worker: str, *, redelivered: bool) -> Job | None:
    """Mark the attempt running. A redelivered message whose attempt is still running means
    its worker died (the queue's visibility timeout passed): that attempt is lost and a new
    one starts here. Returns the running job, or None when this delivery is stale."""
    now = ports.clock()
    job_class = ports.catalog.job_class(job.kind)

    def plan(j: Job):
        if j.state.terminal or j.attempt != attempt:
            return None
        events, attempts = [], []
        if j.state == State.RUNNING and redelivered:
            lost = Attempt(job_id=j.job_id, number=j.attempt, worker=j.worker or worker,
                           state="lost", finished_at=now, reason="lease_lost")
            j, events, attempts = retry_or_fail(j, job_class, at=now, reason="lease_lost",
                                                event="execution.lost", failed_attempt=lost,
                                                data={"attempt": attempt})
        if j.state != State.ASSIGNED:
            return (j, events, attempts) if events else None
        running, event = states.transition(j, State.RUNNING, at=now,
                                           data={"attempt": j.attempt, "worker": worker})
        attempts.append(Attempt(job_id=j.job_id, number=j.attempt, worker=worker,
                                state="running", started_at=now))
        return running, events + [event], attempts

    moved = apply(ports, job, plan)
    return moved if moved is not None and moved.state == State.RUNNING else None


def submit(ports: Ports, job: Job, result: AttemptResult) -> Job | None:
    now = ports.clock()

    def plan(j: Job):
        if j.state != State.RUNNING or j.attempt != result.attempt:
            return None
        submitted, e1 = states.transition(
            j, State.SUBMITTED, at=now,
            data={"attempt": result.attempt, "worker": result.worker,
                  "duration_ms": result.duration_ms, **result.execution})
        submitted, e2 = states.note(submitted, "output.uploaded", at=now,
                                    data=result.output.model_dump())
        attempt = Attempt(job_id=j.job_id, number=j.attempt, worker=result.worker,
                          state="submitted", finished_at=now, output=result.output)
        return submitted, [e1, e2], [attempt]

    moved = apply(ports, job, plan)
    if moved:
        request_verification(ports, moved, result.model_dump(mode="json"))
    return moved


def fail(ports: Ports, job: Job, attempt: int, error: Exception) -> Job | None:
    """An InputError fails the job for good; anything else costs one attempt."""
    now = ports.clock()
    job_class = ports.catalog.job_class(job.kind)
    reason = error.reason if isinstance(error, ProoflineError) else "worker_error"
    data = {"attempt": attempt, "reason": reason, "message": str(error)[:1000]}

    def plan(j: Job):
        if j.state != State.RUNNING or j.attempt != attempt:
            return None
        failed_attempt = Attempt(job_id=j.job_id, number=attempt, worker=j.worker or "unknown",
                                 state="failed", finished_at=now, reason=reason)
        if isinstance(error, InputError):
            failed, event = states.transition(j, State.FAILED, at=now, reason=reason, data=data)
            return failed, [event], [failed_attempt]
        return retry_or_fail(j, job_class, at=now, reason=reason, event="execution.failed",
                             data=data, failed_attempt=failed_attempt)

    return apply(ports, job, plan)


def verify(ports: Ports, job: Job, result: AttemptResult,
           verdict: Verdict | None = None, verified: bytes | None = None) -> Job | None:
    """Judge a submitted attempt from evidence we fetch ourselves; promote and settle it,
    or retry it. Measurements come first so the commit is one transaction. A `verdict`
    reached where the evidence lives (re-execution on a model's pool) is recorded as is;
    `verified` are the output's bytes that verdict judged, when the judge holds them."""
    if job.state != State.SUBMITTED or job.attempt != result.attempt:
        job = ports.store.get(job.job_id)
        if job.state != State.SUBMITTED or job.attempt != result.attempt:
            return None
    job_class = ports.catalog.job_class(job.kind)
    if verdict is None:
        try:
            evidence = _evidence(ports, job, result)
        except InputError as error:           # the claimed output is missing or oversized
            verdict = Verdict(job_class.verification.policy, {"output_readable": False},
                              {"error": error.reason})
        else:
            verdict = POLICIES[job_class.verification.policy](result, evidence)
    if job.escrow and verdict.checks.get("output_readable", True):
        verdict = _with_signature_check(ports, job, result, verdict)
    promoted = _promote(ports, result.output, verified) if verdict.passed else None
    if verdict.passed and promoted is None:
        verdict = Verdict(verdict.policy, {**verdict.checks, "promoted_bytes_match": False},
                          verdict.measured)
    now = ports.clock()

    def plan(j: Job):
        if j.state != State.SUBMITTED or j.attempt != result.attempt:
            return None
        verifying, e1 = states.transition(j, State.VERIFYING, at=now,
                                          data={"attempt": j.attempt, "policy": verdict.policy})
        if not verdict.passed:
            rejected = Attempt(job_id=j.job_id, number=j.attempt, worker=result.worker,
                               state="failed", finished_at=now, output=result.output,
                               reason=verdict.reason)
            moved, events, attempts = retry_or_fail(
                verifying, job_class, at=now, reason=verdict.reason or "validation_failed",
                event="validation.failed", data=verdict.as_event(), failed_attempt=rejected)
            return moved, [e1, *events], attempts
        verified, e2 = states.transition(verifying, State.VERIFIED, at=now,
                                         data=verdict.as_event(), outputs=[promoted])
        verified, e3 = states.note(verified, "output.promoted", at=now,
                                   data=promoted.model_dump())
        passed = Attempt(job_id=j.job_id, number=j.attempt, worker=result.worker,
                         state="passed", finished_at=now, output=result.output,
                         signature=result.signature)
        if verified.escrow:                 # the settlement handler releases it on chain
            return verified, [e1, e2, e3], [passed]
        settled, e4 = _settle(verified, now)
        return settled, [e1, e2, e3, e4], [passed]

    moved = apply(ports, job, plan)
    if moved is not None:
        # What the job was worth in items (an embedding job's rows; else the job itself)
        # joins the worker's verified history, which sets how deep its next audits go.
        items = float(verdict.measured.get("rows") or 1) if verdict.passed else 0.0
        observe(ports.workers, result.worker, job.kind,
                "passed" if verdict.passed else "validation_failed", now=now,
                runtime_s=result.duration_ms / 1000 if verdict.passed else None, units=items)
    return moved


def promote_and_record(ports: Ports, job: Job, output: Output, verdict: Verdict, *,
                       execution: dict, signature: str | None) -> Job | None:
    """For an output the control plane assembled and checked itself (a split job's
    package, already content-addressed): the running job passes submitted → verifying →
    verified, or fails with the verdict's reason; one transaction."""
    worker = job.worker or "unknown"
    awaiting_countersign = is_marketplace(worker) and signature is None
    if job.escrow and not awaiting_countersign:
        claimed = AttemptResult(job_id=job.job_id, attempt=job.attempt, worker=worker,
                                output=output, duration_ms=0, signature=signature)
        verdict = _with_signature_check(ports, job, claimed, verdict)
    now = ports.clock()

    def plan(j: Job):
        if j.state != State.RUNNING or j.attempt != job.attempt:
            return None
        submitted, e0 = states.transition(j, State.SUBMITTED, at=now,
                                          data={"attempt": j.attempt, "worker": worker,
                                                **execution})
        verifying, e1 = states.transition(submitted, State.VERIFYING, at=now,
                                          data={"attempt": j.attempt, "policy": verdict.policy})
        if not verdict.passed:
            failed, e2 = states.transition(verifying, State.FAILED, at=now,
                                           event="validation.failed", reason=verdict.reason,
                                           data=verdict.as_event())
            return failed, [e0, e1, e2], []
        verified, e2 = states.transition(verifying, State.VERIFIED, at=now,
                                         data=verdict.as_event(), outputs=[output])
        verified, e3 = states.note(verified, "output.promoted", at=now, data=output.model_dump())
        passed = Attempt(job_id=j.job_id, number=j.attempt, worker=worker, state="passed",
                         finished_at=now, output=output, signature=signature)
        if verified.escrow:
            return verified, [e0, e1, e2, e3], [passed]
        settled, e4 = _settle(verified, now)
        return settled, [e0, e1, e2, e3, e4], [passed]

    return apply(ports, job, plan)


def _with_signature_check(ports: Ports, job: Job, result: AttemptResult, verdict: Verdict) -> Verdict:
    """An escrow job pays only a result its worker signed, so check it before the chain does."""
    try:
        expected = (payee(job.worker, ports.chain.pool_payout)
                    if ports.chain and job.worker else None)
    except KeyError:
        expected = None
    signer = None
    if result.signature:
        try:
            signer = result_signer(domain(job.escrow.chain_id, job.escrow.contract),
                                   bytes.fromhex(job.escrow.job_key[2:]),
                                   result_hash([result.output.sha256]),
                                   bytes.fromhex(result.signature.removeprefix("0x")))
        except Exception:  # malformed signatures are simply not the worker's
            signer = None
    checks = {**verdict.checks, "worker_signature_valid": bool(expected) and signer == expected}
    return Verdict(verdict.policy, checks, {**verdict.measured, "signer": signer})


def _settle(job: Job, now) -> tuple[Job, object]:
    """Jobs without escrow close their accounts at once, so `settled` always means closed."""
    return states.transition(job, State.SETTLED, at=now, event="settlement.skipped",
                             data={"payment_policy": job.payment_policy})


def _evidence(ports: Ports, job: Job, result: AttemptResult) -> Evidence:
    limit = 16 * 1024 * 1024
    output = ports.blobs.read(S3Uri.parse(result.output.uri), limit)
    head = ports.blobs.head(S3Uri.parse(job.input_uri))
    return Evidence(output=output, input_size_bytes=head["ContentLength"] if head else None)


def _promote(ports: Ports, output: Output, verified: bytes | None = None) -> Output | None:
    """Copy to a content-addressed key: a late or duplicate attempt can only write the same
    bytes to the same place, never replace a promoted output with other ones. The promoted
    object is hashed again, so what is delivered is exactly what was verified (None if not).
    When the verifier holds the bytes it judged (`verified`, hashing to the output's sha256)
    it writes those instead: exactly what was verified, with no copy to hash again."""
    target = S3Uri(ports.settings.artifacts_bucket, output_key(output.sha256, output.name))
    if ports.blobs.head(target) is None:
        if verified is not None and sha256_bytes(verified) == output.sha256:
            ports.blobs.put(target, verified)
            return output.model_copy(update={"uri": str(target)})
        ports.blobs.copy(S3Uri.parse(output.uri), target)
    if ports.blobs.sha256(target)[0] != output.sha256:
        return None
    return output.model_copy(update={"uri": str(target)})


__all__ = ["start", "submit", "fail", "verify", "Verdict"]
