"""Where an assigned attempt goes: offered to the marketplace worker the router prefers
(`job_leases.offer_job`), or sent to its pool's queue. Decided here, above both, after the
assignment is committed (a message bus handler), so the lifecycle never reaches up."""
from __future__ import annotations

from chalicelib.bus import Committed
from chalicelib.context import Ports
from chalicelib.market.job_leases import offer_job
from chalicelib.models import Job, State


def dispatch_assigned(ports: Ports, committed: Committed) -> None:
    """After commit: a newly assigned attempt (a new job, a retry, a funded escrow) is
    dispatched. Offers and other notes on an assigned job are not assignments."""
    if committed.after.state == State.ASSIGNED and committed.wrote("job.assigned"):
        dispatch(ports, committed.after)


def dispatch(ports: Ports, job: Job) -> None:
    """Hand an assigned attempt to its pool, or offer it to the marketplace worker the
    router prefers. Safe to repeat: a stale copy loses its race."""
    job_class = ports.catalog.job_class(job.kind)
    if offer_job(ports, job, job_class):
        return
    ports.queues.send(job_class.pool, {"job": job.model_dump(mode="json"),
                                       "attempt": job.attempt})
