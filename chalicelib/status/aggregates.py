"""The status page's figures as time buckets: what each committed change of a job adds to
its class's minute and hour, and what a page reads back from them. Pure.

A change counts once. Its contribution carries a key (the job and the sequence number of
the event that made it) and the adapter adds it only together with a marker of that key, so
a handler that runs again finds the marker and adds nothing. The page then reads a fixed
number of items (the last 60 minutes and 24 hours of each class), however many jobs ran.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterable, Mapping

from chalicelib.bus import Committed
from chalicelib.market.router import Candidate, capability
from chalicelib.models import State

# Time to settled, in seconds: each bucket counts the jobs that settled within its bound
# and above the one before (the last is open); the percentiles are read from them.
LATENCY_BOUNDS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, 7200, 86400, math.inf)


def latency_bucket(seconds: float) -> str:
    index = next(i for i, bound in enumerate(LATENCY_BOUNDS_S) if seconds <= bound)
    return f"latency_{index:02d}"


def minute_key(at: datetime) -> str:
    return "M#" + at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")


def hour_key(at: datetime) -> str:
    return "H#" + at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H")


@dataclass(frozen=True)
class Contribution:
    key: str                              # "<job id>#<event seq>": counted once
    kind: str
    at: datetime
    counts: Mapping[str, int] = field(default_factory=dict)


def contributions(committed: Committed) -> list[Contribution]:
    """What one committed change adds: settled (with its time to settled and what the
    client was charged), failed by reason, rejected, validations passed and failed, retries,
    releases and refunds on chain."""
    job = committed.after
    found = []
    for event in committed.events:
        counts: dict[str, int] = {}
        reason = str(event.data.get("reason") or job.reason or "unknown")
        if event.type == "validation.passed":
            counts["validated"] = 1
        elif event.type == "validation.failed":
            counts["validation_failed"] = 1
        elif event.type == "settlement.released":
            counts["releases"] = 1
        elif event.type == "settlement.refunded":
            counts["refunds"] = 1
        if event.state == State.RETRYING:
            counts["retries"] = 1
        if committed.moved() and event is _moving(committed):
            counts.update(_ended(job, event.at, reason))
        if counts:
            found.append(Contribution(key=f"{job.job_id}#{event.seq}", kind=job.kind,
                                      at=event.at, counts=counts))
    return found


def _moving(committed: Committed):
    """The event that took the job to its new state (the last one in it)."""
    return next((e for e in reversed(committed.events) if e.state == committed.after.state),
                None)


def _ended(job, at: datetime, reason: str) -> dict[str, int]:
    if job.state == State.SETTLED:
        counts = {"settled": 1,
                  latency_bucket(max(0.0, (at - job.created_at).total_seconds())): 1}
        if job.escrow is not None and job.escrow.charged:
            counts[f"charged:{job.escrow.symbol}:{job.escrow.decimals}"] = job.escrow.charged
        return counts
    if job.state == State.FAILED:
        return {"failed": 1, f"failed:{reason}": 1}
    if job.state == State.REJECTED:
        return {"rejected": 1}
    return {}


# -- reading ----------------------------------------------------------------------------------
def window_keys(now: datetime) -> tuple[str, str, str, str]:
    """(first minute, last minute, first hour, last hour) of the last hour and day."""
    return (minute_key(now - timedelta(minutes=59)), minute_key(now),
            hour_key(now - timedelta(hours=23)), hour_key(now))


def totals(buckets: Iterable[Mapping[str, int]]) -> dict[str, int]:
    summed: dict[str, int] = {}
    for bucket in buckets:
        for name, value in bucket.items():
            summed[name] = summed.get(name, 0) + value
    return summed


def figures(summed: Mapping[str, int]) -> dict:
    """What the page shows of one class over one window."""
    validated, invalid = summed.get("validated", 0), summed.get("validation_failed", 0)
    settled, failed = summed.get("settled", 0), summed.get("failed", 0)
    charged = {name.split(":")[1]: (_amount(value, int(name.split(":")[2])),
                                    int(name.split(":")[2]))
               for name, value in summed.items() if name.startswith("charged:")}
    return {
        "settled": settled, "failed": failed, "rejected": summed.get("rejected", 0),
        "failed_by_reason": {name.removeprefix("failed:"): value
                             for name, value in sorted(summed.items())
                             if name.startswith("failed:")},
        "validated": validated, "validation_failed": invalid,
        "validation_failure_rate": _rate(invalid, validated + invalid),
        "retries": summed.get("retries", 0),
        "retry_rate": _rate(summed.get("retries", 0), settled + failed),
        "time_to_settled_p50_s": percentile(summed, 0.50),
        "time_to_settled_p95_s": percentile(summed, 0.95),
        # What clients paid for settled jobs, per validated result (retries' results are
        # not results: a retry's cost is in the settled job's charge).
        # (to the token's own precision: a share of a base unit is not money)
        "cost_per_validated_result": {
            symbol: _text((amount / validated).quantize(Decimal(1).scaleb(-decimals)))
            if validated else None for symbol, (amount, decimals) in charged.items()},
        "charged": {symbol: _text(amount) for symbol, (amount, _) in charged.items()},
        "releases": summed.get("releases", 0), "refunds": summed.get("refunds", 0),
    }


def percentile(summed: Mapping[str, int], q: float) -> float | None:
    """The bound of the latency bucket the q-th settled job falls in (an upper bound)."""
    counts = [summed.get(f"latency_{i:02d}", 0) for i in range(len(LATENCY_BOUNDS_S))]
    total = sum(counts)
    if not total:
        return None
    rank, seen = math.ceil(q * total), 0
    for bound, count in zip(LATENCY_BOUNDS_S, counts):
        seen += count
        if seen >= rank:
            return None if math.isinf(bound) else float(bound)
    return None


def series(buckets: Mapping[str, Mapping[str, int]], now: datetime, name: str) -> list[int]:
    """`name` per minute over the last hour, oldest first, zeros where nothing happened."""
    return [buckets.get(minute_key(now - timedelta(minutes=59 - i)), {}).get(name, 0)
            for i in range(60)]


def hourly_series(buckets: Mapping[str, Mapping[str, int]], now: datetime,
                  name: str) -> list[int]:
    """`name` per hour over the last day, oldest first, the current hour (so far) last: the
    same 24 hour buckets as the day's figures, so the points add up to them."""
    return [buckets.get(hour_key(now - timedelta(hours=23 - i)), {}).get(name, 0)
            for i in range(24)]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _text(amount: Decimal) -> str:
    return f"{amount.normalize():f}"


def _amount(base_units: int, decimals: int) -> Decimal:
    return Decimal(base_units).scaleb(-decimals)


def workers_online(candidates: Iterable[Candidate], pools: Iterable[str], *, region: str,
                   now: float, heartbeat_ttl_s: float) -> list[dict]:
    """Workers with a fresh heartbeat, counted by job class, region and trust tier: the
    built-in pools (one per class in `pools`, in the stage's region, always online,
    trusted), marketplace workers verified for the class, and those only claiming it."""
    counted: dict[tuple[str, str, str], int] = {}
    for kind in pools:
        counted[(kind, region, "pool")] = 1
    for candidate in candidates:
        if now - candidate.last_heartbeat > heartbeat_ttl_s:
            continue
        for kind in candidate.price_per_unit:
            tier = "verified" if capability("class", kind) in candidate.verified else "claimed"
            key = (kind, candidate.region, tier)
            counted[key] = counted.get(key, 0) + 1
    return [{"job_class": kind, "region": region, "tier": tier, "online": count}
            for (kind, region, tier), count in sorted(counted.items())]
