"""Assignment: which worker or pool runs a job, decided by the router (`router.rank`) over
the candidates the control plane holds, with the ranking and its reasons on the timeline.

The built-in pools are candidates like any other: trusted, verified for the classes they
serve by construction, always fresh, their models kept loaded, and the policy's fallback.
Marketplace workers are candidates for the video tasks of transcodes (`route_segment`): the
unit is a megapixel-second of output, which the pool prices at the catalog's compute rate, so
a verified worker that asks less, and has earned its standing, wins the work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from chalicelib.catalog import JobClass
from chalicelib.market.router import Candidate, JobRequirements, RoutingPolicy, capability, rank
from chalicelib.models import Job, Task, is_marketplace


@dataclass(frozen=True)
class Assignment:
    worker: str
    queue: str
    reason: str
    ranking: dict

    def as_event(self) -> dict:
        return {"worker": self.worker, "queue": self.queue, "reason": self.reason,
                "ranking": self.ranking}


def pool_candidate(job_class: JobClass, *, now: float, price: Decimal = Decimal(0),
                   region: str = "pool") -> Candidate:
    tokens = {capability("class", job_class.name)}
    if job_class.model:
        tokens.add(capability("model", job_class.model))
    return Candidate(worker=f"pool:{job_class.pool}", region=region,
                     price_per_unit={job_class.name: price}, last_heartbeat=now,
                     verified=frozenset(tokens),
                     warm_models=frozenset({job_class.model}) if job_class.model else frozenset(),
                     gpus_free=1, gpu_memory_free_mb=1 << 20, memory_free_mb=1 << 20,
                     trusted=True)


def route(job_class: JobClass, job: Job, *, now: float | None = None,
          candidates: Sequence[Candidate] = (), pool_price: Decimal = Decimal(0),
          heartbeat_ttl_s: float = 60.0, allow_list: frozenset[str] = frozenset()) -> Assignment:
    """Rank the candidates for `job`; the class's pool is also the fallback. Marketplace
    `candidates` compete for whole jobs only where an escrow must name one payee (a
    transcode with escrow). A marketplace payee whose own attempt at a whole job was lost or
    refused does not get it back: it moves to the pool, which the escrow is re-assigned to
    (a transcode's payee moves when it fails one of its video tasks: media.tasks)."""
    now = time.time() if now is None else now
    pool = pool_candidate(job_class, now=now, price=pool_price)
    if job.escrow and is_marketplace(job.worker) and job_class.name not in MARKETPLACE_JOB_CLASSES:
        # A transcode's job-level attempt is the pool's (planning, assembly): its payee does
        # the video tasks, and a payee caught or lapsed on one of those moves there.
        return Assignment(worker=job.worker, queue=job_class.pool,
                          reason=f"{job.worker} is the escrow's payee; it keeps the job.",
                          ranking={"worker": job.worker, "chosen": [job.worker],
                                   "reason": "escrow payee", "ranked": [], "excluded": {}})
    if job.escrow and is_marketplace(job.worker):
        # The escrow's payee lost or failed its own attempt at a whole job: the work moves to
        # the pool, and the escrow is re-assigned, once. The chain allows no second move.
        reason = (f"{job.worker}, the escrow's payee, did not deliver; the work is redone by "
                  f"{pool.worker} and the escrow re-assigned to it (once).")
        return Assignment(worker=pool.worker, queue=job_class.pool, reason=reason,
                          ranking={"worker": pool.worker, "chosen": [pool.worker],
                                   "reason": "escrow payee moved", "from": job.worker,
                                   "ranked": [], "excluded": {}})
    ranking = rank(JobRequirements.of(job_class, job.manifest), [pool, *candidates],
                   RoutingPolicy(fallback=pool.worker, heartbeat_ttl_s=heartbeat_ttl_s,
                                 allow_list=allow_list), now=now)
    return Assignment(worker=ranking.chosen[0], queue=job_class.pool, reason=ranking.reason,
                      ranking=ranking.as_event())


# Job classes whose work marketplace workers can lease: a transcode's video tasks, and
# inference jobs whole.
MARKETPLACE_JOB_CLASSES = frozenset({"embed_batch", "generate_small"})
MARKETPLACE_CLASSES = frozenset({"ffmpeg_hls"}) | MARKETPLACE_JOB_CLASSES


def job_units(job: Job) -> Decimal:
    """Megapixel-seconds of output over the whole ladder: what a transcode is worth."""
    seconds = sum(Decimal(repr(s.get("duration_s", 0.0))) for s in job.plan.segments)
    return sum((Decimal(r["width"] * r["height"]) / Decimal(10**6) * seconds
                for r in job.plan.renditions), Decimal(0))


def task_units(job: Job, task: Task) -> Decimal:
    """Megapixel-seconds of output: what a segment task is priced in."""
    rendition = next(r for r in job.plan.renditions if r["name"] == task.rendition)
    return (Decimal(rendition["width"] * rendition["height"]) / Decimal(10**6)
            * Decimal(repr(task.duration_s)))


def route_segment(job_class: JobClass, job: Job, tasks: list[Task],
                  candidates: list[Candidate], *, pool_price: Decimal, heartbeat_ttl_s: float,
                  now: float, region: str | None = None) -> Assignment:
    """Rank the pool and the marketplace workers for the video tasks of one segment (its
    renditions, leased together). Workers whose attempt at any of them already failed are
    not asked again. The segment lives in the stage's `region`, as does the pool: a worker
    elsewhere has its transfer counted in its price."""
    pool = pool_candidate(job_class, now=now, price=pool_price, region=region or "pool")
    tried = {worker for task in tasks for worker in task.tried}
    others = [c for c in candidates if c.worker not in tried]
    policy = RoutingPolicy(fallback=pool.worker, heartbeat_ttl_s=heartbeat_ttl_s)
    segment = next((s for s in job.plan.segments if s.get("index") == tasks[0].index), {})
    units = sum((task_units(job, task) for task in tasks), Decimal(0))
    ranking = rank(JobRequirements.of(job_class, job.manifest, units=units,
                                      input_region=region,
                                      input_bytes=int(segment.get("size_bytes", 0))),
                   [pool, *others], policy, now=now)
    return Assignment(worker=ranking.chosen[0], queue=job_class.pool, reason=ranking.reason,
                      ranking=ranking.as_event())
