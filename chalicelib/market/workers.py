"""The worker registry's services: register and heartbeat (signed by the worker's DID),
and the facts the control plane records about a worker: outcomes that move its reputation,
and the challenges that verify its claimed classes."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

from chalicelib import callers
from chalicelib.aws.store import stamp
from chalicelib.aws.workerstore import WorkerStore
from chalicelib.errors import Conflict, InvalidRequest, ProoflineError, RateLimited
from chalicelib.identity.signing import address_of, parse_did, verify_request
from chalicelib.market.registry import (
    Challenge,
    Claims,
    Health,
    VerifiedCapability,
    Worker,
    WorkerNotFound,
)
from chalicelib.market.reputation import Outcome, Reputation, record
from chalicelib.models import is_marketplace


def page(ports, limit: int, cursor: str | None) -> dict:
    """One page of the registry, newest registration first, and the next page's cursor."""
    listed = ports.workers.list(limit, before=cursor)
    return {"workers": [w.public(ports.clock(), ports.settings.heartbeat_ttl_s) for w in listed],
            "next": stamp(listed[-1].registered_at) if len(listed) == limit else None}


def register(store: WorkerStore, did: str, address: str, claims: Claims, *,
             now: datetime) -> Worker:
    worker = Worker(did=did, address=address, claims=claims, registered_at=now, updated_at=now)
    store.create(worker)
    return worker


def heartbeat(store: WorkerStore, did: str, health: Health, *, now: datetime,
              min_interval_s: float = 0.0) -> Worker:
    """Record a heartbeat; one that comes sooner than `min_interval_s` after the last and
    changes nothing the router reads (whether it accepts work) is refused with 429, so a
    worker cannot make each of its heartbeats cost the control plane a write."""
    def change(worker: Worker) -> dict:
        last = worker.last_heartbeat
        same = worker.health is not None and worker.health.accepting == health.accepting
        if last and same and (now - last).total_seconds() < min_interval_s:
            wait = round(min_interval_s - (now - last).total_seconds(), 3)
            raise RateLimited(f"heartbeats at most every {min_interval_s} s",
                              details={"retry_after_s": wait})
        return {"health": health, "last_heartbeat": now}
    return _update(store, did, change, now)


def _update(store: WorkerStore, did: str, change, now: datetime, tries: int = 3) -> Worker:
    """Apply `change(worker) -> fields` conditionally on the version read; re-read on a race."""
    for _ in range(tries):
        worker = store.get(did)
        moved = worker.model_copy(update={**change(worker), "updated_at": now,
                                          "version": worker.version + 1})
        try:
            store.commit(worker, moved)
            return moved
        except Conflict:
            continue
    raise ProoflineError(f"worker {did} kept changing", reason="worker_busy")


def observe(store: WorkerStore, worker: str | None, job_class: str, outcome: Outcome, *,
            now: datetime, runtime_s: float | None = None, units: float = 0.0) -> None:
    """What an attempt of `worker` came to joins its reputation for the class: marketplace
    workers only (the pools are trusted), and not for a DID that never registered. A pass
    adds its `units` of work to the worker's verified history."""
    if not is_marketplace(worker):
        return
    try:
        record_outcome(store, worker, job_class, outcome, now=now, runtime_s=runtime_s,
                       units=units)
    except WorkerNotFound:
        pass


def history(store: WorkerStore | None, worker: str | None, job_class: str) -> Reputation:
    """A marketplace worker's verified history for the class, which thins its audits; an
    empty one for a pool, an unknown DID or a stage without a registry."""
    empty = Reputation(worker=worker or "", job_class=job_class)
    if store is None or not is_marketplace(worker):
        return empty
    try:
        stats = store.get(worker).reputation.get(job_class)
    except WorkerNotFound:
        return empty
    return Reputation.from_dict(stats) if stats else empty


def record_outcome(store: WorkerStore, did: str, job_class: str, outcome: Outcome, *,
                   now: datetime, runtime_s: float | None = None, units: float = 0.0) -> Worker:
    """Reputation moves with what the control plane observed of this worker's work."""
    def change(worker: Worker) -> dict:
        stats = worker.reputation.get(job_class)
        before = (Reputation.from_dict(stats) if stats
                  else Reputation(worker=did, job_class=job_class))
        after = record(before, outcome, at=now, runtime_s=runtime_s, units=units,
                       hardware=worker.claims.hardware.gpu or worker.claims.hardware.cpu)
        return {"reputation": {**worker.reputation, job_class: after.to_dict()}}
    return _update(store, did, change, now)


def challenged(store: WorkerStore, did: str, job_class: str, challenge: Challenge, *,
               now: datetime, ttl_s: int, tokens: list[str] | None = None) -> Worker:
    """Record a challenge's progress; a pass verifies the class until `ttl_s` from now, a
    failure withdraws any earlier verification of it."""
    def change(worker: Worker) -> dict:
        verified = dict(worker.verified)
        if challenge.state == "passed":
            verified[job_class] = VerifiedCapability(
                job_class=job_class, verified_at=now, expires_at=now + timedelta(seconds=ttl_s),
                how=f"challenge job {challenge.job_id} passed verification",
                challenge_job=challenge.job_id, tokens=tokens or [])
        elif challenge.state == "failed":
            verified.pop(job_class, None)
        return {"verified": verified, "challenges": {**worker.challenges, job_class: challenge}}
    return _update(store, did, change, now)


# -- signed requests from workers --------------------------------------------------------------
def signed(ports, headers, *, action: str, body: dict, did: str) -> str:
    """The DID that signed this request, which must be `did`; 401/403 otherwise."""
    try:
        parse_did(did)
    except ValueError:
        raise InvalidRequest(f"{did!r} is not a did:pkh", reason="invalid_did") from None
    return verify_request(headers, action=action, body=body,
                          domain=callers.signing_domain(ports, did),
                          now=time.time(), nonces=ports.nonces, expected_did=did)


def register_signed(ports, headers, body: dict) -> Worker:
    did = body.get("did") if isinstance(body, dict) else None
    if not isinstance(did, str):
        raise InvalidRequest("a registration names its did", reason="missing_field")
    did = signed(ports, headers, action="register", body=body, did=did)
    try:
        claims = Claims.model_validate(body.get("claims"))
    except ValueError as exc:
        raise InvalidRequest(f"claims are invalid: {exc}", reason="invalid_claims") from None
    return register(ports.workers, did, address_of(did), claims, now=ports.clock())


def heartbeat_signed(ports, headers, did: str, body: dict) -> Worker:
    if not isinstance(body, dict) or body.get("did") != did:
        raise InvalidRequest("a heartbeat's body names the worker's did", reason="did_mismatch")
    did = signed(ports, headers, action="heartbeat", body=body, did=did)
    try:
        health = Health.model_validate(body.get("health") or {})
    except ValueError as exc:
        raise InvalidRequest(f"health is invalid: {exc}", reason="invalid_health") from None
    return heartbeat(ports.workers, did, health, now=ports.clock(),
                     min_interval_s=ports.settings.heartbeat_min_interval_s)
