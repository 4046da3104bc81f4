"""The HTML pages, as a blueprint of the app: the public status page, and a job's page for
its client (or an operator) in a browser. Thin, like app.py's handlers; each route still has
its row in identity/access.py, and a page's errors are pages too.

A job's page is opened by a one-time link (`proofline ui JOB`, from `POST /ui/links`): the
link's code becomes a page session in an HttpOnly cookie (identity/pages.py), and every
write a page makes carries its CSRF token as well."""
from __future__ import annotations

import functools
import re
import uuid
from pathlib import Path
from urllib.parse import parse_qs

from chalice import Blueprint, Response

from chalicelib import callers, ports
from chalicelib.errors import InvalidRequest, NotFound, ProoflineError
from chalicelib.identity import access, pages
from chalicelib.identity.access import Caller
from chalicelib.identity.sessions import Session
from chalicelib.jobs import lifecycle
from chalicelib.status import board
from chalicelib.status import html as status_html
from chalicelib.telemetry import logger
from chalicelib.ui import html as job_html
from chalicelib.ui import views

blueprint = Blueprint(__name__)

# A page is a whole document drawn here: nothing of it runs or loads from elsewhere, and
# where it came from is not told to the sites it links to.
_PAGE = {"Content-Type": "text/html; charset=utf-8", "X-Content-Type-Options": "nosniff",
         "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
STATUS_HEADERS = {**_PAGE, "Cache-Control": "no-cache",
                  "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                             "img-src 'self' data:; base-uri 'none'; "
                                             "frame-ancestors 'none'"}
FORM = "application/x-www-form-urlencoded"
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
MAX_FORM_BYTES = 4096

STATIC = Path(__file__).parent / "ui" / "static"
# The pages' scripts: the job page's own, and hls.js (vendored by `make install` from npm).
ASSETS = frozenset({"job.js", "hls.min.js"})


def page_route(path: str, methods=("GET",), **options):
    """A route of a page under its access rule: errors become a page with the status and
    its reason code (a playlist's, JSON: its reader is the player)."""
    (method,) = methods
    access.rule(method, path)                      # a route without a rule does not load

    def decorate(view):
        @functools.wraps(view)
        def handle(*args, **kwargs):
            logger.set_correlation_id(kwargs.get("job_id") or str(uuid.uuid4()))
            try:
                return view(*args, **kwargs)
            except ProoflineError as error:
                if error.status >= 500:
                    logger.exception("page failed")
                if path.endswith("/playlist"):
                    return Response(error.to_dict(), status_code=error.status)
                return Response(job_html.error_page(error.status, error.reason, error.message),
                                status_code=error.status, headers=STATUS_HEADERS)
        return blueprint.route(path, methods=[method], **options)(handle)
    return decorate


@page_route("/status.json")
def status():
    """The network's public figures: per job class over the last hour and day, workers,
    queues and settlement (aggregates only; read from time buckets, never from a scan)."""
    p = ports.default()
    return board.status_document(p, p.clock())


@page_route("/status")
def status_page():
    """The same figures as a page, its plots drawn here: readable without JavaScript."""
    return Response(status_html.page(status()), headers=STATUS_HEADERS)


@page_route("/ui/jobs/{job_id}")
def job_page(job_id):
    """A job's page. With `?code=` (a one-time link): the page session goes into a cookie
    and the browser is sent to the page without the code."""
    p = ports.default()
    code = (blueprint.current_request.query_params or {}).get("code")
    if code is not None:
        token, _ = callers.open_link(p, code)
        return Response("", status_code=303, headers={
            **_PAGE, "Location": job_id,
            "Set-Cookie": pages.set_cookie(token, max_age=pages.PAGE_SECONDS, secure=_https())})
    who, session = _page_caller()
    view = _readable_view(who, job_id)
    page, origins = views.job_page(p, view, csrf=callers.csrf_token(p, session))
    return Response(page, headers={**_PAGE, "Content-Security-Policy": _job_csp(origins)})


@page_route("/ui/jobs/{job_id}/playlist")
def job_playlist(job_id):
    """A playlist of the job's package, rewritten for the page's player."""
    p = ports.default()
    path = (blueprint.current_request.query_params or {}).get("path") or ""
    who, _ = _page_caller()
    view = _readable_view(who, job_id)
    return Response(views.playlist(p, view, path), headers={
        "Content-Type": "application/vnd.apple.mpegurl", "Cache-Control": "no-store"})


@page_route("/ui/jobs/{job_id}/cancel", methods=["POST"], content_types=[FORM])
def job_page_cancel(job_id):
    """The page's cancel button: the job's client (or an operator), with the page's token."""
    p = ports.default()
    who, session = _page_caller()
    callers.check_csrf(p, session, _form().get("csrf"))
    _readable_view(who, job_id)
    lifecycle.cancel(p, job_id, by=who.did)
    return Response("", status_code=303, headers={**_PAGE, "Location": f"../{job_id}"})


@page_route("/ui/sign-out", methods=["POST"], content_types=[FORM])
def page_sign_out():
    """Ends the browser's page session: its cookie is cleared and its token void (the CLI's
    sessions are untouched)."""
    p = ports.default()
    _, session = _page_caller()
    callers.check_csrf(p, session, _form().get("csrf"))
    callers.sign_out_page(p, session)
    return Response(job_html.signed_out_page(), headers={
        **STATUS_HEADERS, "Set-Cookie": pages.clear_cookie(secure=_https())})


@page_route("/ui/assets/{name}")
def page_asset(name):
    """The pages' scripts, from the package."""
    body = _asset(name) if name in ASSETS else None
    if body is None:
        raise NotFound(f"no asset {name!r}", reason="no_such_asset")
    return Response(body, headers={
        "Content-Type": "text/javascript; charset=utf-8", "X-Content-Type-Options": "nosniff",
        "Cache-Control": "public, max-age=300"})


@functools.cache
def _asset(name: str) -> str | None:
    """An asset's text, read once per container (hls.js is 600 KB); None if not packaged."""
    path = STATIC / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _readable_view(who: Caller, job_id: str):
    """The job's records, if `who` may read them (else the same 404 as no such job)."""
    view = lifecycle.view(ports.default(), job_id)
    access.readable(who, view.job)
    return view


def _page_caller() -> tuple[Caller, Session]:
    return callers.page_caller(ports.default(), blueprint.current_request.headers)


def _form() -> dict[str, str]:
    raw = blueprint.current_request.raw_body or b""
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidRequest(f"a page's form is at most {MAX_FORM_BYTES} bytes",
                             reason="body_too_large")
    try:
        fields = parse_qs(raw.decode("utf-8"), max_num_fields=16, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("not a form", reason="malformed_form") from None
    return {name: values[0] for name, values in fields.items()}


def _https() -> bool:
    """Served over HTTPS (API Gateway says so): the cookie is then Secure as well."""
    headers = {k.lower(): v for k, v in blueprint.current_request.headers.items()}
    return headers.get("x-forwarded-proto", "").lower() == "https"


def _job_csp(origins: set[str]) -> str:
    """The job page runs the stage's own scripts only; its player reads playlists here and
    segments from the storage endpoint of their presigned links (`origins`), and plays them
    through Media Source Extensions (blob: URLs, a blob: worker)."""
    connect = " ".join(["'self'", *sorted(o for o in origins if _ORIGIN.match(o))])
    return ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; media-src 'self' blob:; worker-src blob:; "
            f"connect-src {connect}; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'")
