"""Assignment: which worker or pool runs a job, decided by the router (`router.rank`) over
the candidates the control plane holds, with the ranking and its reasons on the timeline.

The built-in pools are candidates like any other: trusted, verified for the classes they
serve by construction, always fresh, their models kept loaded, and the policy's fallback.
Marketplace workers become candidates once challenge jobs verify them and leases can carry
their work; until then the pool of the job's class is the only candidate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from .catalog import JobClass
from .models import Job
from .router import Candidate, JobRequirements, RoutingPolicy, capability, rank


@dataclass(frozen=True)
class Assignment:
    worker: str
    queue: str
    reason: str
    ranking: dict

    def as_event(self) -> dict:
        return {"worker": self.worker, "queue": self.queue, "reason": self.reason,
                "ranking": self.ranking}


def pool_candidate(job_class: JobClass, *, now: float) -> Candidate:
    tokens = {capability("class", job_class.name)}
    if job_class.model:
        tokens.add(capability("model", job_class.model))
    return Candidate(worker=f"pool:{job_class.pool}", region="pool",
                     price_per_unit={job_class.name: Decimal(0)}, last_heartbeat=now,
                     verified=frozenset(tokens),
                     warm_models=frozenset({job_class.model}) if job_class.model else frozenset(),
                     gpus_free=1, gpu_memory_free_mb=1 << 20, memory_free_mb=1 << 20,
                     trusted=True)


def route(job_class: JobClass, job: Job, *, now: float | None = None) -> Assignment:
    """Rank the candidates for `job`; the class's pool is also the fallback."""
    now = time.time() if now is None else now
    pool = pool_candidate(job_class, now=now)
    ranking = rank(JobRequirements.of(job_class, job.manifest), [pool],
                   RoutingPolicy(fallback=pool.worker), now=now)
    return Assignment(worker=ranking.chosen[0], queue=job_class.pool, reason=ranking.reason,
                      ranking=ranking.as_event())
