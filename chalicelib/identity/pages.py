"""Page sessions: a browser reads a job's page with the identity its CLI signed in with.

A browser holds no key, so the CLI (already signed in with SIWE, sessions.py) asks for a
one-time link: a token valid for a minute, for this stage's pages only, spent on first use.
Opening it trades it for a page session — the same kind of token, with the pages' own
audience, kept in an HttpOnly, SameSite=Strict cookie the page's script cannot read — and
redirects to the page without the code, so the code is neither in the history nor in a
Referer. Neither token is accepted where the other is: a bearer token is not a cookie, a
cookie is not a bearer token, and a link is neither.

Anything a page writes carries a CSRF token as well: an HMAC of the page session's id under
the stage's session keys, so a form on another site cannot write with the cookie even where
a browser would send it. Pure.
"""
from __future__ import annotations

import hashlib
import hmac
from http.cookies import CookieError, SimpleCookie

from chalicelib.identity.sessions import KeyRing, Session

LINK_SECONDS = 120                    # a link is opened right after the CLI asks for it
PAGE_SECONDS = 3600
COOKIE = "proofline_page"


def link_audience(domain: str) -> str:
    return f"{domain}#page-link"


def page_audience(domain: str) -> str:
    return f"{domain}#page"


def link_nonce(session: Session) -> int:
    """The number a link is spent under in the stage's nonce store (its session id); a
    page session signed out is spent under its own the same way."""
    return int(session.session_id, 16)


def cookie_token(headers) -> str | None:
    """The page session a request's `Cookie` header carries, if any."""
    raw = next((v for k, v in dict(headers).items() if k.lower() == "cookie"), None)
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(str(raw))
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def set_cookie(token: str, *, max_age: int, secure: bool) -> str:
    """The `Set-Cookie` value of a page session: HttpOnly (no script reads it), SameSite
    Strict (no other site's request carries it), Secure wherever the page is served over
    HTTPS (the local stack is plain HTTP on the loopback)."""
    return _cookie(token, max_age=max_age, secure=secure)


def clear_cookie(*, secure: bool) -> str:
    return _cookie("", max_age=0, secure=secure)


def _cookie(value: str, *, max_age: int, secure: bool) -> str:
    parts = [f"{COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Strict"]
    return "; ".join(parts + (["Secure"] if secure else []))


def csrf_token(ring: KeyRing, session: Session) -> str:
    """What a page's forms send back: bound to the page session, made with the newest key."""
    return _csrf(ring.keys[0][1], session)


def csrf_valid(ring: KeyRing, session: Session, given: object) -> bool:
    """Whether `given` is this page session's CSRF token under any key of the ring (a page
    loaded just before a key rotation still writes)."""
    if not isinstance(given, str) or len(given) > 128:
        return False
    return any(hmac.compare_digest(_csrf(secret, session), given) for _, secret in ring.keys)


def _csrf(secret: bytes, session: Session) -> str:
    return hmac.new(secret, f"csrf:{session.session_id}".encode(), hashlib.sha256).hexdigest()
