"""The escrow contract's vocabulary, without a chain connection: its job states, job keys,
result hashes, its EIP-712 domain, and signing or recovering a (jobId, resultHash) signature
exactly as the contract's `ECDSA.recover` does. Workers, the verifier, the rules and the
chain adapter (`settlement.chain`) share it."""
from __future__ import annotations

from enum import IntEnum

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


def job_key(job_id: str) -> bytes:
    """The bytes32 the contract knows a job by."""
    return keccak(text=job_id)


def job_key_bytes(job) -> bytes:
    """The bytes32 key recorded in a job's escrow terms."""
    return bytes.fromhex(job.escrow.job_key.removeprefix("0x"))


def result_hash(output_hashes: list[str]) -> bytes:
    """One bytes32 for the exact outputs paid for (their sorted sha256 digests)."""
    return keccak(text="\n".join(sorted(output_hashes)))


RESULT_TYPES = {"Result": [{"name": "jobId", "type": "bytes32"},
                           {"name": "resultHash", "type": "bytes32"}]}


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
