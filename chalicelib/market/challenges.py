"""Challenge jobs: claims are not facts. A worker that claims a job class is given a real
job of that class, on a clip the control plane keeps, whose every task is offered to that
worker alone and verified like any client's work. It passes, and the class is verified for
`capability_ttl_s`; a task fails, and the class is not (the worker is never routed for it).
Heartbeats start a fresh challenge when a verification nears its end.

Only classes listed in CHALLENGES can be challenged; a worker claiming another one stays
unverified for it (`unavailable`), so it is never routed there.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from aws_lambda_powertools import Logger

from chalicelib.aws.blobs import S3Uri
from chalicelib.bus import Committed
from chalicelib.context import Ports
from chalicelib.jobs import lifecycle as jobs
from chalicelib.market.registry import Challenge, Worker
from chalicelib.market.router import capability
from chalicelib.market.workers import challenged
from chalicelib.models import Job, Manifest, State

logger = Logger(child=True)


@dataclass(frozen=True)
class ChallengeSpec:
    clips: str | None = None          # a prefix in the artifacts bucket: the pool of inputs
    texts: int = 0                    # or this many sentences made from SENTENCE_PARTS
    prompt: bool = False              # or a prompt made from PROMPT_PARTS


CHALLENGES = {
    # Any clip an operator keeps under the prefix (`proofline ops seed-challenges` adds more).
    "ffmpeg_hls": ChallengeSpec(clips="challenges/ffmpeg_hls/"),
    # Re-executed in full on the trusted pool, so every vector must match.
    "embed_batch": ChallengeSpec(texts=6),
    "generate_small": ChallengeSpec(prompt=True),
}
# Inline challenges are drawn from these (thousands of combinations), so a worker cannot
# keep a list of the texts it will be challenged with.
SENTENCE_PARTS = (
    ("The verifier", "A worker", "The escrow", "Each segment", "A client", "The router",
     "Every heartbeat", "The sweeper", "An auditor", "The pool"),
    ("checks", "pays for", "encodes", "signs", "re-executes", "measures", "routes", "keeps",
     "compares", "records"),
    ("the output hash", "a ladder of renditions", "the sampled frames", "its signed result",
     "the embedding vectors", "a lease past its deadline", "the source segment",
     "the dispute window", "a batch of texts", "the job's timeline"),
    ("before it is paid.", "on the trusted pool.", "within the hour.", "as the contract will.",
     "for every client.", "without a second try.", "at the edge of the network.",
     "before the deadline passes.", "in one transaction.", "with its own key."),
)
PROMPT_PARTS = (
    ("Write about", "Describe", "Explain", "Tell a story about", "Summarize"),
    ("a lighthouse", "verifiable compute", "a river at night", "an old train station",
     "a market at dawn", "the first snow", "a quiet library", "a ship leaving port"),
)
RECHECK_FRACTION = 0.1                # re-challenge in the last tenth of a verification
ABSENCE = frozenset({"offer_lapsed", "lease_expired", "lease_released", "lease_lost"})


def due(worker: Worker, now: datetime, ttl_s: int, retry_after_s: int = 3600) -> list[str]:
    """The claimed classes that need a challenge now: never tried, failed by absence at
    least `retry_after_s` ago (a silent key's heartbeats cannot start one after another), or
    verified but close to expiry. A pending one, or one failed by a wrong output, is not."""
    classes = []
    for job_class in worker.claims.job_classes:
        last = worker.challenges.get(job_class)
        verified = worker.verified.get(job_class)
        if last is None or (last.state == "failed" and last.retryable
                            and (now - last.at).total_seconds() >= retry_after_s):
            classes.append(job_class)
        elif (last.state == "passed" and verified is not None
              and (verified.expires_at - now).total_seconds() < ttl_s * RECHECK_FRACTION):
            classes.append(job_class)
    return classes


def start(ports: Ports, worker: Worker, job_class: str) -> Challenge:
    """A challenge job shaped like a client's: a job id of the same form, an input drawn from
    a pool, the class's usual profile and attempts. Only the control plane knows."""
    now = ports.clock()
    spec = CHALLENGES.get(job_class)
    inputs = _inputs(ports, spec, job_class) if spec else None
    if inputs is None:
        outcome = Challenge(state="unavailable", at=now,
                            reason=f"no challenge is kept for {job_class}")
    else:
        # One try for the worker: a wrong output fails the challenge (a transcode's tasks
        # get one attempt each, `plan_job`; a whole inference job one attempt). The worker is
        # never told the limit.
        tries = {} if spec.clips else {"max_attempts": 1}
        manifest = Manifest(kind=job_class, payment_policy="none", **tries, **inputs)
        job, _ = jobs.accept(ports, manifest,
                             job_id=jobs.derive_job_id(f"challenge:{secrets.token_hex(16)}"),
                             source="challenge", challenge=worker.did)
        outcome = Challenge(job_id=job.job_id, state="pending", at=now)
    challenged(ports.workers, worker.did, job_class, outcome, now=now,
               ttl_s=ports.settings.capability_ttl_s)
    logger.info("challenge", extra={"worker": worker.did, "job_class": job_class,
                                    "state": outcome.state, "job_id": outcome.job_id})
    return outcome


def _inputs(ports: Ports, spec: ChallengeSpec, job_class: str) -> dict | None:
    pick = secrets.SystemRandom()
    if spec.clips:
        keys = ports.blobs.list_keys(S3Uri(ports.settings.artifacts_bucket, spec.clips))
        if not keys:
            return None
        profiles = sorted(ports.catalog.job_class(job_class).profiles)
        return {"input_uri": str(S3Uri(ports.settings.artifacts_bucket, pick.choice(keys))),
                "profile": pick.choice(profiles) if profiles else None}
    if spec.texts:
        return {"texts": [" ".join(pick.choice(part) for part in SENTENCE_PARTS)
                          for _ in range(spec.texts)]}
    return {"prompt": " ".join(pick.choice(part) for part in PROMPT_PARTS) + ".",
            "max_tokens": 16, "seed": pick.randrange(1 << 16)}


def enrol(ports: Ports, worker: Worker) -> Worker:
    """Start the challenges `worker` is due (on registration, and from heartbeats later);
    returns the worker as stored after them."""
    classes = due(worker, ports.clock(), ports.settings.capability_ttl_s,
                  ports.settings.rechallenge_s)
    for job_class in classes:
        start(ports, worker, job_class)
    return ports.workers.get(worker.did) if classes else worker


def settle(ports: Ports, job: Job, *, passed: bool, reason: str | None = None,
           task: str | None = None) -> None:
    """A challenge job ended: verify the class, or record why not. A worker that was away
    (offer or lease lapsed, lease given back) is challenged again at its next heartbeat; one
    whose output failed verification is not. A challenge that failed while a pool held the
    job (planning a transcode) was the control plane's fault, and is retried too, as is one
    an operator cancelled: a cancel never counts against a worker."""
    if not job.challenge:
        return
    outcome = Challenge(job_id=job.job_id, state="passed" if passed else "failed",
                        at=ports.clock(), reason=reason, task=task,
                        retryable=not passed and (
                            reason in ABSENCE or job.state == State.CANCELLED
                            or (task is None and job.worker != job.challenge)))
    model = ports.catalog.job_class(job.kind).model
    challenged(ports.workers, job.challenge, job.kind, outcome, now=outcome.at,
               ttl_s=ports.settings.capability_ttl_s,
               tokens=[capability("model", model)] if model else [])


def close_challenge(ports: Ports, committed: Committed) -> None:
    """After commit: a challenge job that just ended verifies its worker's class, or not,
    and says why."""
    job, before = committed.after, committed.before
    if not job.challenge or not job.state.terminal or (before and before.state.terminal):
        return
    last = next((e.data for e in reversed(committed.events) if e.state == job.state), {})
    settle(ports, job, passed=job.state == State.SETTLED,
           reason=last.get("last") or job.reason, task=last.get("task"))
