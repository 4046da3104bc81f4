"""Signed requests: an action taken for a client or worker carries an EIP-712 signature by
the key behind its did:pkh, so the identity that pays or is paid is the one that asked.

The signature covers the action, the DID, the exact body (by hash), a single-use nonce and an
expiry, under the domain {name: "Proofline", version: "1", chainId, salt, verifyingContract}:
the salt names the deployment (its sign-in domain, so a signature made for one stage is refused
by every other, on the same chain or not) and the contract is the escrow where the stage
settles on chain (`GET /health` → `signing` gives all of it). The action is supplied by
the route that verifies, never read from the request, so a signature made for one action
cannot be spent on another. Everything here is pure except the nonce store, which is passed in.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from threading import Lock
from typing import Any, Protocol

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.exceptions import BadSignature
from eth_utils import (
    is_checksum_address,
    is_checksum_formatted_address,
    is_hex_address,
    keccak,
    to_checksum_address,
)
from eth_utils.exceptions import ValidationError

from chalicelib.errors import Forbidden, Unauthorized

ACTIONS = frozenset({"submit", "cancel", "upload", "register", "heartbeat", "lease", "result",
                     "release", "countersign"})

DID_HEADER = "X-Proofline-Did"
NONCE_HEADER = "X-Proofline-Nonce"
EXPIRY_HEADER = "X-Proofline-Expiry"
SIGNATURE_HEADER = "X-Proofline-Signature"
HEADERS = (DID_HEADER, NONCE_HEADER, EXPIRY_HEADER, SIGNATURE_HEADER)

DEFAULT_LIFETIME_S = 300
# Bounds how long a nonce must be remembered: the store may forget one once its request
# would be refused as expired anyway.
MAX_LIFETIME_S = 86_400
UINT256 = 2**256

REQUEST_TYPES = {"Request": [{"name": "action", "type": "string"},
                             {"name": "did", "type": "string"},
                             {"name": "bodyHash", "type": "bytes32"},
                             {"name": "nonce", "type": "uint256"},
                             {"name": "expiry", "type": "uint256"}]}

_DID = re.compile(r"^did:pkh:eip155:([0-9]{1,12}):(0x[0-9a-fA-F]{40})$")
_UINT = re.compile(r"^[0-9]{1,78}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


# -- did:pkh ---------------------------------------------------------------------------------
def parse_did(did: str) -> tuple[int, str]:
    """(chain id, checksum address) of a `did:pkh:eip155:<chainId>:<address>`; ValueError for
    anything else, including a mixed-case address whose EIP-55 checksum is wrong."""
    match = _DID.match(did) if isinstance(did, str) else None
    if not match or not _is_address(match.group(2)) or int(match.group(1)) == 0:
        raise ValueError(f"not a did:pkh:eip155:<chainId>:<address>: {did!r}")
    return int(match.group(1)), to_checksum_address(match.group(2))


def did_for(address: str, chain_id: int) -> str:
    """The canonical DID of an account on a chain (checksum address)."""
    if not _is_address(address):
        raise ValueError(f"not an Ethereum address: {address!r}")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise ValueError(f"not a chain id: {chain_id!r}")
    return f"did:pkh:eip155:{chain_id}:{to_checksum_address(address)}"


def _is_address(value) -> bool:
    # Mixed case claims an EIP-55 checksum; a wrong one is a mistyped address, not another case.
    return is_hex_address(value) and (not is_checksum_formatted_address(value)
                                      or is_checksum_address(value))


def address_of(did: str) -> str:
    return parse_did(did)[1]


def canonical_did(did: str) -> str:
    chain_id, address = parse_did(did)
    return did_for(address, chain_id)


# -- what is signed --------------------------------------------------------------------------
def canonical_body(body: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per body, whoever serialises it."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def body_hash(body: Any) -> bytes:
    return keccak(canonical_body(body))


@dataclass(frozen=True)
class Domain:
    """Where a signature counts: a chain, a deployment (`salt`) and, where the deployment
    settles on chain, its escrow (`contract`)."""
    chain_id: int
    salt: bytes | None = None
    contract: str | None = None

    @classmethod
    def of_stage(cls, chain_id: int, stage_name: str, contract: str | None = None) -> "Domain":
        return cls(chain_id, stage_salt(stage_name), contract)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], did: str | None = None) -> "Domain":
        """The `signing` object of `GET /health` (whose `chain_id` is null where the stage
        takes the signer's DID's chain)."""
        salt = data.get("salt")
        chain_id = data.get("chain_id") or parse_did(did)[0]
        return cls(int(chain_id), bytes.fromhex(salt[2:]) if salt else None,
                   data.get("verifying_contract"))

    def to_json(self) -> dict:
        return {"chain_id": self.chain_id, "salt": "0x" + self.salt.hex() if self.salt else None,
                "verifying_contract": self.contract}

    def eip712(self) -> tuple[list[dict], dict]:
        fields = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                  {"name": "chainId", "type": "uint256"}]
        values = {"name": "Proofline", "version": "1", "chainId": self.chain_id}
        if self.contract:
            fields.append({"name": "verifyingContract", "type": "address"})
            values["verifyingContract"] = self.contract
        if self.salt:
            fields.append({"name": "salt", "type": "bytes32"})
            values["salt"] = self.salt
        return fields, values


def stage_salt(stage_name: str) -> bytes:
    return keccak(text=f"proofline:{stage_name}")


def request_domain(chain_id: int) -> dict:
    return Domain(chain_id).eip712()[1]


def request_typed_data(*, action: str, did: str, body: Any, nonce: int, expiry: int,
                       chain_id: int | None = None, domain: Domain | None = None) -> dict:
    """The full EIP-712 message (as `eth_signTypedData_v4` takes it) a request's signature is
    over; wallets and other languages can sign this directly."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {sorted(ACTIONS)}")
    domain_fields, domain_values = _domain(chain_id, domain).eip712()
    return {"types": {"EIP712Domain": domain_fields, **REQUEST_TYPES},
            "primaryType": "Request",
            "domain": domain_values,
            "message": {"action": action, "did": did, "bodyHash": body_hash(body),
                        "nonce": nonce, "expiry": expiry}}


# -- client side -----------------------------------------------------------------------------
def sign_request(account, *, action: str, did: str, body: Any, chain_id: int | None = None,
                 domain: Domain | None = None, nonce: int | None = None,
                 expiry: int | None = None, now: float | None = None) -> dict[str, str]:
    """The headers that make a request to `action` with this exact `body` speak for `did`.

    `body` is the JSON body plus whatever in the path names the target (a job or task id),
    so a signed request cannot be redirected to another resource."""
    did_chain, did_address = parse_did(did)
    domain = _domain(chain_id, domain)
    chain_id = domain.chain_id
    if did_address != account.address:
        raise ValueError(f"{did} is not the account {account.address}")
    if did_chain != chain_id:
        raise ValueError(f"{did} is on chain {did_chain}, not {chain_id}")
    nonce = secrets.randbits(128) if nonce is None else nonce
    if expiry is None:
        expiry = int(time.time() if now is None else now) + DEFAULT_LIFETIME_S
    signed = Account.sign_typed_data(account.key, full_message=request_typed_data(
        action=action, did=did, body=body, domain=domain, nonce=nonce, expiry=expiry))
    return {DID_HEADER: did, NONCE_HEADER: str(nonce), EXPIRY_HEADER: str(expiry),
            SIGNATURE_HEADER: "0x" + bytes(signed.signature).hex()}


# -- server side -----------------------------------------------------------------------------
class NonceStore(Protocol):
    def use(self, did: str, nonce: int, expires_at: int) -> bool:
        """Record (did, nonce) until `expires_at` (unix seconds): True if it was unseen,
        False if it was already used. Must be atomic: two concurrent uses, one True."""
        ...

    def used(self, did: str, nonce: int) -> bool:
        """Whether (did, nonce) was used (and not yet expired from the store)."""
        ...


class MemoryNonceStore:
    """For tests and a single process."""

    def __init__(self):
        self._seen: dict[tuple[str, int], int] = {}
        self._lock = Lock()

    def use(self, did: str, nonce: int, expires_at: int) -> bool:
        with self._lock:
            if (did, nonce) in self._seen:
                return False
            self._seen[(did, nonce)] = expires_at
            return True

    def used(self, did: str, nonce: int) -> bool:
        with self._lock:
            return (did, nonce) in self._seen

    def prune(self, now: float) -> None:
        with self._lock:
            self._seen = {key: at for key, at in self._seen.items() if at >= now}

    def __len__(self) -> int:
        return len(self._seen)


def verify_request(headers: Mapping[str, str], *, action: str, body: Any, now: float,
                   nonces: NonceStore, chain_id: int | None = None,
                   domain: Domain | None = None, expected_did: str | None = None) -> str:
    """The canonical DID that signed this request for `action` with exactly `body`, or
    Unauthorized (401: missing_signature, bad_signature, expired, replayed_nonce) /
    Forbidden (403: wrong_chain, wrong_signer).

    `body` must be built as the signer built it: the JSON body plus the path's identifiers.
    The nonce is spent only once the signature has verified, so a forgery cannot burn it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {sorted(ACTIONS)}")
    domain = _domain(chain_id, domain)
    chain_id = domain.chain_id
    values = _headers(headers)
    missing = [name for name in HEADERS if not values.get(name.lower())]
    if missing:
        raise Unauthorized(f"{action} must be signed: missing {', '.join(missing)}",
                           reason="missing_signature", details={"missing": missing})
    raw_did = values[DID_HEADER.lower()]
    try:
        did_chain, did_address = parse_did(raw_did)
    except ValueError as exc:
        raise Unauthorized(f"{DID_HEADER}: {exc}", reason="bad_signature") from None
    nonce = _uint(values, NONCE_HEADER)
    expiry = _uint(values, EXPIRY_HEADER)
    signature = values[SIGNATURE_HEADER.lower()]
    if not _SIGNATURE.match(signature):
        raise Unauthorized(f"{SIGNATURE_HEADER} must be 0x and 65 bytes of hex",
                           reason="bad_signature")
    if did_chain != chain_id:
        raise Forbidden(f"{raw_did} is on chain {did_chain}; this stage is chain {chain_id}",
                        reason="wrong_chain")
    if expiry < now:
        raise Unauthorized(f"the signature expired at {expiry} (now {int(now)})",
                           reason="expired")
    if expiry > now + MAX_LIFETIME_S:
        raise Unauthorized(f"expiry {expiry} is more than {MAX_LIFETIME_S} s ahead; sign "
                           "requests for minutes, not days", reason="expired")
    message = encode_typed_data(full_message=request_typed_data(
        action=action, did=raw_did, body=body, domain=domain, nonce=nonce, expiry=expiry))
    try:
        signer = Account.recover_message(message, signature=bytes.fromhex(signature[2:]))
    except (BadSignature, ValidationError, ValueError) as exc:
        raise Unauthorized(f"{SIGNATURE_HEADER} is not a recoverable signature: {exc}",
                           reason="bad_signature") from None
    # A changed action, body, nonce or expiry recovers some other address, so it lands here.
    if signer != did_address:
        raise Forbidden(f"the signature is not by {raw_did} over this {action} request",
                        reason="wrong_signer")
    did = did_for(did_address, did_chain)
    if expected_did is not None and did != canonical_did(expected_did):
        raise Forbidden(f"{action} here must be signed by {expected_did}, not {did}",
                        reason="wrong_signer")
    if not nonces.use(did, nonce, expiry):
        raise Unauthorized(f"nonce {nonce} was already used by {did}; sign the request anew",
                           reason="replayed_nonce")
    return did


def _domain(chain_id: int | None, domain: Domain | None) -> Domain:
    if domain is None and chain_id is None:
        raise ValueError("a signing domain (or at least a chain id) is needed")
    return domain or Domain(chain_id)


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in headers.items():
        key, value = name.lower(), str(value).strip()
        if key in values and values[key] != value:
            # Two spellings of one header disagreeing: which one a proxy forwards is anyone's guess.
            raise Unauthorized(f"header {name} given twice with different values",
                               reason="bad_signature")
        values[key] = value
    return values


def _uint(values: dict[str, str], header: str) -> int:
    raw = values[header.lower()]
    if not _UINT.match(raw) or int(raw) >= UINT256:
        raise Unauthorized(f"{header} must be a decimal uint256, not {raw[:80]!r}",
                           reason="bad_signature")
    return int(raw)
