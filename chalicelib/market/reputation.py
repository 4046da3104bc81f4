"""Reputation: what a worker's past attempts at one job class say about its next one.

Built only from outcomes the control plane observed (a verdict, a lease it saw expire, a
dispute), never from what a worker says of itself. Values are immutable; `record` returns
the next one. Pure: no clock, no I/O; every time comes in as `at`/`now`.

Score (in [0, 1]), a Beta-smoothed pass rate with recent timeouts weighing more:

    failures = validation_failures + DISPUTE_WEIGHT × disputes + recent_timeouts(now)
    score    = (PRIOR_PASSES + completions)
               / (PRIOR_PASSES + PRIOR_FAILURES + completions + failures)

    recent_timeouts(now) = Σ over timeouts and lost leases of 0.5 ** (age_days / HALF_LIFE)

With the Beta(2, 2) prior a new worker scores 0.5, one failure takes it to 0.4 and one pass
to 0.6: one outcome never settles a worker's standing. A timeout counts as a whole failure
the day it happens and half of one TIMEOUT_HALF_LIFE_DAYS later, so a worker that was
unreliable a month ago and sound since recovers, while one that times out now cannot hide
behind an old record.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Mapping, get_args

Outcome = Literal["passed", "validation_failed", "timeout", "lost", "disputed"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))

PRIOR_PASSES = 2.0
PRIOR_FAILURES = 2.0
NEUTRAL_SCORE = PRIOR_PASSES / (PRIOR_PASSES + PRIOR_FAILURES)
DISPUTE_WEIGHT = 2.0              # a bad result that got paid costs more than one caught early
TIMEOUT_HALF_LIFE_DAYS = 7.0
RUNTIME_WINDOW = 50               # runtimes kept per hardware class: the median follows drift
MAX_HARDWARE_CLASSES = 8          # bounds the stored item; the least recently used goes first
UNSPECIFIED_HARDWARE = "unspecified"
_DAY_S = 86_400.0


@dataclass(frozen=True)
class Reputation:
    worker: str
    job_class: str
    completions: int = 0
    verified_units: float = 0.0       # how much verified work, in the class's units
    validation_failures: int = 0
    timeouts: int = 0
    lost: int = 0
    disputes: int = 0
    decayed_timeouts: float = 0.0     # timeouts + lost leases, decayed to `decayed_as_of`
    decayed_as_of: datetime | None = None
    runtimes_s: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    # -- counts and rates -----------------------------------------------------------------
    @property
    def attempts(self) -> int:
        return (self.completions + self.validation_failures + self.timeouts + self.lost
                + self.disputes)

    @property
    def completion_rate(self) -> float | None:
        """Attempts that passed verification and stood; None before the first attempt."""
        return self.completions / self.attempts if self.attempts else None

    @property
    def verification_failure_rate(self) -> float | None:
        """Of the results the worker delivered, those that failed a check or a dispute."""
        delivered = self.completions + self.validation_failures + self.disputes
        return (self.validation_failures + self.disputes) / delivered if delivered else None

    @property
    def timeout_rate(self) -> float | None:
        """Attempts that ran out of time or whose lease the worker let lapse, all time."""
        return (self.timeouts + self.lost) / self.attempts if self.attempts else None

    @property
    def availability(self) -> float | None:
        """Attempts where the worker held its lease until it reported anything at all."""
        return 1.0 - self.lost / self.attempts if self.attempts else None

    # -- time-weighted ----------------------------------------------------------------------
    def recent_timeouts(self, now: datetime | None = None) -> float:
        """Timeouts and lost leases, each weighted 0.5 ** (age in half-lives) at `now`
        (default: the last outcome)."""
        if self.decayed_as_of is None:
            return 0.0
        now = now or self.last_seen or self.decayed_as_of
        return self.decayed_timeouts * _decay(self.decayed_as_of, now)

    def score_at(self, now: datetime | None) -> float:
        failures = (self.validation_failures + DISPUTE_WEIGHT * self.disputes
                    + self.recent_timeouts(now))
        passes = PRIOR_PASSES + self.completions
        return passes / (passes + PRIOR_FAILURES + failures)

    @property
    def score(self) -> float:
        """The score as of the last recorded outcome; `score_at(now)` lets timeouts age."""
        return self.score_at(None)

    def median_runtime_s(self, hardware: str | None = None) -> float | None:
        """Median of the recent passed runtimes on `hardware` (every class when None)."""
        if hardware is None:
            window = [r for runs in self.runtimes_s.values() for r in runs]
        else:
            window = list(self.runtimes_s.get(hardware, ()))
        return statistics.median(window) if window else None

    # -- storage ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "job_class": self.job_class,
                "completions": self.completions, "verified_units": self.verified_units,
                "validation_failures": self.validation_failures,
                "timeouts": self.timeouts, "lost": self.lost, "disputes": self.disputes,
                "decayed_timeouts": self.decayed_timeouts,
                "decayed_as_of": _iso(self.decayed_as_of),
                "runtimes_s": {hw: list(runs) for hw, runs in self.runtimes_s.items()},
                "first_seen": _iso(self.first_seen), "last_seen": _iso(self.last_seen)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Reputation":
        return cls(worker=data["worker"], job_class=data["job_class"],
                   completions=int(data.get("completions", 0)),
                   verified_units=float(data.get("verified_units", 0.0)),
                   validation_failures=int(data.get("validation_failures", 0)),
                   timeouts=int(data.get("timeouts", 0)), lost=int(data.get("lost", 0)),
                   disputes=int(data.get("disputes", 0)),
                   decayed_timeouts=float(data.get("decayed_timeouts", 0.0)),
                   decayed_as_of=_parse(data.get("decayed_as_of")),
                   runtimes_s={hw: tuple(float(r) for r in runs)
                               for hw, runs in (data.get("runtimes_s") or {}).items()},
                   first_seen=_parse(data.get("first_seen")),
                   last_seen=_parse(data.get("last_seen")))


def record(rep: Reputation, outcome: Outcome, *, at: datetime, runtime_s: float | None = None,
           hardware: str | None = None, units: float = 0.0) -> Reputation:
    """The reputation after one more observed outcome. Only a passed attempt's runtime joins
    the median: a timeout has none, and a rejected result's says nothing about honest work.
    Outcomes may arrive out of order; the decay uses each one's own `at`."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {sorted(OUTCOMES)}")
    if at.tzinfo is None:
        raise ValueError("`at` needs a timezone")
    if not (math.isfinite(units) and units >= 0):
        raise ValueError(f"units must be a non-negative number, not {units!r}")
    if runtime_s is not None and not runtime_s >= 0:
        raise ValueError(f"runtime_s must be a non-negative number, not {runtime_s!r}")
    changes: dict[str, Any] = {
        "first_seen": at if rep.first_seen is None else min(rep.first_seen, at),
        "last_seen": at if rep.last_seen is None else max(rep.last_seen, at)}
    if outcome == "passed":
        changes["completions"] = rep.completions + 1
        changes["verified_units"] = rep.verified_units + units
        if runtime_s is not None:
            changes["runtimes_s"] = _with_runtime(rep.runtimes_s,
                                                  hardware or UNSPECIFIED_HARDWARE, runtime_s)
    elif outcome == "validation_failed":
        changes["validation_failures"] = rep.validation_failures + 1
    elif outcome == "disputed":
        changes["disputes"] = rep.disputes + 1
    else:
        counter = "timeouts" if outcome == "timeout" else "lost"
        changes[counter] = getattr(rep, counter) + 1
        if rep.decayed_as_of is None:
            changes.update(decayed_timeouts=1.0, decayed_as_of=at)
        elif at >= rep.decayed_as_of:
            changes.update(decayed_timeouts=rep.decayed_timeouts * _decay(rep.decayed_as_of, at)
                           + 1.0, decayed_as_of=at)
        else:
            changes["decayed_timeouts"] = rep.decayed_timeouts + _decay(at, rep.decayed_as_of)
    return replace(rep, **changes)


def _with_runtime(runtimes: Mapping[str, tuple[float, ...]], hardware: str,
                  runtime_s: float) -> dict[str, tuple[float, ...]]:
    updated = {hw: runs for hw, runs in runtimes.items() if hw != hardware}
    updated[hardware] = (*runtimes.get(hardware, ()), float(runtime_s))[-RUNTIME_WINDOW:]
    while len(updated) > MAX_HARDWARE_CLASSES:
        del updated[next(iter(updated))]
    return updated


def _decay(since: datetime, until: datetime) -> float:
    age_days = max(0.0, (until - since).total_seconds() / _DAY_S)
    return 0.5 ** (age_days / TIMEOUT_HALF_LIFE_DAYS)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
