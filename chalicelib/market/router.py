"""Routing: rank the workers that could run a job and choose one (or k). Pure: the caller
holds the candidates and the clock; the ranking, with why, goes on the job's timeline.

The order of judgement:
 1. gates: verified capability for the job class (and its model, runtime and codecs where
    the job names them; claims never count), a heartbeat within the policy's TTL, free GPU
    and memory when the job needs them; private jobs only on trusted or allow-listed workers;
 2. reputation at least the policy's threshold;
 3. expected price = the worker's price per unit for the class × units + moving the input
    to the worker's region; no price for the class, or over the job's ceiling, excludes;
 4. what is left is scored, each factor in [0, 1], weighted by `Weights` (sum 1):
      reputation  the worker's score for this job class (reputation.py)
      price       cheapest expected price among the eligible / this one's (1 = cheapest)
      locality    1 in the input's region (or when the input has none), else 0
      timeouts    1 / (1 + recent timeouts), on top of what reputation already counts
      warm        1 when the job's model is already loaded (or the job has no model)
      health      1 - heartbeat age / TTL: a fresher heartbeat is likelier still there
 5. the best score wins; equal scores go to the smaller worker id, so a decision replays.
    With redundancy k, the k best distinct workers. When none qualifies, the policy's
    fallback pool (trusted, built in) takes the job; when fewer than k do, it makes one more.

Built for 10,000 candidates in a few milliseconds: candidates are slotted frozen dataclasses
read field by field in one loop; prices are Decimal, and a float copy serves only the price
ratio in the score; factor breakdowns are built for the top `policy.top_n` alone.
"""
from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from chalicelib.market.reputation import NEUTRAL_SCORE, Reputation

if TYPE_CHECKING:
    from chalicelib.catalog import JobClass
    from chalicelib.models import Manifest

BYTES_PER_GB = Decimal(10**9)        # transfer is billed per decimal GB

UNTRUSTED_FOR_PRIVATE = "untrusted_for_private"
NO_VERIFIED_CAPABILITY = "no_verified_capability"
STALE_HEARTBEAT = "stale_heartbeat"
NO_FREE_GPU = "no_free_gpu"
NOT_ENOUGH_MEMORY = "not_enough_memory"
BELOW_REPUTATION = "below_reputation"
NO_PRICE = "no_price"
OVER_PRICE = "over_price"


def capability(kind: str, name: str) -> str:
    """The token a verified capability is stored under, e.g. `model:<id>`; a worker earns
    one by passing a probe job of that kind, never by listing it."""
    return f"{kind}:{name}"


@dataclass(frozen=True, slots=True)
class Standing:
    """What reputation says of a worker for one job class when its candidate is loaded."""
    score: float = NEUTRAL_SCORE
    recent_timeouts: float = 0.0

    @classmethod
    def of(cls, reputation: Reputation, now: datetime) -> "Standing":
        return cls(reputation.score_at(now), reputation.recent_timeouts(now))


NEW_WORKER = Standing()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A worker (or a built-in pool, `pool:<name>`, trusted) as the router sees it."""
    worker: str
    region: str
    price_per_unit: Mapping[str, Decimal]        # by job class; a class unpriced is not offered
    last_heartbeat: float                        # epoch seconds, as observed by us
    verified: frozenset[str] = frozenset()       # capability tokens earned by probe jobs
    claimed: frozenset[str] = frozenset()        # advertised; shown to clients, never routed on
    standing: Mapping[str, Standing] = field(default_factory=dict)   # by job class
    warm_models: frozenset[str] = frozenset()
    gpus_free: int = 0
    gpu_memory_free_mb: int = 0
    memory_free_mb: int = 0
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class JobRequirements:
    job_class: str
    units: Decimal = Decimal(1)                  # what price_per_unit is multiplied by
    max_price: Decimal | None = None
    model: str | None = None
    runtime: str | None = None
    codecs: tuple[str, ...] = ()
    requires_gpu: bool = False
    gpu_memory_mb: int = 0
    memory_mb: int = 0
    input_region: str | None = None
    input_bytes: int = 0
    private: bool = False

    @property
    def needs(self) -> frozenset[str]:
        tokens = [capability("class", self.job_class)]
        if self.model:
            tokens.append(capability("model", self.model))
        if self.runtime:
            tokens.append(capability("runtime", self.runtime))
        tokens += [capability("codec", c) for c in self.codecs]
        return frozenset(tokens)

    @classmethod
    def of(cls, job_class: "JobClass", manifest: "Manifest", *, units: Decimal = Decimal(1),
           input_region: str | None = None, input_bytes: int = 0,
           **more: Any) -> "JobRequirements":
        """A job's requirements from its class and manifest; where its input lives and how
        big it is come from the caller, who has looked."""
        return cls(job_class=job_class.name, units=units, max_price=manifest.max_price,
                   model=manifest.model or job_class.model,
                   requires_gpu=job_class.requires_gpu, input_region=input_region,
                   input_bytes=input_bytes, private=manifest.data_sensitivity == "private",
                   **more)


@dataclass(frozen=True, slots=True)
class Weights:
    reputation: float = 0.25
    price: float = 0.30
    locality: float = 0.10
    timeouts: float = 0.15
    warm: float = 0.15
    health: float = 0.05

    def __post_init__(self) -> None:
        values = (self.reputation, self.price, self.locality, self.timeouts, self.warm,
                  self.health)
        if min(values) < 0 or abs(sum(values) - 1.0) > 1e-9:
            raise ValueError("weights must be non-negative and sum to 1")


@dataclass(frozen=True)
class RoutingPolicy:
    heartbeat_ttl_s: float = 60.0
    min_reputation: float = 0.4                  # below the new-worker prior lets newcomers in
    redundancy: int = 1
    fallback: str | None = None                  # e.g. "pool:media"
    allow_list: frozenset[str] = frozenset()     # untrusted workers cleared for private jobs
    transfer_per_gb: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    default_transfer_per_gb: Decimal = Decimal("0.02")   # between regions not listed
    weights: Weights = Weights()
    top_n: int = 20                              # ranked entries kept, with their factors

    def __post_init__(self) -> None:
        if self.redundancy < 1:
            raise ValueError("redundancy must be at least 1")
        if self.heartbeat_ttl_s <= 0:
            raise ValueError("heartbeat_ttl_s must be positive")

    def transfer_cost(self, input_region: str | None, worker_region: str,
                      input_bytes: int) -> Decimal:
        if input_region is None or input_region == worker_region or not input_bytes:
            return Decimal(0)
        rate = self.transfer_per_gb.get((input_region, worker_region),
                                        self.default_transfer_per_gb)
        return Decimal(input_bytes) / BYTES_PER_GB * rate


@dataclass(frozen=True, slots=True)
class Ranked:
    worker: str
    score: float
    expected_price: Decimal
    factors: dict[str, float]

    def as_event(self) -> dict[str, Any]:
        return {"worker": self.worker, "score": round(self.score, 4),
                "price": str(self.expected_price),
                "factors": {k: round(v, 4) for k, v in self.factors.items()}}


@dataclass(frozen=True)
class Ranking:
    job_class: str
    chosen: list[str]
    ranked: list[Ranked]                         # the best policy.top_n, best first
    eligible: int
    excluded: dict[str, str]                     # worker → reason code
    reason: str
    fallback: bool = False

    def excluded_by_reason(self, first: int = 3) -> dict[str, dict[str, Any]]:
        counts = Counter(self.excluded.values())
        examples: dict[str, list[str]] = {}
        for worker, why in self.excluded.items():
            ids = examples.setdefault(why, [])
            if len(ids) < first:
                ids.append(worker)
        return {why: {"count": counts[why], "first": examples[why]} for why in sorted(counts)}

    def as_event(self) -> dict[str, Any]:
        """For the `worker.assigned` event: the top of the ranking with every factor, and
        the excluded as counts by reason with a few ids each."""
        return {"worker": self.chosen[0] if self.chosen else None, "chosen": self.chosen,
                "job_class": self.job_class, "reason": self.reason, "fallback": self.fallback,
                "eligible": self.eligible, "ranked": [r.as_event() for r in self.ranked],
                "excluded": self.excluded_by_reason()}


def rank(job: JobRequirements, candidates: Sequence[Candidate], policy: RoutingPolicy, *,
         now: datetime | float) -> Ranking:
    now_s = now.timestamp() if isinstance(now, datetime) else float(now)
    needs = job.needs
    ttl = policy.heartbeat_ttl_s
    private, allowed = job.private, policy.allow_list
    gpu, gpu_mem, mem = job.requires_gpu, job.gpu_memory_mb, job.memory_mb
    min_rep = policy.min_reputation
    units, ceiling = job.units, job.max_price
    job_class, model, home = job.job_class, job.model, job.input_region
    transfer_by_region: dict[str, Decimal] = {}

    w = policy.weights
    w_rep, w_price, w_loc, w_to, w_warm, w_health = (w.reputation, w.price, w.locality,
                                                     w.timeouts, w.warm, w.health)
    excluded: dict[str, str] = {}
    # Parallel lists rather than a tuple per candidate: thousands of live tuples per call
    # would wake the cyclic garbage collector, whose full passes cost more than the ranking.
    picked: list[Candidate] = []
    standings: list[Standing] = []
    prices: list[Decimal] = []
    float_prices: list[float] = []
    partial: list[float] = []                    # the score but for price, known only at the end
    for c in candidates:
        if private and not c.trusted and c.worker not in allowed:
            excluded[c.worker] = UNTRUSTED_FOR_PRIVATE
        elif not needs <= c.verified:
            excluded[c.worker] = NO_VERIFIED_CAPABILITY
        elif (age := now_s - c.last_heartbeat) > ttl:
            excluded[c.worker] = STALE_HEARTBEAT
        elif gpu and (c.gpus_free < 1 or c.gpu_memory_free_mb < gpu_mem):
            excluded[c.worker] = NO_FREE_GPU
        elif c.memory_free_mb < mem:
            excluded[c.worker] = NOT_ENOUGH_MEMORY
        else:
            standing = c.standing.get(job_class, NEW_WORKER)
            if standing.score < min_rep:
                excluded[c.worker] = BELOW_REPUTATION
                continue
            transfer = transfer_by_region.get(c.region)
            if transfer is None:
                transfer = transfer_by_region[c.region] = policy.transfer_cost(
                    home, c.region, job.input_bytes)
            unit_price = c.price_per_unit.get(job_class)
            if unit_price is None:
                excluded[c.worker] = NO_PRICE
                continue
            price = unit_price * units + transfer
            if ceiling is not None and price > ceiling:
                excluded[c.worker] = OVER_PRICE
                continue
            picked.append(c)
            standings.append(standing)
            prices.append(price)
            float_prices.append(float(price))
            partial.append(w_rep * standing.score
                           + (w_loc if home is None or c.region == home else 0.0)
                           + w_to / (1.0 + standing.recent_timeouts)
                           + (w_warm if model is None or model in c.warm_models else 0.0)
                           + (w_health * (1.0 - age / ttl) if age > 0 else w_health))

    if not picked:
        return _nobody(job, policy, excluded)

    cheapest = min(float_prices)
    scores = [rest + w_price * (cheapest / p if p > 0 else 1.0)
              for rest, p in zip(partial, float_prices)]
    keep = max(policy.top_n, policy.redundancy)
    contenders: Sequence[int] = range(len(scores))
    if len(scores) > keep:
        floor = heapq.nlargest(keep, scores)[-1]
        contenders = [i for i, score in enumerate(scores) if score >= floor]
    top = sorted(contenders, key=lambda i: (-scores[i], picked[i].worker))[:keep]
    ranked = [_breakdown(picked[i], standings[i], prices[i], scores[i], job, ttl, now_s,
                         cheapest) for i in top]
    chosen, filled = _choose([picked[i].worker for i in top], policy)
    return Ranking(job_class=job_class, chosen=chosen, ranked=ranked, eligible=len(picked),
                   excluded=excluded, reason=_reason(job, policy, chosen, filled, ranked,
                                                     len(picked), len(excluded)))


def _choose(best_first: list[str], policy: RoutingPolicy) -> tuple[list[str], bool]:
    """The best distinct workers up to k; when fewer qualified, the fallback pool (if it is
    not among them) makes up one more, as it would have taken the job alone."""
    chosen: list[str] = []
    for worker in best_first:
        if worker not in chosen:
            chosen.append(worker)
            if len(chosen) == policy.redundancy:
                return chosen, False
    if policy.fallback and policy.fallback not in chosen:
        return [*chosen, policy.fallback], True
    return chosen, False


def _breakdown(c: Candidate, standing: Standing, price: Decimal, score: float,
               job: JobRequirements, ttl: float, now_s: float, cheapest: float) -> Ranked:
    p = float(price)
    age = max(0.0, now_s - c.last_heartbeat)
    return Ranked(worker=c.worker, score=score, expected_price=price, factors={
        "capability": 1.0,
        "health": 1.0 - age / ttl,
        "reputation": standing.score,
        "locality": 1.0 if job.input_region is None or c.region == job.input_region else 0.0,
        "price": cheapest / p if p > 0 else 1.0,
        "timeouts": 1.0 / (1.0 + standing.recent_timeouts),
        "warm": 1.0 if job.model is None or job.model in c.warm_models else 0.0})


def _reason(job: JobRequirements, policy: RoutingPolicy, chosen: list[str], filled: bool,
            ranked: list[Ranked], eligible: int, excluded: int) -> str:
    best = ranked[0]
    f = best.factors
    where = ("in the input's region" if job.input_region and f["locality"] else
             "away from the input" if job.input_region else "with no input to move")
    warm = (f", warm for {job.model}" if job.model and f["warm"] else
            f", cold for {job.model}" if job.model else "")
    ceiling = f" within the {job.max_price} ceiling" if job.max_price is not None else ""
    redundant = ""
    if policy.redundancy > 1:
        redundant = f"; for redundancy {policy.redundancy}: {', '.join(chosen)}"
        if len(chosen) - filled < policy.redundancy:
            redundant += f" (only {len(chosen) - filled} distinct qualified"
            redundant += f", so {policy.fallback} fills in)" if filled else ")"
    return (f"{best.worker} ranked first of {eligible} eligible ({excluded} excluded): score "
            f"{best.score:.3f}, reputation {f['reputation']:.2f}, {where}{warm}, expected "
            f"price {best.expected_price}{ceiling}{redundant}.")


def _nobody(job: JobRequirements, policy: RoutingPolicy, excluded: dict[str, str]) -> Ranking:
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(Counter(excluded.values()).items()))
    summary = f"no candidate qualified ({why or 'none offered'})"
    if policy.fallback:
        return Ranking(job_class=job.job_class, chosen=[policy.fallback], ranked=[], eligible=0,
                       excluded=excluded, fallback=True,
                       reason=f"{summary}; falling back to {policy.fallback}.")
    return Ranking(job_class=job.job_class, chosen=[], ranked=[], eligible=0,
                   excluded=excluded, reason=f"{summary}; no fallback pool is set.")
