"""Who is calling: the DID behind a signed request, sign-in, the caller a session token
stands for, and revocation. The rules of what a caller may then do are in `identity.access`;
this module is their I/O."""
from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chalicelib import bodies
from chalicelib.context import Ports
from chalicelib.errors import (
    Forbidden,
    InvalidManifest,
    InvalidRequest,
    Unauthorized,
    Unavailable,
)
from chalicelib.identity import pages, sessions
from chalicelib.identity.access import Caller
from chalicelib.identity.signing import (
    DID_HEADER,
    HEADERS,
    Domain,
    canonical_did,
    parse_did,
    verify_request,
)


def authenticate(ports: Ports, headers, *, action: str, body: Any,
                 owner: str | None = None, required: bool = False) -> str | None:
    """The client DID that signed this request (EIP-712, see signing.py), or None for an
    unsigned one where the stage allows it (`PROOFLINE_ALLOW_UNSIGNED`, local only) and
    nothing `required` a signature. A request about a job that names its client must be
    signed by that client, always."""
    given = {k.lower(): v for k, v in dict(headers).items()}
    if not given.keys() & {h.lower() for h in HEADERS}:
        if ports.settings.allow_unsigned and owner is None and not required:
            return None
        raise Unauthorized(f"{action} must be signed by "
                           f"{owner or 'the client'} (EIP-712 headers {', '.join(HEADERS)})",
                           reason="missing_signature", details={"missing": list(HEADERS)})
    try:
        return verify_request(headers, action=action, body=body,
                              domain=signing_domain(ports, given.get(DID_HEADER.lower())),
                              now=time.time(), nonces=ports.nonces, expected_did=owner)
    except TypeError:
        raise InvalidManifest("a signed manifest must be plain JSON values",
                              reason="malformed_json") from None


def signing_domain(ports: Ports, did: str | None = None) -> Domain:
    """This stage's EIP-712 domain: its chain (where it has none, the DID's), its salt and,
    where it settles on chain, its escrow."""
    chain_id = ports.settings.chain_id
    if chain_id is None:
        try:
            chain_id = parse_did(did)[0]
        except (TypeError, ValueError):
            chain_id = 1             # verify_request names what is wrong with the headers
    contract = ports.settings.escrow_address if ports.settings.settlement_enabled else None
    return Domain.of_stage(chain_id, ports.settings.session_domain, contract)


class SignIn(BaseModel):
    """`POST /sessions`: an EIP-4361 message and its EIP-191 signature."""
    model_config = ConfigDict(extra="forbid", strict=True)
    message: str = Field(max_length=sessions.MAX_MESSAGE_CHARS)
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$")
    lifetime_s: int = Field(default=sessions.SESSION_SECONDS, ge=60,
                            le=sessions.MAX_SESSION_SECONDS)


def sign_in(ports: Ports, body: dict) -> dict:
    request = bodies.model(SignIn, body, what="sign-in", reason="malformed_sign_in")
    now = time.time()
    did = sessions.verify_sign_in(request.message, request.signature,
                                  domain=ports.settings.session_domain,
                                  chain_id=ports.settings.chain_id, now=now,
                                  nonces=ports.nonces)
    token, session = sessions.issue(_ring(ports), did, audience=ports.settings.session_domain,
                                    now=now, lifetime_s=request.lifetime_s)
    return {"token": token, "token_type": "Bearer", "did": did,
            "expires_at": session.expires_at, "operator": did in ports.settings.operators}


def session(ports: Ports, token: str | None) -> sessions.Session:
    """The session behind a bearer token, its signature and expiry checked (no revocation:
    what the gateway's authorizer can know without a table)."""
    if not token:
        raise Unauthorized("no session token", reason="missing_session")
    return sessions.read(_ring(ports), token, audience=ports.settings.session_domain,
                         now=time.time())


def caller(ports: Ports, headers) -> Caller:
    """Who a request's session speaks for, revocation included."""
    token = sessions.bearer(headers)
    if not token:
        raise Unauthorized("this needs a session: `Authorization: Bearer <token>` from "
                           "POST /sessions", reason="missing_session")
    current = sessions.read(_ring(ports), token, audience=ports.settings.session_domain,
                            now=time.time(), revocations=ports.revocations)
    return Caller.of(current.did, ports.settings.operators)


def revoke(ports: Ports, by: Caller, did: str | None = None) -> dict:
    """Void every session of `did` (default: the caller's own) issued until now."""
    try:
        target = canonical_did(did) if did else by.did
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason="invalid_query") from None
    if target != by.did and not by.operator:
        raise Forbidden("only an operator revokes another DID's sessions",
                        reason="operator_only")
    now = time.time()
    ports.revocations.revoke(target, now, int(now) + sessions.MAX_SESSION_SECONDS)
    return {"did": target, "revoked_before": now}


def page_link(ports: Ports, by: Caller, job_id: str) -> dict:
    """A one-time link that opens a page session for `by` at the page of `job_id` (whose
    readability the caller has checked): a path to join to the API's URL."""
    now = time.time()
    code, link = sessions.issue(_ring(ports), by.did, now=now, lifetime_s=pages.LINK_SECONDS,
                                audience=pages.link_audience(ports.settings.session_domain))
    return {"path": f"/ui/jobs/{job_id}?code={code}", "expires_at": link.expires_at}


def open_link(ports: Ports, code: str) -> tuple[str, sessions.Session]:
    """Spend a one-time link: the page session it opens (a token for the cookie). 401
    link_used for a link opened before; session_invalid / session_expired otherwise."""
    now = time.time()
    domain = ports.settings.session_domain
    link = sessions.read(_ring(ports), code, audience=pages.link_audience(domain), now=now,
                         revocations=ports.revocations)
    if not ports.nonces.use(link.did, pages.link_nonce(link), link.expires_at + 60):
        raise Unauthorized("this link was opened already; run `proofline ui` for a new one",
                           reason="link_used")
    return sessions.issue(_ring(ports), link.did, audience=pages.page_audience(domain),
                          now=now, lifetime_s=pages.PAGE_SECONDS)


def page_caller(ports: Ports, headers) -> tuple[Caller, sessions.Session]:
    """Who a page request's cookie speaks for (revocation included), and its session."""
    token = pages.cookie_token(headers)
    if not token:
        raise Unauthorized("this page needs a page session: open it with `proofline ui JOB`",
                           reason="missing_session")
    current = sessions.read(_ring(ports), token, now=time.time(),
                            audience=pages.page_audience(ports.settings.session_domain),
                            revocations=ports.revocations)
    if ports.nonces.used(current.did, pages.link_nonce(current)):
        raise Unauthorized("this page session was signed out; open the page again with "
                           "`proofline ui JOB`", reason="session_revoked")
    return Caller.of(current.did, ports.settings.operators), current


def sign_out_page(ports: Ports, session: sessions.Session) -> None:
    """Void this page session alone, wherever its cookie was copied to (the CLI's
    sessions and the DID's other page sessions are untouched)."""
    ports.nonces.use(session.did, pages.link_nonce(session), session.expires_at + 60)


def csrf_token(ports: Ports, session: sessions.Session) -> str:
    return pages.csrf_token(_ring(ports), session)


def check_csrf(ports: Ports, session: sessions.Session, given: object) -> None:
    if not pages.csrf_valid(_ring(ports), session, given):
        raise Forbidden("this form was not sent by the page it belongs to (CSRF token "
                        "missing or wrong); reload the page", reason="csrf_failed")


def _ring(ports: Ports) -> sessions.KeyRing:
    if ports.session_keys is None:
        raise Unavailable("this stage has no session keys (PROOFLINE_SESSION_KEYS): reads "
                          "are refused", reason="sessions_disabled")
    return ports.session_keys
