"""The OpenAPI 3.1 description of the HTTP API (`GET /openapi.json`), generated from the
pydantic models the handlers validate with and from the access rules, so it cannot describe
another API than the one that runs. Pure."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.callers import SignIn
from chalicelib.identity import access, pages, signing
from chalicelib.identity.access import Proof
from chalicelib.jobs.uploads import Completion, UploadRequest
from chalicelib.market.leases import MAX_TASKS
from chalicelib.market.registry import Claims, Health, ModelExecution, SegmentExecution
from chalicelib.models import Manifest, State
from chalicelib.settlement.pricing import QuoteRequest

Sha256 = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Did = Annotated[str, Field(pattern=r"^did:pkh:eip155:[1-9][0-9]{0,11}:0x[0-9a-fA-F]{40}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Registration(_Body):
    did: Did
    claims: Claims


class Heartbeat(_Body):
    did: Did
    health: Health = Health()


class LeaseRequest(_Body):
    did: Did
    # Renditions of one segment leased together (one download, one decode); 1 by default.
    max_tasks: Annotated[int, Field(ge=1, le=MAX_TASKS)] = 1


class OutputReport(_Body):
    name: str
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=0)]


class TaskResult(_Body):
    did: Did
    task_ref: str
    attempt: Annotated[int, Field(ge=1)]
    outputs: list[OutputReport]
    execution: SegmentExecution | None = None


class TaskRelease(_Body):
    did: Did
    task_ref: str
    reason: Annotated[str, Field(max_length=200)] = ""


class JobOutput(_Body):
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=0)]


class JobResult(_Body):
    did: Did
    job_id: str
    attempt: Annotated[int, Field(ge=1)]
    output: JobOutput
    execution: ModelExecution | None = None
    signature: str | None = None


class JobRelease(_Body):
    did: Did
    job_id: str
    attempt: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(max_length=200)] = ""


class Countersign(_Body):
    did: Did
    job_id: str
    signature: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$")]


class PageLink(_Body):
    job_id: Annotated[str, Field(min_length=1, max_length=128)]


class PageForm(_Body):
    """What a page's forms post (`application/x-www-form-urlencoded`)."""
    csrf: Annotated[str, Field(min_length=1, max_length=128)]


BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/sessions"): SignIn,
    ("POST", "/quotes"): QuoteRequest,
    ("POST", "/jobs"): Manifest,
    ("POST", "/uploads"): UploadRequest,
    ("POST", "/uploads/{upload_id}/complete"): Completion,
    ("POST", "/workers"): Registration,
    ("POST", "/workers/{did}/heartbeat"): Heartbeat,
    ("POST", "/workers/{did}/lease"): LeaseRequest,
    ("POST", "/tasks/{ref}/result"): TaskResult,
    ("POST", "/tasks/{ref}/release"): TaskRelease,
    ("POST", "/jobs/{job_id}/result"): JobResult,
    ("POST", "/jobs/{job_id}/release"): JobRelease,
    ("POST", "/jobs/{job_id}/countersign"): Countersign,
    ("POST", "/ui/links"): PageLink,
    ("POST", "/ui/jobs/{job_id}/cancel"): PageForm,
    ("POST", "/ui/sign-out"): PageForm,
}
FORMS = {("POST", "/ui/jobs/{job_id}/cancel"), ("POST", "/ui/sign-out")}

QUERIES: dict[tuple[str, str], list[dict]] = {
    ("GET", "/jobs"): [
        {"name": "state", "in": "query", "schema": {"type": "string",
                                                    "enum": [s.value for s in State]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                    "maximum": 500, "default": 50}},
        {"name": "client", "in": "query", "description": "an operator's filter",
         "schema": {"type": "string"}},
        {"name": "cursor", "in": "query", "description": "`next` of the previous page",
         "schema": {"type": "string"}}],
    ("GET", "/workers"): [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                    "maximum": 500, "default": 100}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
    ("DELETE", "/sessions"): [
        {"name": "did", "in": "query", "description": "an operator's: whose sessions",
         "schema": {"type": "string"}}],
    ("GET", "/ui/jobs/{job_id}"): [
        {"name": "code", "in": "query", "description": "a one-time link's code (POST "
         "/ui/links): sets the page session's cookie and redirects to the page without it",
         "schema": {"type": "string"}}],
    ("GET", "/ui/jobs/{job_id}/playlist"): [
        {"name": "path", "in": "query", "required": True,
         "description": "a playlist of the job's package, e.g. `master.m3u8`",
         "schema": {"type": "string"}}],
    ("GET", "/health"): [
        {"name": "deep", "in": "query",
         "description": "an operator's (a session): run the stage's server-side checks and "
                        "answer `{ok, stage, checks: [{name, ok, detail}]}`, 200 either way",
         "schema": {"type": "string", "enum": ["0", "1", "false", "true"]}}],
}

_ERROR = {"type": "object", "required": ["reason", "message"],
          "properties": {"reason": {"type": "string"}, "message": {"type": "string"},
                         "details": {}}}


def document(version: str = "1") -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, dict] = {}
    for (method, path), rule in access.ROUTES.items():
        operation: dict[str, Any] = {
            "operationId": f"{method.lower()}_{_slug(path)}",
            "description": f"Who: {rule.who}." + "".join(
                f" With `{q}`: {r.who}." for (m, p, q), r in access.QUERY_RULES.items()
                if (m, p) == (method, path)),
            "parameters": [{"name": name, "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1}}
                           for name in _path_names(path)] + QUERIES.get((method, path), []),
            "responses": {"default": {"description": "the result, or an error with a reason",
                                      "content": {"application/json": {"schema": {}}}}},
            "security": _route_security(method, path, rule),
        }
        model = BODIES.get((method, path))
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            media = ("application/x-www-form-urlencoded" if (method, path) in FORMS
                     else "application/json")
            operation["requestBody"] = {"required": True, "content": {media: {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Proofline", "version": version,
                 "description": "Verifiable compute jobs: accepted, routed, verified, settled."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "session": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                        "description": "POST /sessions (Sign-In with Ethereum)"},
            "page": {"type": "apiKey", "in": "cookie", "name": pages.COOKIE,
                     "description": "a page session: opened by a one-time link from POST "
                                    "/ui/links (`proofline ui JOB`)"},
            "eip712": {"type": "apiKey", "in": "header", "name": signing.SIGNATURE_HEADER,
                       "description": "an EIP-712 signature over the exact request, with "
                                      f"{', '.join(signing.HEADERS[:3])}"}}},
    }


def _security(rule: access.Rule) -> list[dict]:
    if rule.proof is Proof.SESSION:
        return [{"session": []}]
    if rule.proof is Proof.SIGNATURE:
        return [{"eip712": []}]
    if rule.proof is Proof.PAGE:
        return [{"page": []}]
    return []


def _route_security(method: str, path: str, rule: access.Rule) -> list[dict]:
    """The route's proof; with a query rule's too (a public route: none, or a session)."""
    entries = _security(rule)
    for (m, p, _), query_rule in access.QUERY_RULES.items():
        if (m, p) == (method, path):
            entries = (entries or [{}]) + _security(query_rule)
    return entries


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _slug(path: str) -> str:
    return "_".join(p.strip("{}").replace(".", "_") for p in path.strip("/").split("/")) or "root"
