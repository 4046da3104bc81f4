"""Who may call what: one rule per route, and the owner checks behind them.

Every HTTP route of the app has exactly one row here (the app refuses to load otherwise,
and the README's table is held to this one by a test). How a caller proves who it is:

- `session`: a bearer token from `POST /sessions` (Sign-In with Ethereum), for reads; the
  deployed API checks it in an authorizer before the handler runs, the handler again;
- `signature`: an EIP-712 signature over the exact request (signing.py), for writes;
- `page`: a browser's page session, an HttpOnly cookie a one-time link from `proofline ui`
  set (pages.py); what a page writes carries the page's CSRF token as well;
- `none`: nothing.

Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from chalicelib.errors import Forbidden, JobNotFound
from chalicelib.identity.signing import canonical_did
from chalicelib.models import Job


class Proof(StrEnum):
    NONE = "none"
    SESSION = "session"
    SIGNATURE = "signature"
    PAGE = "page"


@dataclass(frozen=True)
class Rule:
    proof: Proof
    who: str                          # in words, for the README and error messages
    operator_only: bool = False


ANYONE = Rule(Proof.NONE, "anyone")
SIGNED_IN = Rule(Proof.SESSION, "any signed-in DID; sees only its own")
JOB_OWNER = Rule(Proof.SESSION, "the job's client, or an operator")
UPLOADER_SIGNED = Rule(Proof.SIGNATURE, "the uploader, signing")
UPLOAD_OWNER = Rule(Proof.SESSION, "the uploader, or an operator")
WORKER_SELF = Rule(Proof.SESSION, "the worker itself, or an operator")
OPERATOR = Rule(Proof.SESSION, "an operator", operator_only=True)
CLIENT_SIGNED = Rule(Proof.SIGNATURE, "a client, signing the request (its DID is the owner)")
OWNER_SIGNED = Rule(Proof.SIGNATURE, "the job's client, or an operator, signing")
WORKER_SIGNED = Rule(Proof.SIGNATURE, "the worker named in the path, signing")
LEASEHOLDER_SIGNED = Rule(Proof.SIGNATURE, "the worker holding the lease, signing")
PAYEE_SIGNED = Rule(Proof.SIGNATURE, "the escrow's payee, signing")
PAGE_OWNER = Rule(Proof.PAGE, "the job's client, or an operator, in a page session")
PAGE_OWNER_WRITE = Rule(Proof.PAGE, "the job's client, or an operator, in a page session, "
                                    "with the page's CSRF token")
PAGE_WRITE = Rule(Proof.PAGE, "a page session, with its CSRF token")

ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): ANYONE,
    ("GET", "/openapi.json"): ANYONE,
    ("GET", "/status.json"): ANYONE,
    ("GET", "/status"): ANYONE,
    ("POST", "/quotes"): ANYONE,                       # prices are public
    ("POST", "/sessions"): ANYONE,                     # the sign-in itself
    ("DELETE", "/sessions"): SIGNED_IN,                # revokes the caller's sessions
    ("POST", "/jobs"): CLIENT_SIGNED,
    ("GET", "/jobs"): SIGNED_IN,
    ("GET", "/jobs/{job_id}"): JOB_OWNER,
    ("GET", "/jobs/{job_id}/package"): JOB_OWNER,
    ("GET", "/jobs/{job_id}/inputs"): JOB_OWNER,
    ("GET", "/jobs/{job_id}/events"): JOB_OWNER,
    ("POST", "/jobs/{job_id}/cancel"): OWNER_SIGNED,
    ("POST", "/uploads"): CLIENT_SIGNED,
    ("GET", "/uploads/{upload_id}"): UPLOAD_OWNER,
    ("POST", "/uploads/{upload_id}/complete"): UPLOADER_SIGNED,
    ("POST", "/workers"): WORKER_SIGNED,
    ("GET", "/workers"): OPERATOR,
    ("GET", "/workers/{did}"): WORKER_SELF,
    ("POST", "/workers/{did}/heartbeat"): WORKER_SIGNED,
    ("POST", "/workers/{did}/lease"): WORKER_SIGNED,
    ("POST", "/tasks/{ref}/result"): LEASEHOLDER_SIGNED,
    ("POST", "/tasks/{ref}/release"): LEASEHOLDER_SIGNED,
    ("POST", "/jobs/{job_id}/result"): LEASEHOLDER_SIGNED,
    ("POST", "/jobs/{job_id}/release"): LEASEHOLDER_SIGNED,
    ("POST", "/jobs/{job_id}/countersign"): PAYEE_SIGNED,
    ("GET", "/settlement/drift"): OPERATOR,
    ("POST", "/ui/links"): JOB_OWNER,                  # a one-time link to the job's page
    ("GET", "/ui/jobs/{job_id}"): PAGE_OWNER,          # `?code=` opens a one-time link
    ("GET", "/ui/jobs/{job_id}/playlist"): PAGE_OWNER,
    ("POST", "/ui/jobs/{job_id}/cancel"): PAGE_OWNER_WRITE,
    ("POST", "/ui/sign-out"): PAGE_WRITE,
    ("GET", "/ui/assets/{name}"): ANYONE,              # the pages' own scripts
}


# A query parameter that asks a route for more than its own rule gives: its own rule. The
# route itself keeps its rule (`GET /health` stays public and cheap).
QUERY_RULES: dict[tuple[str, str, str], Rule] = {
    # the stage's server-side checks: they name its resources, keys and what is broken
    ("GET", "/health", "deep"): OPERATOR,
}


def rule(method: str, path: str) -> Rule:
    try:
        return ROUTES[(method.upper(), path)]
    except KeyError:
        raise LookupError(f"{method} {path} has no access rule in chalicelib/identity/access.py"
                          ) from None


def query_rule(method: str, path: str, parameter: str) -> Rule:
    """The rule of a route called with `parameter` (e.g. `GET /health?deep=1`)."""
    try:
        return QUERY_RULES[(method.upper(), path, parameter)]
    except KeyError:
        raise LookupError(f"{method} {path}?{parameter} has no access rule in "
                          "chalicelib/identity/access.py") from None


@dataclass(frozen=True)
class Caller:
    """Who a signed-in request speaks for."""
    did: str
    operator: bool = False

    @classmethod
    def of(cls, did: str, operators: frozenset[str]) -> "Caller":
        return cls(did, did in operators)


def admit(caller: Caller, route_rule: Rule) -> None:
    if route_rule.operator_only and not caller.operator:
        raise Forbidden("only an operator may do this", reason="operator_only")


def owns(caller: Caller, job: Job) -> bool:
    """A job is its client's; one without a client (a challenge, an unmapped drop, an unsigned
    local submit) is the operators'."""
    return caller.operator or (job.manifest.client_did is not None
                               and job.manifest.client_did == caller.did)


def readable(caller: Caller, job: Job) -> Job:
    """The job, if `caller` may see it; otherwise the same 404 as a job that does not exist,
    so ids cannot be probed."""
    if not owns(caller, job):
        raise JobNotFound(f"no job {job.job_id!r}")
    return job


def worker_record(caller: Caller, did: str) -> None:
    try:
        mine = canonical_did(did) == caller.did
    except ValueError:
        mine = False
    if not (caller.operator or mine):
        raise Forbidden(f"the record of {did} is its own and the operators'",
                        reason="not_your_record")
