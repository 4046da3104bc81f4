"""Sessions: a did:pkh proves its key once with Sign-In with Ethereum (EIP-4361) and reads
with a short-lived bearer token after that.

Writes stay signed one by one (signing.py): a signature there covers the exact body. Reads
carry no body worth signing, so the key signs a SIWE message instead, naming this stage's
sign-in domain (the stage is in it, so a sign-in for one stage is refused by another), the
chain, a single-use nonce and a time; the control plane answers with an HS256 JWT under a
stage secret. The secrets are a key ring (`kid:hex,…`): the first signs, every one verifies,
so a key is rotated by putting a new one first and dropping the old one a session later.
Revocation is per DID: sessions issued before a DID's revocation time are refused. Pure,
except the nonce and revocation stores, which are passed in.
"""
from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import jwt
from eth_utils import keccak
from pydantic import ValidationError

from chalicelib.errors import Forbidden, InvalidRequest, Unauthorized
from chalicelib.identity.signing import NonceStore, did_for

SESSION_SECONDS = 3600
MAX_SESSION_SECONDS = 12 * 3600
SIGN_IN_MAX_AGE_S = 300               # a SIWE message is spent within minutes of its making
CLOCK_SKEW_S = 60
MAX_MESSAGE_CHARS = 4096
STATEMENT = "Sign in to Proofline to read your jobs, uploads and worker record."
ISSUER = "proofline"
_ALGORITHM = "HS256"
_MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class KeyRing:
    """Session secrets, newest first: the first signs, all of them verify."""
    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, raw: str) -> "KeyRing":
        """`kid:hex[,kid:hex…]`, each secret at least 32 bytes."""
        keys = []
        for part in (p.strip() for p in (raw or "").split(",") if p.strip()):
            kid, _, hexkey = part.partition(":")
            try:
                secret = bytes.fromhex(hexkey)
            except ValueError:
                raise ValueError(f"session key {kid!r} is not hex") from None
            if not kid or len(secret) < _MIN_KEY_BYTES:
                raise ValueError(f"session key {kid!r} must be named and at least "
                                 f"{_MIN_KEY_BYTES} bytes")
            keys.append((kid, secret))
        if not keys:
            raise ValueError("no session keys: PROOFLINE_SESSION_KEYS is `kid:hex[,kid:hex]`")
        return cls(tuple(keys))

    @classmethod
    def generate(cls, kid: str = "k1") -> "KeyRing":
        return cls(((kid, secrets.token_bytes(_MIN_KEY_BYTES)),))

    def serialize(self) -> str:
        return ",".join(f"{kid}:{secret.hex()}" for kid, secret in self.keys)

    def secret(self, kid: str) -> bytes | None:
        return dict(self.keys).get(kid)


@dataclass(frozen=True)
class Session:
    did: str
    session_id: str
    issued_at: float
    expires_at: int


class Revocations(Protocol):
    def revoked_before(self, did: str) -> float | None:
        """Sessions of `did` issued before this time (unix seconds) are void; None: none."""
        ...

    def revoke(self, did: str, before: float, keep_until: int) -> None:
        ...


@functools.cache
def _siwe():
    """The siwe package, imported on first use: it compiles its EIP-4361 grammar when imported
    (about half a second), which only sign-ins need — not every Lambda's cold start."""
    from siwe import siwe
    return siwe


# -- client side -----------------------------------------------------------------------------
def sign_in_message(address: str, *, domain: str, uri: str, chain_id: int,
                    now: float | None = None, nonce: str | None = None) -> str:
    """The EIP-4361 text a wallet signs (EIP-191 personal_sign) to sign in."""
    now = time.time() if now is None else now
    siwe = _siwe()
    message = siwe.SiweMessage(
        domain=domain, address=address, uri=uri, version="1", chain_id=chain_id,
        nonce=nonce or siwe.generate_nonce(), statement=STATEMENT,
        issued_at=_iso(now), expiration_time=_iso(now + SIGN_IN_MAX_AGE_S))
    return message.prepare_message()


# -- server side -----------------------------------------------------------------------------
def verify_sign_in(message: str, signature: str, *, domain: str, chain_id: int | None,
                   now: float, nonces: NonceStore) -> str:
    """The canonical DID whose key signed this SIWE message for this stage, now; the nonce is
    spent. 400 malformed_sign_in; 401 bad_signature, expired, replayed_nonce; 403
    wrong_domain, wrong_chain."""
    if not isinstance(message, str) or not isinstance(signature, str) \
            or len(message) > MAX_MESSAGE_CHARS or len(signature) > 200:
        raise InvalidRequest("sign-in needs `message` (EIP-4361 text) and `signature` "
                             "(0x hex) strings", reason="malformed_sign_in")
    siwe = _siwe()
    try:
        parsed = siwe.SiweMessage.from_message(message)
    except (ValueError, ValidationError, siwe.VerificationError) as exc:
        raise InvalidRequest(f"not an EIP-4361 message: {str(exc)[:200]}",
                             reason="malformed_sign_in") from None
    if parsed.domain != domain:
        raise Forbidden(f"this sign-in is for {parsed.domain!r}; this stage signs in as "
                        f"{domain!r}", reason="wrong_domain")
    if chain_id is not None and parsed.chain_id != chain_id:
        raise Forbidden(f"this sign-in is on chain {parsed.chain_id}; this stage is chain "
                        f"{chain_id}", reason="wrong_chain")
    issued = parsed.issued_at._datetime.timestamp()
    if not now - SIGN_IN_MAX_AGE_S <= issued <= now + CLOCK_SKEW_S:
        raise Unauthorized(f"the sign-in was issued at {parsed.issued_at}; sign a fresh one",
                           reason="expired")
    try:
        parsed.verify(signature, domain=domain,
                      timestamp=datetime.fromtimestamp(now, timezone.utc))
    except (siwe.ExpiredMessage, siwe.NotYetValidMessage):
        raise Unauthorized("the sign-in message is outside its validity window",
                           reason="expired") from None
    except siwe.VerificationError:
        raise Unauthorized(f"the signature is not by {parsed.address} over this message",
                           reason="bad_signature") from None
    did = did_for(parsed.address, parsed.chain_id)
    nonce = int.from_bytes(keccak(text="siwe:" + parsed.nonce)[:16], "big")
    if not nonces.use(did, nonce, int(now) + SIGN_IN_MAX_AGE_S + CLOCK_SKEW_S):
        raise Unauthorized("this sign-in message was already used; sign a fresh one",
                           reason="replayed_nonce")
    return did


def issue(ring: KeyRing, did: str, *, audience: str, now: float,
          lifetime_s: int = SESSION_SECONDS) -> tuple[str, Session]:
    """A bearer token for `did` on this stage (`audience`, the sign-in domain)."""
    lifetime_s = max(60, min(int(lifetime_s), MAX_SESSION_SECONDS))
    session = Session(did=did, session_id=secrets.token_hex(16), issued_at=now,
                      expires_at=int(now) + lifetime_s)
    kid, secret = ring.keys[0]
    token = jwt.encode({"iss": ISSUER, "aud": audience, "sub": did, "sid": session.session_id,
                        "iat": now, "exp": session.expires_at}, secret, algorithm=_ALGORITHM,
                       headers={"kid": kid})
    return token, session


def read(ring: KeyRing, token: str, *, audience: str, now: float,
         revocations: Revocations | None = None) -> Session:
    """The session a bearer token stands for, or 401 session_invalid / session_expired /
    session_revoked."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        secret = ring.secret(kid) if isinstance(kid, str) else None
        if secret is None:
            raise Unauthorized("the session was signed with a key this stage no longer "
                               "holds; sign in again", reason="session_invalid")
        claims = jwt.decode(token, secret, algorithms=[_ALGORITHM], audience=audience,
                            issuer=ISSUER, leeway=0,
                            # Expiry is judged against `now` below, not the library's clock.
                            options={"require": ["exp", "iat", "sub", "sid", "aud", "iss"],
                                     "verify_iat": False, "verify_exp": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"not a session of this stage: {exc}",
                           reason="session_invalid") from None
    if not isinstance(claims["exp"], (int, float)) or claims["exp"] <= now:
        raise Unauthorized("the session has expired; sign in again", reason="session_expired")
    session = Session(did=claims["sub"], session_id=claims["sid"],
                      issued_at=float(claims["iat"]), expires_at=int(claims["exp"]))
    if revocations is not None:
        before = revocations.revoked_before(session.did)
        if before is not None and session.issued_at <= before:
            raise Unauthorized("this session was revoked; sign in again",
                               reason="session_revoked")
    return session


def bearer(headers) -> str | None:
    """The token of an `Authorization: Bearer …` header, if there is one."""
    value = next((v for k, v in dict(headers).items() if k.lower() == "authorization"), None)
    if not value:
        return None
    scheme, _, token = str(value).strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
