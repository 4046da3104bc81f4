"""Drift between job records and the escrow on chain: pure classification, and which
drifts are safe to repair automatically (by re-sending an idempotent settlement action)."""
from __future__ import annotations

from dataclasses import dataclass

from chalicelib.models import State as J
from chalicelib.settlement.escrow import EscrowState as C

OPEN = (C.FUNDED, C.ASSIGNED)


@dataclass(frozen=True)
class Drift:
    job_id: str
    job_state: str
    chain_state: str
    kind: str
    repair: str | None          # the settlement action that fixes it, when one is safe

    def as_row(self) -> dict:
        return self.__dict__.copy()


def classify(job_id: str, job_state: J, funded_seen: bool, refund_recorded: bool,
             chain: C, *, blocked: bool = False) -> Drift | None:
    def drift(kind: str, repair: str | None = None) -> Drift:
        return Drift(job_id, job_state.value, chain.name.lower(), kind, repair)

    if job_state == J.VERIFIED and chain in OPEN and blocked:
        return drift("release_blocked")        # evidence missing: a person decides
    if job_state == J.VERIFIED and chain in OPEN:
        return drift("verified_not_released", "release")
    if job_state == J.VERIFIED and chain == C.RELEASED:
        return drift("released_not_recorded", "release")
    if job_state == J.VERIFIED and chain == C.DISPUTED:
        return drift("dispute_not_recorded")   # the chain follower picks it up
    if job_state in (J.VERIFIED, J.DISPUTED) and chain == C.RESOLVED:
        return drift("resolution_not_recorded")
    if job_state == J.SETTLED and chain not in (C.RELEASED, C.RESOLVED):
        return drift("settled_but_not_released_on_chain")
    if job_state in (J.FAILED, J.CANCELLED, J.REJECTED) and chain in OPEN:
        return drift("ended_not_refunded", "refund")
    if chain in (C.REFUNDED, C.RECLAIMED) and not refund_recorded and job_state != J.SETTLED:
        return drift(f"{chain.name.lower()}_on_chain_not_recorded",
                     "refund" if job_state.terminal else None)
    if job_state == J.REQUESTED and chain in OPEN and not funded_seen:
        return drift("funded_not_seen")      # the chain follower picks it up
    return None
