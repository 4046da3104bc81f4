"""What a verifier audits, drawn so that the worker cannot predict it.

Positions (frames, rows, windows) and the decision to audit a job at all come from
HMAC-SHA256 keyed by the stage's audit secret over the subject (job, task, attempt) and the
hashes the worker committed to in its signed result. The worker knows its hashes but not
the secret, so before it commits it cannot tell what will be checked, and no job id, attempt
or earlier job tells it either; once it has committed, the draw is fixed, so an operator
holding the secret can repeat the audit. Two stages with different secrets audit different
positions of the same result.

`caught_probability` states what an audit of that size guarantees: the chance that a
worker who faked a given fraction of the items would have had at least one of them drawn.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import random
from typing import Iterable

MIN_SECRET_BYTES = 16


class AuditSecretMissing(RuntimeError):
    """No audit secret: auditing with a guessable draw would be worse than not auditing."""


def audit_key(secret: bytes | str, *, subject: str, committed: Iterable[str]) -> bytes:
    """The key every draw for one committed result derives from."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise AuditSecretMissing(f"the audit secret needs at least {MIN_SECRET_BYTES} bytes")
    message = "\n".join([subject, *sorted(committed)]).encode()
    return hmac.new(raw, message, hashlib.sha256).digest()


def _rng(key: bytes, label: str) -> random.Random:
    return random.Random(hmac.new(key, label.encode(), hashlib.sha256).digest())


def draw(key: bytes, label: str, population: int, k: int) -> list[int]:
    """`k` distinct positions of `population` (all of them when k ≥ population), sorted."""
    if population <= 0:
        return []
    return sorted(_rng(key, label).sample(range(population), min(max(k, 0), population)))


def chance(key: bytes, label: str) -> float:
    """A number in [0, 1) only the secret's holder can foresee: audit when it is below a rate."""
    return _rng(key, label).random()


def caught_probability(population: int, audited: int, cheat_fraction: float) -> float:
    """P(at least one of `audited` positions drawn without replacement from `population`
    falls on one of the ceil(cheat_fraction × population) faked ones)."""
    if population <= 0 or cheat_fraction <= 0:
        return 0.0
    faked = min(population, math.ceil(cheat_fraction * population - 1e-9))
    audited = min(audited, population)
    if audited + faked > population:
        return 1.0
    missed = math.comb(population - faked, audited) / math.comb(population, audited)
    return 1.0 - missed


def audits_needed(population: int, cheat_fraction: float, confidence: float) -> int:
    """The fewest positions that catch a cheat of `cheat_fraction` with `confidence`."""
    for k in range(population + 1):
        if caught_probability(population, k, cheat_fraction) >= confidence:
            return k
    return population


TARGET_FRACTION = 0.05            # a cheat touching this share of the work …
TARGET_CONFIDENCE = 0.999         # … is caught at least this often by an untrusted audit
NEW_WORKER_JOBS = 5               # verified jobs before an untrusted worker's audit can thin


def items_to_audit(population: int, *, trusted: bool, verified_jobs: int, sample_rate: float,
                   floor: float, verified_items: float = math.inf) -> int:
    """How many of a job's `population` items (rows) to re-execute.

    The operator's pools: `sample_rate` of them. A marketplace worker: everything while it
    is new, or while this job holds more items than all its verified jobs together
    (`verified_items`: no earning trust on small jobs to cheat on a large one); then a share
    that falls with its verified history, never below `floor`, and never fewer than catch a
    cheat of TARGET_FRACTION with TARGET_CONFIDENCE."""
    if population <= 0:
        return 0
    if trusted:
        return max(1, math.ceil(population * sample_rate))
    share = max(floor, min(1.0, NEW_WORKER_JOBS / (NEW_WORKER_JOBS + verified_jobs)))
    if verified_jobs < NEW_WORKER_JOBS or population > verified_items:
        share = 1.0
    return min(population, max(math.ceil(population * share),
                               audits_needed(population, TARGET_FRACTION, TARGET_CONFIDENCE)))
