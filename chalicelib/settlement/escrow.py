"""The escrow contract's vocabulary, without a chain connection: its job states, job keys,
result hashes, its EIP-712 domain, the router's funding quote, and signing or recovering
(jobId, resultHash) and funding signatures exactly as the contract's `ECDSA.recover` does.
Workers, the verifier, the rules and the chain adapter (`settlement.chain`) share it."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address


class EscrowState(IntEnum):
    NONE = 0
    FUNDED = 1
    ASSIGNED = 2
    VERIFIED = 3
    DISPUTED = 4
    RELEASED = 5
    REFUNDED = 6
    RECLAIMED = 7
    RESOLVED = 8


def job_key(*, chain_id: int, contract: str, client: str, job_id: str, salt: bytes) -> bytes:
    """The bytes32 the contract knows a job by. Bound to the chain, the contract and the
    client, and salted with bytes only the client and the control plane see, so a stranger
    who knows a job id cannot name its escrow (the contract accepts a funding only from the
    quote's client anyway)."""
    return keccak(abi_encode(["uint256", "address", "address", "bytes32", "bytes32"],
                             [chain_id, to_checksum_address(contract),
                              to_checksum_address(client), keccak(text=job_id), salt]))


def job_key_bytes(job) -> bytes:
    """The bytes32 key recorded in a job's escrow terms."""
    return bytes.fromhex(job.escrow.job_key.removeprefix("0x"))


def result_hash(output_hashes: list[str]) -> bytes:
    """One bytes32 for the exact outputs paid for (their sorted sha256 digests)."""
    return keccak(text="\n".join(sorted(output_hashes)))


RESULT_TYPES = {"Result": [{"name": "jobId", "type": "bytes32"},
                           {"name": "resultHash", "type": "bytes32"}]}


FUNDING_TYPES = {"Funding": [{"name": "jobId", "type": "bytes32"},
                             {"name": "client", "type": "address"},
                             {"name": "token", "type": "address"},
                             {"name": "amount", "type": "uint256"},
                             {"name": "duration", "type": "uint256"},
                             {"name": "expiry", "type": "uint256"}]}


@dataclass(frozen=True)
class FundingQuote:
    """The terms a router agrees a job may be funded on: only `client` can fund `job_key`,
    with exactly `amount` of `token`, before `expiry` (unix seconds); the on-chain deadline
    is `duration` seconds after the funding."""
    job_key: bytes
    client: str
    token: str
    amount: int
    duration: int
    expiry: int

    def message(self) -> dict:
        return {"jobId": self.job_key, "client": to_checksum_address(self.client),
                "token": to_checksum_address(self.token), "amount": self.amount,
                "duration": self.duration, "expiry": self.expiry}


def quote_of(terms) -> FundingQuote:
    """The funding quote recorded in a job's escrow terms, as the contract checks it."""
    return FundingQuote(job_key=bytes.fromhex(terms.job_key.removeprefix("0x")),
                        client=terms.client, token=terms.token, amount=terms.amount,
                        duration=terms.duration_s, expiry=terms.quote_expiry)


def sign_funding(account: LocalAccount, domain_data: dict, quote: FundingQuote) -> bytes:
    """The router's EIP-712 signature over a funding quote: what `fund` checks."""
    signed = Account.sign_typed_data(account.key, domain_data=domain_data,
                                     message_types=FUNDING_TYPES, message_data=quote.message())
    return bytes(signed.signature)


def funding_signer(domain_data: dict, quote: FundingQuote, signature: bytes) -> str:
    """Who signed a funding quote (a client checks it is the stage's router)."""
    message = encode_typed_data(domain_data=domain_data, message_types=FUNDING_TYPES,
                                message_data=quote.message())
    return Account.recover_message(message, signature=signature)


def domain(chain_id: int, contract: str) -> dict:
    return {"name": "ProoflineEscrow", "version": "1", "chainId": chain_id,
            "verifyingContract": to_checksum_address(contract)}


def sign_result(account: LocalAccount, escrow, job_id: bytes, result: bytes) -> bytes:
    """The worker's EIP-712 signature over (jobId, resultHash); `escrow` is the domain
    (`domain(chain id, contract)`: no RPC needed) or an `Escrow`, which knows its own."""
    domain_data = escrow.result_domain() if hasattr(escrow, "result_domain") else escrow
    signed = Account.sign_typed_data(account.key, domain_data=domain_data,
                                     message_types=RESULT_TYPES,
                                     message_data={"jobId": job_id, "resultHash": result})
    return bytes(signed.signature)


def result_signer(domain_data: dict, job_id: bytes, result: bytes, signature: bytes) -> str:
    """Who signed (jobId, resultHash): what the contract's ECDSA.recover will find."""
    message = encode_typed_data(domain_data=domain_data, message_types=RESULT_TYPES,
                                message_data={"jobId": job_id, "resultHash": result})
    return Account.recover_message(message, signature=signature)
