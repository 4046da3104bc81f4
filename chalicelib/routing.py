"""Routing: which worker or pool runs a job. Pure; the scores go on the timeline."""
from __future__ import annotations

from dataclasses import dataclass

from .catalog import JobClass


@dataclass(frozen=True)
class Assignment:
    worker: str
    queue: str
    reason: str
    candidates: tuple[dict, ...]

    def as_event(self) -> dict:
        return {"worker": self.worker, "queue": self.queue, "reason": self.reason,
                "candidates": list(self.candidates)}


def route(job_class: JobClass) -> Assignment:
    """Built-in pools are the only candidates until marketplace workers register."""
    worker = f"pool:{job_class.pool}"
    return Assignment(worker=worker, queue=job_class.pool,
                      reason=f"built-in {job_class.pool} pool serves {job_class.name}",
                      candidates=({"worker": worker, "score": 1.0,
                                   "factors": {"capability": 1.0}},))
