"""Settlement rules: pure decisions about escrow terms, funding and release evidence."""
from __future__ import annotations

from typing import Iterable, Mapping

from chalicelib.errors import InvalidManifest, ProoflineError
from chalicelib.identity.signing import address_of
from chalicelib.models import EscrowTerms, Event, Job, Manifest, PaymentToken, is_marketplace
from chalicelib.settlement.money import to_base_units


class ReleaseBlocked(ProoflineError):
    """Paying now would break an invariant: nothing is sent to the chain."""
    status = 409
    reason = "release_blocked"


def terms(manifest: Manifest, job_key: str, *, chain_id: int, contract: str,
          tokens: Mapping[str, PaymentToken]) -> EscrowTerms:
    """`max_price` is a decimal string in the payment token's units (ETH unless the manifest
    names an allow-listed `payment_token`), converted to base units exactly."""
    symbol = manifest.payment_token or "ETH"
    token = tokens.get(symbol)
    if token is None:
        raise InvalidManifest(f"payment token {symbol!r} is not accepted on this stage",
                              reason="unknown_payment_token", details={"known": sorted(tokens)})
    if manifest.max_price is None or manifest.max_price <= 0:
        raise InvalidManifest(f"an escrow job needs a positive max_price (in {symbol})",
                              reason="missing_price")
    return EscrowTerms(job_key=job_key, chain_id=chain_id, contract=contract,
                       token=token.address, symbol=token.symbol, decimals=token.decimals,
                       amount=to_base_units(manifest.max_price, token.decimals))


def funding_problem(expected: EscrowTerms, token: str, amount: int) -> str | None:
    """Why an on-chain funding does not cover the job, or None when it does."""
    if token.lower() != expected.token.lower():
        return f"funded in {token}, the job is priced in {expected.token}"
    if amount < expected.amount:
        return f"funded {amount}, the job needs {expected.amount}"
    return None


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
