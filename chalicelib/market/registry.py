"""Worker records: who offers to work, what they claim, what was verified, how healthy.

Claims are not facts: a worker becomes routable for a job class only once a challenge job of
that class passed verification, and that is stored apart from the claims (when, how, until
when). Pure models: `aws.workerstore` keeps them, `market.workers` changes them.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.errors import JobNotFound
from chalicelib.market.reputation import Reputation
from chalicelib.market.router import Candidate, Standing, capability
from chalicelib.models import Did

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


_Name = Annotated[str, Field(min_length=1, max_length=64)]
_Model = Annotated[str, Field(min_length=1, max_length=128)]


class Claims(_Strict):
    """What a worker says it can do. Only ever used after a challenge confirmed it. Every
    collection is bounded: a registration is a few hundred bytes, never a megabyte."""
    job_classes: Annotated[list[_Name], Field(min_length=1, max_length=32)]
    runtimes: Annotated[dict[_Name, Annotated[str, Field(max_length=64)]],
                        Field(max_length=32)] = Field(default_factory=dict)
    codecs: Annotated[list[Annotated[str, Field(max_length=32)]],
                      Field(max_length=32)] = Field(default_factory=list)
    hardware: Hardware = Hardware()
    models_cached: Annotated[list[_Model], Field(max_length=32)] = Field(default_factory=list)
    region: Annotated[str, Field(pattern=r"^[a-z]{2}-[a-z]+-[0-9]$")]
    price_per_unit: Annotated[dict[_Name, Annotated[Decimal, Field(
        ge=0, max_digits=36, decimal_places=18, allow_inf_nan=False)]], Field(max_length=32)]


class Health(_Strict):
    cpu_free: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    gpu_free: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    memory_free_gb: Annotated[float, Field(ge=0, le=1 << 20, allow_inf_nan=False)] | None = None
    disk_free_gb: Annotated[float, Field(ge=0, le=1 << 30, allow_inf_nan=False)] | None = None
    queue_depth: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    versions: Annotated[dict[_Name, Annotated[str, Field(max_length=64)]],
                        Field(max_length=16)] = Field(default_factory=dict)
    models_loaded: Annotated[list[_Model], Field(max_length=32)] = Field(default_factory=list)
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
        for challenge in doc["challenges"].values():
            if challenge["state"] == "pending":     # which job is the test stays unknown
                challenge["job_id"] = None
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


# -- what a worker reports beside a result ----------------------------------------------------
# Stored on the timeline and shown by the API, never trusted by the verifier: strict, finite
# and bounded, so a worker cannot make a view fail or grow without limit.
_Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
_Count = Annotated[int, Field(ge=0, le=10_000_000)]


class SegmentExecution(_Strict):
    wall_s: _Seconds | None = None
    exit_code: Annotated[int, Field(ge=-255, le=255)] | None = None
    ffmpeg: Annotated[str, Field(max_length=64)] | None = None
    stderr_tail: Annotated[str, Field(max_length=2000)] | None = None
    cpu_s: _Seconds | None = None             # this task's share of its run's CPU time
    renditions_in_run: Annotated[int, Field(ge=1, le=16)] | None = None


class ModelExecution(_Strict):
    model: Annotated[str, Field(max_length=128)] | None = None
    model_s: _Seconds | None = None
    cold_start_s: _Seconds | None = None
    warm: bool | None = None
    ttfb_s: _Seconds | None = None
    count: _Count | None = None
    dim: Annotated[int, Field(ge=0, le=65_536)] | None = None
    tokens: _Count | None = None


def execution_report(model: type[_Strict], value: Any) -> dict[str, Any]:
    """A worker's `execution` as the model allows it (absent fields left out); ValueError
    with the reason when it is not."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("execution must be an object")
    return model.model_validate(value).model_dump(exclude_none=True)
