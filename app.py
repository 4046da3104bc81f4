"""Proofline control plane: every trigger in one screen, each a few lines of delegation."""
import contextvars
import functools
import json
import uuid

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from chalice import AuthResponse, Chalice, ConvertToMiddleware, Rate, Response

from chalicelib import bodies, callers, config, openapi, pages, ports
from chalicelib.errors import InputError, InvalidManifest, InvalidRequest, ProoflineError
from chalicelib.health import checks as health_checks
from chalicelib.health import verdicts
from chalicelib.identity import access, sessions
from chalicelib.identity.access import Caller, Proof
from chalicelib.jobs import attempts, intake, lifecycle, sweeper, uploads
from chalicelib.jobs.documents import inputs_document, job_document, package_document
from chalicelib.market import challenges, job_leases, leases, workers
from chalicelib.models import AttemptResult, Job, State
from chalicelib.settlement import follower, payments, pricing
from chalicelib.telemetry import lambda_handler, logger, metrics

# One logger: Chalice's `app.log` is the Powertools logger's `logging` logger, without a
# handler of Chalice's own (which printed every line a second time).
app = Chalice(app_name="proofline", configure_logs=False)
# Every handler (routes, queues, schedules): the Lambda context on its log lines, and its
# metrics flushed when it returns.
app.register_middleware(ConvertToMiddleware(lambda_handler))
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")
# The HTML pages (status, a job's page) and their assets: chalicelib/pages.py.
app.register_blueprint(pages.blueprint)
@app.authorizer()
def session_authorizer(auth_request):
    """At the gateway: a request to a session route carries a token this stage signed and
    that has not expired (the handler checks it again, and its revocation)."""
    try:
        session = callers.session(ports.default(),
                                  sessions.bearer({"authorization": auth_request.token}))
    except ProoflineError:
        return AuthResponse(routes=[], principal_id="anonymous")
    return AuthResponse(routes=["*"], principal_id=session.did)


def route(path, methods=("GET",), **options):
    """`app.route` under the route's access rule (identity/access.py): a session route has
    the gateway's authorizer and its caller resolved before the view runs. Domain errors
    become a status and a body with a reason code; nothing below the handlers knows HTTP."""
    (method,) = methods
    rule = access.rule(method, path)               # a route without a rule does not load
    if rule.proof is Proof.SESSION:
        options["authorizer"] = session_authorizer

    def decorate(view):
        @functools.wraps(view)
        def handle(*args, **kwargs):
            headers = app.current_request.headers
            logger.set_correlation_id(headers.get("x-correlation-id") or kwargs.get("job_id")
                                      or str(uuid.uuid4()))
            try:
                if rule.proof is Proof.SESSION:
                    caller = callers.caller(ports.default(), headers)
                    access.admit(caller, rule)
                    _caller.set(caller)
                return view(*args, **kwargs)
            except ProoflineError as error:
                if error.status >= 500:
                    logger.exception("request failed")
                return Response(error.to_dict(), status_code=error.status)
        return app.route(path, methods=[method], **options)(handle)
    return decorate


def caller() -> Caller:
    """The signed-in caller of the session route being served."""
    return _caller.get()


def _body() -> dict:
    """The request's JSON object, bounded in size and depth: malformed is a 400."""
    return bodies.json_object(app.current_request.raw_body)


@route("/health")
def health():
    """Public and cheap. With `?deep=1`, an operator's: the stage's server-side checks from
    this function's point of view, `{ok, stage, checks: [{name, ok, detail}]}`, 200 whether
    or not they pass (`ok` says; `proofline doctor` exits 1 on false)."""
    s = config.settings()
    request = app.current_request
    if _deep(request.query_params or {}):
        access.admit(callers.caller(ports.default(), request.headers),
                     access.query_rule("GET", "/health", "deep"))
        return verdicts.report(s.stage, health_checks.server_checks(s))
    return {"status": "ok", "stage": s.stage,
            "sign_in": {"domain": s.session_domain, "chain_id": s.chain_id},
            # EIP-712 domain of signed requests; without a stage chain, the signer's DID's.
            "signing": {**callers.signing_domain(ports.default()).to_json(),
                        "chain_id": s.chain_id}}


def _deep(params) -> bool:
    value = (params.get("deep") or "0").lower()
    if value not in ("0", "1", "false", "true"):
        raise InvalidRequest("deep is 1 (run the checks) or 0", reason="invalid_query")
    return value in ("1", "true")


@route("/openapi.json")
def openapi_document():
    return openapi.document()


@route("/quotes", methods=["POST"])
def quote():
    """What a job would be charged here, in its payment token, before it is submitted."""
    p = ports.default()
    return pricing.quote(bodies.model(pricing.QuoteRequest, _body(), what="quote request"),
                         catalog=p.catalog,
                         tokens=p.settings.payment_tokens)


@route("/sessions", methods=["POST"])
def sign_in():
    """Sign-In with Ethereum (EIP-4361) → a short-lived bearer token for reads."""
    return Response(callers.sign_in(ports.default(), _body()), status_code=201)


@route("/sessions", methods=["DELETE"])
def revoke_sessions():
    """Void the caller's sessions (an operator: any DID's, `?did=`)."""
    did = (app.current_request.query_params or {}).get("did")
    return callers.revoke(ports.default(), caller(), did)


@route("/jobs", methods=["POST"],
       content_types=["application/json", "application/x-yaml", "text/yaml"])
def submit_job():
    request = app.current_request
    intake.bind_lambda_context(app.lambda_context)
    fields = None
    try:
        fields = intake.parse_fields(request.raw_body or b"",
                                     max_bytes=config.settings().max_manifest_bytes,
                                     yaml_ok="yaml" in request.headers.get("content-type", ""))
        manifest = intake.signed_manifest(ports.default(), request.headers, fields)
        job, created = intake.submit(ports.default(), manifest,
                                     idempotency_key=request.headers.get("idempotency-key"),
                                     correlation_id=request.headers.get("x-correlation-id"))
    except (InvalidManifest, InputError) as error:
        intake.refused(ports.default(), fields, error)
        raise
    return Response(job, status_code=201 if created else 200,
                    headers={"Location": f"/jobs/{job['job_id']}"})


@route("/jobs", methods=["GET"])
def list_jobs():
    params = app.current_request.query_params or {}
    try:
        state = State(params["state"]) if "state" in params else None
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason="invalid_query") from exc
    limit = bodies.limit(params.get("limit"), default=50)
    # A client lists its own jobs; an operator every job, or one client's (`?client=`).
    who = caller()
    client = params.get("client") if who.operator else who.did
    return lifecycle.list_jobs(ports.default(), state, limit, client=client,
                               cursor=params.get("cursor"))


def _own_view(job_id: str):
    view = lifecycle.view(ports.default(), job_id)
    access.readable(caller(), view.job)
    return view


@route("/jobs/{job_id}")
def get_job(job_id):
    return job_document(ports.default(), _own_view(job_id))


@route("/jobs/{job_id}/package")
def job_package(job_id):
    return package_document(ports.default(), _own_view(job_id))


@route("/jobs/{job_id}/inputs")
def job_inputs(job_id):
    return inputs_document(ports.default(), _own_view(job_id))


@route("/jobs/{job_id}/events")
def job_events(job_id):
    view = _own_view(job_id)
    return {"job_id": job_id, "state": view.job.state,
            "events": [e.model_dump(mode="json") for e in view.events]}


@route("/jobs/{job_id}/cancel", methods=["POST"])
def cancel_job(job_id):
    return intake.cancel_signed(ports.default(), app.current_request.headers,
                              job_id).model_dump(mode="json")


@route("/ui/links", methods=["POST"])
def page_link():
    """A one-time link to a job's page (`proofline ui JOB`): open it within two minutes."""
    request = bodies.model(openapi.PageLink, _body(), what="page link")
    view = _own_view(request.job_id)
    return Response(callers.page_link(ports.default(), caller(), view.job.job_id),
                    status_code=201)


@route("/uploads", methods=["POST"])
def create_upload():
    """A signed request to upload (sha256, size): a PUT URL bound to them, into quarantine."""
    return Response(uploads.create(ports.default(), app.current_request.headers, _body()),
                    status_code=201)


@route("/uploads/{upload_id}/complete", methods=["POST"])
def complete_upload(upload_id):
    """A multipart upload's parts are all sent: `{"upload_id", "parts": [{part_number, etag}]}`."""
    return Response(uploads.complete(ports.default(), app.current_request.headers, upload_id,
                                     _body()), status_code=202)


@route("/uploads/{upload_id}")
def get_upload(upload_id):
    """Whether an upload was hashed and promoted (`ready`), or refused (`failed`)."""
    return uploads.status(ports.default(), caller(), upload_id)


@app.on_sqs_message(queue=config.settings().intake_queue, batch_size=10)
def on_intake(event):
    """S3 → SQS notifications of the intake bucket."""
    intake.bind_lambda_context(event.context)

    def accept(record):
        for drop in intake.drops(json.loads(record.body)):
            if uploads.is_upload(ports.default(), drop.bucket, drop.key):
                upload = uploads.promote(ports.default(), drop.key)
                logger.info("upload", extra={"key": drop.key,
                                             "state": upload.state if upload else "stray"})
                continue
            job = intake.accept_drop(ports.default(), drop)
            if job:
                logger.set_correlation_id(job["correlation_id"])
                logger.info("drop accepted", extra={"job_id": job["job_id"], "state": job["state"]})
    return _batch(event, accept)


@app.on_sqs_message(queue=config.settings().verify_queue, batch_size=10)
def on_verify(event):
    def verify(record):
        body = json.loads(record.body)
        job = Job.model_validate(body["job"])
        logger.set_correlation_id(job.correlation_id)
        attempts.verify(ports.default(), job, AttemptResult.model_validate(body["result"]))
    return _batch(event, verify)


SETTLEMENT = ports.SETTLEMENT_QUEUE


@app.on_sqs_message(queue=config.settings().settlement_queue, batch_size=SETTLEMENT.batch_size,
                    maximum_batching_window_in_seconds=SETTLEMENT.batch_window_s)
def on_settlement(event):
    """Chain calls driven by committed job state: assign, release, refund. Those that come
    within the batching window go out together (one assignBatch, one releaseBatch); a
    record that fails alone is retried alone."""
    requests, failed = [], []
    for record in event:
        try:
            body = json.loads(record.body)
            if body["action"] not in payments.ACTIONS:
                raise KeyError(body["action"])
            requests.append((record.to_dict()["messageId"], body["action"], body["job_id"]))
        except (ValueError, KeyError, TypeError):   # never retried: it would never parse
            logger.error("malformed settlement message", extra={"body": record.body[:500]})
    outcomes = payments.settle_batch(ports.default(), [(a, j) for _, a, j in requests])
    for (message_id, action, job_id), outcome in zip(requests, outcomes):
        if isinstance(outcome, Exception):
            logger.error("settlement failed", extra={"action": action, "job_id": job_id,
                                                     "error": repr(outcome)})
            metrics.count("SettlementActionFailed", action=action)
            failed.append({"itemIdentifier": message_id})
        else:
            logger.info("settlement", extra={"action": action, "job_id": job_id,
                                             "outcome": outcome})
    return {"batchItemFailures": failed}


@app.schedule(Rate(1, unit=Rate.MINUTES))
def follow_chain(event):
    """Funding is learned from the chain's Funded logs, never from the client's word."""
    if ports.default().chain is not None:
        follower.follow_chain(ports.default())


@route("/workers", methods=["POST"])
def register_worker():
    request, p = app.current_request, ports.default()
    worker = challenges.enrol(p, workers.register_signed(p, request.headers,
                                                         _body()))
    return Response(worker.public(p.clock(), p.settings.heartbeat_ttl_s), status_code=201,
                    headers={"Location": f"/workers/{worker.did}"})


@route("/workers", methods=["GET"])
def list_workers():
    p = ports.default()
    params = app.current_request.query_params or {}
    return workers.page(p, bodies.limit(params.get("limit"), default=100),
                        bodies.cursor(params.get("cursor")))


@route("/workers/{did}")
def get_worker(did):
    p = ports.default()
    access.worker_record(caller(), did)
    return p.workers.get(did).public(p.clock(), p.settings.heartbeat_ttl_s)


@route("/workers/{did}/heartbeat", methods=["POST"])
def worker_heartbeat(did):
    request, p = app.current_request, ports.default()
    worker = challenges.enrol(p, workers.heartbeat_signed(p, request.headers, did,
                                                          _body()))
    return worker.public(p.clock(), p.settings.heartbeat_ttl_s)


@route("/workers/{did}/lease", methods=["POST"])
def lease_task(did):
    """The next task offered to this worker, leased to it (`{"lease": null}` when none)."""
    request = app.current_request
    return {"lease": leases.lease(ports.default(), request.headers, did,
                                  _body())}


@route("/tasks/{ref}/result", methods=["POST"])
def task_result(ref):
    request = app.current_request
    task = leases.submit_result(ports.default(), request.headers, ref, _body())
    return Response({"task_ref": ref, "state": task.state.value, "attempt": task.attempt},
                    status_code=202)


@route("/jobs/{job_id}/result", methods=["POST"])
def job_result(job_id):
    """A marketplace worker's signed result for a job it leased whole (inference)."""
    request = app.current_request
    job = job_leases.submit_result(ports.default(), request.headers, job_id,
                                   _body())
    return Response({"job_id": job_id, "state": job.state.value if job else None},
                    status_code=202)


@route("/jobs/{job_id}/countersign", methods=["POST"])
def job_countersign(job_id):
    """An escrow's marketplace payee signs the verified result it is paid for."""
    request = app.current_request
    leases.countersign(ports.default(), request.headers, job_id, _body())
    return Response({"job_id": job_id, "countersigned": True}, status_code=202)


@route("/jobs/{job_id}/release", methods=["POST"])
def job_release(job_id):
    """A marketplace worker gives back a job it leased whole and cannot finish."""
    job = job_leases.release(ports.default(), app.current_request.headers, job_id, _body())
    return {"job_id": job_id, "state": job.state.value if job else None}


@route("/tasks/{ref}/release", methods=["POST"])
def task_release(ref):
    request = app.current_request
    task = leases.release(ports.default(), request.headers, ref, _body())
    return {"task_ref": ref, "state": task.state.value if task else None}


@route("/settlement/drift")
def settlement_drift():
    if ports.default().chain is None:
        raise InvalidRequest("this stage has no chain configured", reason="settlement_disabled")
    return {"drift": payments.reconcile(ports.default())}


@app.schedule(Rate(15, unit=Rate.MINUTES))
def reconcile(event):
    """Repair what is safe to repair (re-sent settlement actions are idempotent)."""
    if ports.default().chain is not None:
        for row in payments.reconcile(ports.default(), repair=True):
            logger.warning("settlement drift", extra=row)


@app.schedule(Rate(1, unit=Rate.MINUTES))
def sweep(event):
    for ref, action in sweeper.sweep(ports.default()):
        logger.info("swept", extra={"ref": ref, "action": action})


def _batch(event, record_handler):
    """Powertools partial batch response: only the records that raised are retried."""
    return process_partial_response(event=event.to_dict(), context=event.context,
                                    record_handler=record_handler,
                                    processor=BatchProcessor(event_type=EventType.SQS))
