"""Settlement rules: pure decisions about escrow terms, funding and release evidence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from chalicelib.catalog import JobClass
from chalicelib.errors import InvalidManifest, ProoflineError
from chalicelib.identity.signing import address_of
from chalicelib.models import (
    EscrowTerms,
    Event,
    Job,
    Manifest,
    PaymentToken,
    State,
    is_marketplace,
)
from chalicelib.settlement.escrow import job_key
from chalicelib.settlement.money import to_base_units


class ReleaseBlocked(ProoflineError):
    """Paying now would break an invariant: nothing is sent to the chain."""
    status = 409
    reason = "release_blocked"


# Past the job's own timeouts, the countersign window and the dispute window, this much
# more before a client may reclaim: room for a slow chain or a redelivered message.
DEADLINE_MARGIN_S = 3600


@dataclass(frozen=True)
class EscrowStage:
    """Where and on what windows a stage settles: the chain, the escrow contract, the
    dispute window the contract gives jobs funded now, and the countersign window."""
    chain_id: int
    contract: str
    dispute_s: int = 0
    countersign_s: int = 3600


def final_duration_s(job_class: JobClass, max_attempts: int, stage: EscrowStage) -> int:
    """How long after funding the escrow must hold: every attempt's timeouts, then the
    payee's countersignature, the dispute window and a margin. Until then no client can
    reclaim; after it, whatever is still held is the client's to take back."""
    per_attempt = sum(s for state, s in job_class.timeouts_s.items() if state != State.REQUESTED)
    return per_attempt * max_attempts + stage.countersign_s + stage.dispute_s + DEADLINE_MARGIN_S


def terms(manifest: Manifest, *, job_id: str, salt: bytes, stage: EscrowStage,
          job_class: JobClass, max_attempts: int, now_s: int,
          tokens: Mapping[str, PaymentToken]) -> EscrowTerms:
    """The escrow terms the router will sign: only the manifest's client may fund, with
    exactly `max_price` (a decimal string in the payment token's units, ETH unless the
    manifest names an allow-listed `payment_token`) converted to base units exactly, before
    the job's funding wait runs out."""
    symbol = manifest.payment_token or "ETH"
    token = tokens.get(symbol)
    if token is None:
        raise InvalidManifest(f"payment token {symbol!r} is not accepted on this stage",
                              reason="unknown_payment_token", details={"known": sorted(tokens)})
    if manifest.max_price is None or manifest.max_price <= 0:
        raise InvalidManifest(f"an escrow job needs a positive max_price (in {symbol})",
                              reason="missing_price")
    if not manifest.client_did:
        raise InvalidManifest("an escrow job needs a client_did: only that account can fund it",
                              reason="client_required")
    client = address_of(manifest.client_did)
    key = job_key(chain_id=stage.chain_id, contract=stage.contract, client=client,
                  job_id=job_id, salt=salt)
    return EscrowTerms(job_key="0x" + key.hex(), chain_id=stage.chain_id,
                       contract=stage.contract, token=token.address, symbol=token.symbol,
                       decimals=token.decimals,
                       amount=to_base_units(manifest.max_price, token.decimals), client=client,
                       duration_s=final_duration_s(job_class, max_attempts, stage),
                       quote_expiry=now_s + job_class.timeouts_s[State.REQUESTED])


def funding_problem(expected: EscrowTerms, client: str, token: str, amount: int) -> str | None:
    """Why an on-chain funding is not the one quoted, or None when it is. (The contract
    refuses any other; this guards against a contract that does not.)"""
    if expected.client and client.lower() != expected.client.lower():
        return f"funded by {client}, the job's client is {expected.client}"
    if token.lower() != expected.token.lower():
        return f"funded in {token}, the job is priced in {expected.token}"
    if amount < expected.amount:
        return f"funded {amount}, the job needs {expected.amount}"
    return None


def quote_problems(terms: EscrowTerms, *, chain_id: int, rpc_chain_id: int, contract: str,
                   client: str, ceiling: int | None) -> list[str]:
    """What a client checks before it pays on terms an API answered: the stage's own chain
    and contract (not ones the answer names), its own address as the funder, and an amount
    within the ceiling it asked for. Empty when the terms are safe to fund."""
    problems = []
    if terms.chain_id != chain_id or rpc_chain_id != chain_id:
        problems.append(f"the terms are for chain {terms.chain_id} and the RPC serves "
                        f"{rpc_chain_id}; this stage settles on chain {chain_id}")
    if terms.contract.lower() != contract.lower():
        problems.append(f"the terms name contract {terms.contract}; this stage's escrow is "
                        f"{contract}")
    if (terms.client or "").lower() != client.lower():
        problems.append(f"the quote is for {terms.client}, not this key ({client})")
    if ceiling is None:
        problems.append("no max price to hold the amount to")
    elif terms.amount > ceiling:
        problems.append(f"the amount {terms.amount} is over the max price ({ceiling} base units)")
    if not terms.quote_signature:
        problems.append("the terms carry no router signature")
    return problems


def release_evidence(job: Job, events: Iterable[Event]) -> list[str]:
    """The output hashes a release pays for — only if the timeline holds a
    `validation.passed` that measured exactly those outputs (invariant 1)."""
    paid_for = sorted(o.sha256 for o in job.outputs)
    if not paid_for:
        raise ReleaseBlocked(f"job {job.job_id} has no promoted outputs to pay for")
    verified = {e.data.get("measured", {}).get("sha256") for e in events
                if e.type == "validation.passed"}
    missing = [h for h in paid_for if h not in verified]
    if missing:
        raise ReleaseBlocked(f"no validation.passed for {missing} on job {job.job_id}",
                             details={"missing": missing})
    return paid_for


def payee(worker: str, pool_payout: Mapping[str, str]) -> str:
    """The address an escrow pays: a pool's payout address, or a worker's DID address."""
    if is_marketplace(worker):
        return address_of(worker)
    return pool_payout[worker.removeprefix("pool:")]
