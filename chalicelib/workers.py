"""The worker registry: who offers to work, what they claim, what was verified, how healthy.

Claims are not facts: a worker becomes routable for a job class only once a challenge job of
that class passed verification, and that is stored apart from the claims (when, how, until
when). Records live in the jobs table under `pk = WORKER#<did>`; the registry is listed
through the `by_state` index (state `worker`), so routing never scans.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from .errors import Conflict, JobNotFound, ProoflineError
from .models import Did, is_marketplace
from .reputation import Outcome, Reputation, record
from .router import Candidate, Standing, capability
from .store import stamp

WORKER_STATE = "worker"


class WorkerNotFound(JobNotFound):
    reason = "worker_not_found"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Hardware(_Strict):
    cpu: Annotated[str, Field(max_length=128)] | None = None
    cpu_cores: Annotated[int, Field(ge=1, le=1024)] | None = None
    gpu: Annotated[str, Field(max_length=128)] | None = None
    gpu_memory_gb: Annotated[float, Field(ge=0, le=4096)] | None = None
    memory_gb: Annotated[float, Field(ge=0, le=65536)] | None = None


class Claims(_Strict):
    """What a worker says it can do. Only ever used after a challenge confirmed it."""
    job_classes: Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1,
                                                                               max_length=32)]
    runtimes: dict[str, Annotated[str, Field(max_length=64)]] = Field(default_factory=dict)
    codecs: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list)
    hardware: Hardware = Hardware()
    models_cached: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list)
    region: Annotated[str, Field(pattern=r"^[a-z]{2}-[a-z]+-[0-9]$")]
    price_per_unit: dict[str, Annotated[Decimal, Field(ge=0, max_digits=36,
                                                       decimal_places=18)]]


class Health(_Strict):
    cpu_free: Annotated[float, Field(ge=0, le=1)] | None = None
    gpu_free: Annotated[float, Field(ge=0, le=1)] | None = None
    memory_free_gb: Annotated[float, Field(ge=0)] | None = None
    disk_free_gb: Annotated[float, Field(ge=0)] | None = None
    queue_depth: Annotated[int, Field(ge=0)] = 0
    versions: dict[str, Annotated[str, Field(max_length=64)]] = Field(default_factory=dict)
    models_loaded: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list)
    accepting: bool = True            # False while draining: finish the lease, take no more


class VerifiedCapability(BaseModel):
    job_class: str
    verified_at: datetime
    expires_at: datetime
    how: str                                  # e.g. "challenge job-… passed validation"
    challenge_job: str | None = None
    tokens: list[str] = Field(default_factory=list)   # more it proved, e.g. `model:<id>`


class Challenge(BaseModel):
    """The latest challenge job of one claimed class, and how it went."""
    job_id: str | None = None
    state: Literal["pending", "passed", "failed", "unavailable"]
    at: datetime
    reason: str | None = None
    task: str | None = None           # the task that failed it
    retryable: bool = False           # failed by absence, not by a wrong output


class Worker(BaseModel):
    did: Did
    address: str
    claims: Claims
    verified: dict[str, VerifiedCapability] = Field(default_factory=dict)
    challenges: dict[str, Challenge] = Field(default_factory=dict)
    health: Health | None = None
    last_heartbeat: datetime | None = None
    registered_at: datetime
    updated_at: datetime
    reputation: dict[str, dict[str, Any]] = Field(default_factory=dict)
    version: int = 1

    def verified_for(self, job_class: str, now: datetime) -> bool:
        capability = self.verified.get(job_class)
        return capability is not None and capability.expires_at > now

    def fresh(self, now: datetime, heartbeat_ttl_s: float) -> bool:
        return bool(self.last_heartbeat
                    and (now - self.last_heartbeat).total_seconds() <= heartbeat_ttl_s)

    def public(self, now: datetime, heartbeat_ttl_s: int) -> dict:
        doc = self.model_dump(mode="json")
        doc["routable_for"] = sorted(c for c in self.verified if self.verified_for(c, now))
        doc["heartbeat_fresh"] = self.fresh(now, heartbeat_ttl_s)
        for job_class, stats in doc["reputation"].items():
            rep = Reputation.from_dict(stats)
            stats.update(score=round(rep.score_at(now), 4),
                         completion_rate=rep.completion_rate,
                         verification_failure_rate=rep.verification_failure_rate,
                         timeout_rate=rep.timeout_rate,
                         median_runtime_s=rep.median_runtime_s())
        return doc

    def candidate(self, now: datetime) -> Candidate | None:
        """How the router sees this worker: verified capabilities only, never claims; None
        while it is draining or has never sent a heartbeat."""
        if not self.last_heartbeat or (self.health and not self.health.accepting):
            return None
        health = self.health or Health()
        hardware = self.claims.hardware
        return Candidate(
            worker=self.did, region=self.claims.region,
            price_per_unit=dict(self.claims.price_per_unit),
            last_heartbeat=self.last_heartbeat.timestamp(),
            verified=frozenset(token for c, v in self.verified.items()
                               if self.verified_for(c, now)
                               for token in (capability("class", c), *v.tokens)),
            claimed=frozenset(capability("class", c) for c in self.claims.job_classes),
            standing={c: Standing.of(Reputation.from_dict(r), now)
                      for c, r in self.reputation.items()},
            warm_models=frozenset(health.models_loaded),
            gpus_free=1 if hardware.gpu and (health.gpu_free or 0) > 0 else 0,
            gpu_memory_free_mb=int((hardware.gpu_memory_gb or 0) * (health.gpu_free or 0) * 1024),
            memory_free_mb=int((health.memory_free_gb or 0) * 1024))


class WorkerStore:
    CANDIDATES_MAX_AGE_S = 2.0        # a planner routes many tasks at once off one read

    def __init__(self, client, table: str):
        self._db = client
        self._table = table
        self._candidates: tuple[float, list[Worker]] | None = None

    def candidates(self, now: datetime) -> list[Candidate]:
        """The registry as the router sees it, read at most every CANDIDATES_MAX_AGE_S."""
        import time
        if self._candidates is None or time.monotonic() - self._candidates[0] > \
                self.CANDIDATES_MAX_AGE_S:
            self._candidates = (time.monotonic(), self.list())
        return [c for w in self._candidates[1] if (c := w.candidate(now)) is not None]

    def create(self, worker: Worker) -> None:
        try:
            self._put(worker, "attribute_not_exists(pk)", {})
        except _Moved:
            raise Conflict(f"worker {worker.did} is registered already",
                           reason="worker_exists") from None

    def commit(self, expected: Worker, worker: Worker) -> None:
        """Replace `expected` by `worker`; Conflict if it changed in between."""
        try:
            self._put(worker, "version = :expected",
                      {":expected": {"N": str(expected.version)}})
        except _Moved:
            raise Conflict(f"worker {worker.did} changed; try again",
                           reason="worker_changed") from None

    def get(self, did: str) -> Worker:
        item = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                 Key={"pk": {"S": _pk(did)}, "sk": {"S": "JOB"}}).get("Item")
        if not item:
            raise WorkerNotFound(f"no worker {did!r}")
        return Worker.model_validate_json(item["doc"]["S"])

    def list(self, limit: int = 1000) -> list[Worker]:
        workers: list[Worker] = []
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(TableName=self._table, IndexName="by_state",
                                       KeyConditionExpression="#s = :s",
                                       ExpressionAttributeNames={"#s": "state"},
                                       ExpressionAttributeValues={":s": {"S": WORKER_STATE}},
                                       PaginationConfig={"MaxItems": limit}):
            workers += [Worker.model_validate_json(i["doc"]["S"]) for i in page["Items"]]
        return workers

    def _put(self, worker: Worker, condition: str, values: dict) -> None:
        request = {"TableName": self._table, "ConditionExpression": condition,
                   "Item": {"pk": {"S": _pk(worker.did)}, "sk": {"S": "JOB"},
                            "state": {"S": WORKER_STATE},
                            "created_at": {"S": stamp(worker.registered_at)},
                            "version": {"N": str(worker.version)},
                            "doc": {"S": worker.model_dump_json()}}}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self._db.put_item(**request)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise _Moved() from exc
            raise


class _Moved(Exception):
    pass


def _pk(did: str) -> str:
    return f"WORKER#{did}"


def register(store: WorkerStore, did: str, address: str, claims: Claims, *,
             now: datetime) -> Worker:
    worker = Worker(did=did, address=address, claims=claims, registered_at=now, updated_at=now)
    store.create(worker)
    return worker


def heartbeat(store: WorkerStore, did: str, health: Health, *, now: datetime) -> Worker:
    return _update(store, did, lambda w: {"health": health, "last_heartbeat": now}, now)


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
            now: datetime, runtime_s: float | None = None) -> None:
    """What an attempt of `worker` came to joins its reputation for the class: marketplace
    workers only (the pools are trusted), and not for a DID that never registered."""
    if not is_marketplace(worker):
        return
    try:
        record_outcome(store, worker, job_class, outcome, now=now, runtime_s=runtime_s)
    except WorkerNotFound:
        pass


def record_outcome(store: WorkerStore, did: str, job_class: str, outcome: Outcome, *,
                   now: datetime, runtime_s: float | None = None) -> Worker:
    """Reputation moves with what the control plane observed of this worker's work."""
    def change(worker: Worker) -> dict:
        stats = worker.reputation.get(job_class)
        before = (Reputation.from_dict(stats) if stats
                  else Reputation(worker=did, job_class=job_class))
        after = record(before, outcome, at=now, runtime_s=runtime_s,
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


class DynamoNonceStore:
    """Nonces of signed requests, once each: a conditional put in the idempotency table,
    whose TTL removes them after the request's expiry."""

    def __init__(self, client, table: str):
        self._db = client
        self._table = table

    def use(self, did: str, nonce: int, expires_at: int) -> bool:
        try:
            self._db.put_item(TableName=self._table,
                              Item={"id": {"S": f"nonce#{did}#{nonce}"},
                                    "expiration": {"N": str(int(expires_at))}},
                              ConditionExpression="attribute_not_exists(id)")
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise


# -- signed requests from workers --------------------------------------------------------------
def signed(ports, headers, *, action: str, body: dict, did: str) -> str:
    """The DID that signed this request, which must be `did`; 401/403 otherwise."""
    import time
    from .signing import parse_did, verify_request
    try:
        chain_id = ports.settings.chain_id or parse_did(did)[0]
    except ValueError:
        from .errors import InvalidRequest
        raise InvalidRequest(f"{did!r} is not a did:pkh", reason="invalid_did") from None
    return verify_request(headers, action=action, body=body, chain_id=chain_id,
                          now=time.time(), nonces=ports.nonces, expected_did=did)


def register_signed(ports, headers, body: dict) -> Worker:
    from .errors import InvalidRequest
    from .signing import address_of
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
    from .errors import InvalidRequest
    if not isinstance(body, dict) or body.get("did") != did:
        raise InvalidRequest("a heartbeat's body names the worker's did", reason="did_mismatch")
    did = signed(ports, headers, action="heartbeat", body=body, did=did)
    try:
        health = Health.model_validate(body.get("health") or {})
    except ValueError as exc:
        raise InvalidRequest(f"health is invalid: {exc}", reason="invalid_health") from None
    return heartbeat(ports.workers, did, health, now=ports.clock())
