"""The job lifecycle: accept, reject, cancel, query, and `apply`, the one way a job moves.

Each service reads, decides with the pure core, commits one transaction, and only then
hands the commit to the message bus, whose handlers cause the side effects (dispatch,
settlement, challenge outcomes, counts), each idempotent. This module imports none of them."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Callable, Mapping

from aws_lambda_powertools import Logger

from chalicelib import bodies
from chalicelib.aws.store import JobView, stamp
from chalicelib.bus import Committed
from chalicelib.catalog import Catalog, JobClass, PaymentPolicy
from chalicelib.context import Ports
from chalicelib.errors import (
    InvalidManifest,
    JobExists,
    ProoflineError,
    StaleVersion,
)
from chalicelib.jobs import states
from chalicelib.market.routing import route
from chalicelib.media import client_split, profiles
from chalicelib.models import NATIVE_TOKEN, Attempt, Event, Job, Manifest, PaymentToken, State
from chalicelib.settlement import pricing
from chalicelib.settlement import rules as settlement
from chalicelib.settlement.escrow import quote_of, sign_funding
from chalicelib.settlement.rules import EscrowStage
from chalicelib.telemetry import metrics

logger = Logger(child=True)


def derive_job_id(idempotency_key: str) -> str:
    """The same request always names the same job, so a lost idempotency record can't fork it."""
    return "job-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]


def named_job_id(client_did: str | None, name: str) -> str:
    """A job a client names itself (`job_id` in the manifest) gets an id derived from the
    client and the name: two clients' names never meet, so none can squat another's id (nor,
    through it, its escrow key)."""
    return derive_job_id(f"name:{client_did or 'anonymous'}:{name}")


def new_job(manifest: Manifest, *, catalog: Catalog, job_id: str, source: str,
            correlation_id: str, now: datetime, escrow: EscrowStage | None = None,
            tokens: Mapping[str, PaymentToken] | None = None,
            salt: bytes = b"\0" * 32) -> tuple[Job, JobClass]:
    """Validate a manifest against its class and policies; the job as `requested`.
    `escrow` is where this stage settles on chain, else None; `tokens` the payment tokens
    it accepts; `salt` keeps the job's escrow key from being guessed from its id."""
    job_class, policy = validate(manifest, catalog=catalog, now=now, settles=escrow is not None)
    job_id = named_job_id(manifest.client_did, manifest.job_id) if manifest.job_id else job_id
    max_attempts = manifest.max_attempts or job_class.defaults.max_attempts
    terms = None
    if policy.escrow:
        terms = settlement.terms(manifest, job_id=job_id, salt=salt, stage=escrow,
                                 job_class=job_class, max_attempts=max_attempts,
                                 now_s=int(now.timestamp()),
                                 tokens=tokens or {"ETH": NATIVE_TOKEN})
    job = Job(job_id=job_id, kind=job_class.name, state=State.REQUESTED,
              version=1, manifest=manifest,
              profile=manifest.profile or job_class.defaults.profile,
              payment_policy=policy.name, max_attempts=max_attempts,
              timeouts_s=job_class.timeouts_s, escrow=terms,
              correlation_id=correlation_id, source=source, created_at=now, updated_at=now)
    if terms:
        pricing.price(job, job_class)    # what can be priced at the door is, against max_price
    return job, job_class


def validate(manifest: Manifest, *, catalog: Catalog, now: datetime,
             settles: bool) -> tuple[JobClass, PaymentPolicy]:
    """What the catalog says of a manifest: its class, profile, inputs, payment policy (one
    that needs settlement only where the stage `settles`) and deadline."""
    job_class = catalog.job_class(manifest.kind)
    if manifest.profile and manifest.profile not in job_class.profiles:
        raise InvalidManifest(f"job class {job_class.name} has no profile {manifest.profile!r}",
                              reason="unknown_profile",
                              details={"known": sorted(job_class.profiles)})
    _check_inputs(manifest, job_class)
    policy = catalog.payment_policy(manifest.payment_policy or job_class.defaults.payment_policy)
    if policy.escrow and not settles:
        raise InvalidManifest(f"payment policy {policy.name!r} needs settlement, which this "
                              "stage does not have configured", reason="payment_policy_unavailable")
    if manifest.deadline and manifest.deadline <= now:
        raise InvalidManifest("deadline is in the past", reason="deadline_passed")
    return job_class, policy


INPUT_FIELDS = {"uri": "input_uri", "texts": "texts", "prompt": "prompt"}


def _check_inputs(manifest: Manifest, job_class: JobClass) -> None:
    """The inputs a class takes, within its limits: refused at the door, not by a worker."""
    given = [kind for kind, field in INPUT_FIELDS.items() if getattr(manifest, field)]
    if not given:
        raise InvalidManifest(f"job class {job_class.name} needs one of "
                              f"{[INPUT_FIELDS[k] for k in job_class.inputs]}",
                              reason="missing_input")
    refused = [INPUT_FIELDS[k] for k in given if k not in job_class.inputs]
    if refused or len(given) > 1:
        raise InvalidManifest(f"job class {job_class.name} takes exactly one of "
                              f"{[INPUT_FIELDS[k] for k in job_class.inputs]}, got {given}",
                              reason="unsupported_input")
    if manifest.segments:
        _check_segments(manifest, job_class)
    limits = job_class.limits
    if manifest.texts and limits.max_texts and len(manifest.texts) > limits.max_texts:
        raise InvalidManifest(f"{len(manifest.texts)} texts; {job_class.name} takes at most "
                              f"{limits.max_texts}", reason="too_many_texts")
    if manifest.max_tokens and limits.max_tokens and manifest.max_tokens > limits.max_tokens:
        raise InvalidManifest(f"max_tokens {manifest.max_tokens} is over {job_class.name}'s "
                              f"{limits.max_tokens}", reason="max_tokens_too_large")
    if manifest.prompt and limits.context_tokens:
        # Every word is at least one token: a prompt with more words than the context leaves
        # room for is too long whatever the tokenizer (the model checks the exact count).
        room = limits.context_tokens - (manifest.max_tokens or 64) - 2
        if len(manifest.prompt.split()) > room:
            raise InvalidManifest(f"the prompt has more words than the model's context leaves "
                                  f"room for ({room} tokens)", reason="prompt_too_long")


def _check_segments(manifest: Manifest, job_class: JobClass) -> None:
    """A source sent with its segments: only where the class plans by segments, and a
    listing that holds together (each segment is measured against the source later)."""
    if not job_class.client_split or not manifest.input_uri:
        raise InvalidManifest(f"job class {job_class.name} takes no segments",
                              reason="unsupported_input")
    profile = profiles.get_profile(manifest.profile or job_class.defaults.profile)
    problems = client_split.listing_problems(manifest.segments, profile.segment_s)
    if problems:
        raise InvalidManifest(f"segments: {problems[0]}", reason="invalid_segments",
                              details=problems[:20])


def accept(ports: Ports, manifest: Manifest, *, job_id: str, source: str,
           correlation_id: str | None = None, challenge: str | None = None) -> tuple[Job, bool]:
    """Create and route a job in one transaction, then publish it (the bus dispatches an
    assigned attempt). Returns (job, created).

    A job id that exists already returns the stored job if it was made from the same
    manifest (a retry), and raises JobExists otherwise. The correlation id that follows the
    job through every log line and event is the caller's, or else the job id.
    """
    now = ports.clock()
    correlation_id = correlation_id or manifest.job_id or job_id
    chain = ports.chain
    job, job_class = new_job(manifest, catalog=ports.catalog, job_id=job_id, source=source,
                             correlation_id=correlation_id, now=now,
                             escrow=chain.stage(ports.settings) if chain else None,
                             tokens=ports.settings.payment_tokens, salt=secrets.token_bytes(32))
    if job.escrow:      # the router signs the terms: the only funding the contract accepts
        signature = sign_funding(chain.router, chain.escrow.result_domain(), quote_of(job.escrow))
        job = job.model_copy(update={"escrow": job.escrow.model_copy(
            update={"quote_signature": "0x" + signature.hex()})})
    if challenge:
        job = job.model_copy(update={"challenge": challenge})
    created = Event(job_id=job.job_id, seq=1, type="job.created", at=now, state=job.state,
                    correlation_id=correlation_id,
                    data={"source": source, "kind": job.kind, "input_uri": manifest.input_uri,
                          "input_hash": manifest.input_hash,
                          **({"challenge": challenge} if challenge else {})})
    if job.escrow:      # not routed until the chain shows the escrow funded
        job = job.model_copy(update={"next_deadline": states.next_deadline(job, job.state, now)})
        waiting, event = states.note(job, "payment.authorized", at=now,
                                     data=job.escrow.model_dump())
        stored, attempts, aliases = waiting, [], [f"escrow:{job.escrow.job_key}"]
    else:
        stored, attempt, event = assign(job, job_class, now)
        attempts, aliases = [attempt], []
    try:
        ports.store.create(stored, [created, event], attempts, aliases=aliases)
    except JobExists as exc:
        existing = exc.current
        if existing is None or existing.manifest != manifest:
            raise JobExists(f"job {job.job_id} exists with a different manifest") from exc
        return existing, False
    ports.bus.publish(ports, Committed(None, stored, (created, event), tuple(attempts)))
    return stored, True


def reject(ports: Ports, *, key: str, uri: str, error: ProoflineError,
           correlation_id: str | None = None, source: str = "s3") -> Job:
    """Record a drop we could not accept, so the reason is visible and nothing vanishes."""
    now = ports.clock()
    correlation_id = correlation_id or derive_job_id(key)
    manifest = Manifest.model_construct(kind="unknown", input_uri=uri)
    job = Job(job_id=derive_job_id(key), kind="unknown", state=State.REQUESTED, version=1,
              manifest=manifest, payment_policy="none", max_attempts=0,
              correlation_id=correlation_id, source=source, created_at=now, updated_at=now)
    created = Event(job_id=job.job_id, seq=1, type="job.created", at=now, state=job.state,
                    correlation_id=correlation_id, data={"source": source, "input_uri": uri})
    rejected, event = states.transition(job, State.REJECTED, at=now, reason=error.reason,
                                        data=error.to_dict())
    try:
        ports.store.create(rejected, [created, event])
    except JobExists as exc:
        return exc.current or ports.store.get(job.job_id)
    ports.bus.publish(ports, Committed(None, rejected, (created, event)))
    return rejected


def move_payee(ports: Ports, job: Job, *, reason: str, failed: str) -> Job | None:
    """An escrow job's marketplace payee was caught or lapsed on its work: the job's payee
    becomes its class's pool, which redoes what is left, and the bus re-assigns the escrow
    (once: a job already moved keeps its payee)."""
    pool = f"pool:{ports.catalog.job_class(job.kind).pool}"

    def plan(j: Job):
        if j.escrow is None or j.escrow.reassigned or j.worker != failed or j.state.terminal:
            return None
        noted, event = states.note(j, "escrow.payee_moved", at=ports.clock(),
                                   data={"from": failed, "to": pool, "reason": reason})
        return noted.model_copy(update={"worker": pool, "escrow": j.escrow.model_copy(
            update={"reassigned": True})}), [event], []
    return apply(ports, job, plan)


def cancel(ports: Ports, job_id: str, *, by: str = "client") -> Job:
    def plan(job: Job):
        moved, event = states.transition(job, State.CANCELLED, at=ports.clock(),
                                         data={"by": by, "from": job.state.value},
                                         reason="cancelled")
        return moved, [event], []
    return apply(ports, ports.store.get(job_id), plan)


def view(ports: Ports, job_id: str) -> JobView:
    return ports.store.view(job_id)


def request_verification(ports: Ports, job: Job, result: dict) -> None:
    """To the verify queue, or to the pool that can re-execute the work (inference)."""
    queue = ports.catalog.job_class(job.kind).verification.queue
    ports.queues.send(queue, {"type": "check", "job": job.model_dump(mode="json"),
                              "result": result})


Plan = Callable[[Job], "tuple[Job, list[Event], list[Attempt]] | None"]


def apply(ports: Ports, job: Job, plan: Plan, *, tries: int = 3) -> Job | None:
    """Commit `plan(job)`; when the job moved underneath, plan again from what is stored.

    A plan returns None when there is nothing (left) to do, e.g. a duplicate delivery.
    """
    for _ in range(tries):
        planned = plan(job)
        if planned is None:
            return None
        moved, events, attempts = planned
        try:
            ports.store.commit(job, moved, events, attempts)
        except StaleVersion as exc:
            job = exc.current or ports.store.get(job.job_id)
            continue
        ports.bus.publish(ports, Committed(job, moved, tuple(events), tuple(attempts)))
        return moved
    raise StaleVersion(f"job {job.job_id} kept changing; gave up after {tries} tries")


COUNTED = {"validation.passed": "validations", "validation.failed": "validations",
           "job.failed": "failed", "job.settled": "settled",
           "settlement.skipped": "settled", "settlement.released": "settled",
           "settlement.resolved": "settled"}


def count_outcomes(ports: Ports, committed: Committed) -> None:
    """After commit: the class's validation failure and retry rates, kept as running
    totals. Best effort by design: statistics never fail a committed transition."""
    counts: dict[str, int] = {}
    for event in committed.events:
        if event.type in COUNTED:
            counts[COUNTED[event.type]] = counts.get(COUNTED[event.type], 0) + 1
        if event.type == "validation.failed":
            counts["validation_failures"] = counts.get("validation_failures", 0) + 1
        if event.state == State.RETRYING:          # whatever event names the retry
            counts["retries"] = counts.get("retries", 0) + 1
    if counts:
        try:
            ports.store.count(committed.after.kind, counts)
        except Exception:  # noqa: BLE001 - logged; the transition it counts is committed
            logger.warning("class statistics not updated", extra={"kind": committed.after.kind})


# Terminal states a commit moves a job into → the metric that counts it.
ENDED = {State.SETTLED: "JobSettled", State.FAILED: "JobFailed",
         State.CANCELLED: "JobCancelled", State.REJECTED: "JobRejected"}
# Money moved (or found moved) on chain → the metric that counts it.
SETTLEMENTS = {"settlement.released": "SettlementReleased",
               "settlement.refunded": "SettlementRefunded",
               "settlement.reclaimed": "SettlementReclaimed",
               "settlement.forfeited": "SettlementForfeited",
               "settlement.resolved": "SettlementResolved",
               "settlement.skipped": "SettlementSkipped"}


def emit_metrics(ports: Ports, committed: Committed) -> None:
    """After commit: the stage's metrics, by job class (`kind`) and reason — jobs created,
    ended (settled, failed, cancelled, rejected), validation failures, retries, settlement
    outcomes and the gas each chain transaction used (a batch's split between its jobs).
    Best effort: a metric never fails a committed transition."""
    try:
        _emit(committed)
    except Exception:  # noqa: BLE001 - logged; the transition it measures is committed
        logger.warning("metrics not recorded", extra={"job_id": committed.after.job_id})


def _emit(committed: Committed) -> None:
    job = committed.after
    kind, tag = job.kind, {"job_id": job.job_id}
    if committed.before is None and job.state != State.REJECTED:
        metrics.count("JobCreated", kind=kind, metadata=tag)
    if committed.moved() and job.state in ENDED:
        reasons = {"reason": job.reason or "unknown"} if job.state in (
            State.FAILED, State.REJECTED) else {}
        sources = {"source": job.source} if job.state == State.REJECTED else {}
        metrics.count(ENDED[job.state], kind=kind, metadata=tag, **reasons, **sources)
    for event in committed.events:
        reason = event.data.get("reason") or "unknown"
        if event.type == "validation.failed":
            metrics.count("ValidationFailed", kind=kind, reason=reason, metadata=tag)
        if event.state == State.RETRYING:
            metrics.count("Retry", kind=kind, reason=reason, metadata=tag)
        if event.type in SETTLEMENTS:
            metrics.count(SETTLEMENTS[event.type], kind=kind, metadata=tag)
        gas = event.data.get("gas_used")
        if isinstance(gas, int) and gas > 0:
            metrics.add("GasUsed", gas / max(1, int(event.data.get("batch") or 1)), "Count",
                        action=event.type, metadata=tag)


def class_rates(ports: Ports, kind: str) -> dict:
    totals = ports.store.counts(kind)
    validations, retries = totals.get("validations", 0), totals.get("retries", 0)
    finished = totals.get("settled", 0) + totals.get("failed", 0)
    return {**totals,
            "validation_failure_rate": round(totals.get("validation_failures", 0)
                                             / validations, 4) if validations else None,
            "retry_rate": round(retries / finished, 4) if finished else None}


def retry_or_fail(job: Job, job_class: JobClass, *, at: datetime, reason: str, event: str,
                  data: dict, failed_attempt: Attempt) -> tuple[Job, list[Event], list[Attempt]]:
    """After a lost or rejected attempt: a fresh attempt while attempts remain, else failed.
    `event` names what happened to the attempt (execution.failed, validation.failed, …)."""
    if job.attempt >= job.max_attempts:
        noted, e1 = states.note(job, event, at=at, data={**data, "reason": reason})
        failed, e2 = states.transition(noted, State.FAILED, at=at, reason="attempts_exhausted",
                                       data={"reason": "attempts_exhausted", "last": reason,
                                             "attempts": job.attempt})
        return failed, [e1, e2], [failed_attempt]
    retrying, e1 = states.transition(job, State.RETRYING, at=at, event=event,
                                     data={**data, "reason": reason})
    assigned, attempt, e2 = assign(retrying, job_class, at)
    return assigned, [e1, e2], [failed_attempt, attempt]


def assign(job: Job, job_class: JobClass, at: datetime,
           **routing_inputs) -> tuple[Job, Attempt, Event]:
    """Route the job and open its next attempt."""
    assignment = route(job_class, job, now=at.timestamp(), **routing_inputs)
    number = job.attempt + 1
    changes = {}
    if job.escrow and job.worker and assignment.worker != job.worker:
        changes["escrow"] = job.escrow.model_copy(update={"reassigned": True})
    moved, event = states.transition(job, State.ASSIGNED, at=at,
                                     data={"attempt": number, **assignment.as_event()},
                                     attempt=number, worker=assignment.worker, **changes)
    return moved, Attempt(job_id=job.job_id, number=number, worker=assignment.worker,
                          state="assigned"), event


LISTED = ("job_id", "kind", "state", "profile", "source", "attempt", "reason", "created_at",
          "updated_at")


def list_jobs(ports: Ports, state: State | None, limit: int, client: str | None = None,
              cursor: str | None = None) -> dict:
    """One page of jobs, newest first, each as a summary (no prompt, texts or links: those
    are in `GET /jobs/{id}`), and the cursor of the next page (None on the last)."""
    jobs = ports.store.list(state, limit, client=client, before=bodies.cursor(cursor))
    return {"jobs": [summary(job) for job in jobs],
            "next": stamp(jobs[-1].created_at) if len(jobs) == limit else None}


def summary(job: Job) -> dict:
    doc = job.model_dump(mode="json", include=set(LISTED))
    return {**doc, "client_did": job.manifest.client_did, "input_uri": job.manifest.input_uri,
            "input_hash": job.manifest.input_hash}
