"""The inference pool: consumer of the inference queue, for `embed_batch` and
`generate_small` jobs and for their re-execution checks.

A delivered batch is worked together: the texts of every embed job in it, and the audited
rows of every embedding check in it, go to the model in one call (up to the class's
`max_batch`), so many small requests and their re-executions cost one model pass. With
Modal credentials the methods are spawned on Modal's GPUs and the call ids kept on the
attempts for `collect` (a schedule) to finish; without them (locally, in tests, in CI) the
same classes run here through `.local()`, warm across invocations of this process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import numpy as np

from chalicelib import ports
from chalicelib.aws.blobs import S3Uri, attempt_key
from chalicelib.aws.queues import GatheredSends
from chalicelib.aws.store import GatheredCounts
from chalicelib.context import Ports
from chalicelib.errors import InputError
from chalicelib.jobs import attempts, states
from chalicelib.jobs.lifecycle import apply
from chalicelib.market import workers
from chalicelib.market.inference_inputs import dispatched_prompt, dispatched_texts, texts_of
from chalicelib.media import probe as media
from chalicelib.models import AttemptResult, Job, Output, State, is_pool
from chalicelib.settlement.chain import pool_signature
from chalicelib.telemetry import lambda_handler, logger
from chalicelib.verification import audit
from chalicelib.verification import inference as inference_checks
from chalicelib.verification.policies import Verdict

from . import inference

WORKER = "pool:inference"
_warm: dict[tuple, object] = {}


def modal_enabled() -> bool:
    return bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"))


def remote(kind: str, model_id: str | None = None):
    """The class as deployed on Modal (`modal deploy gpu_functions/inference.py`)."""
    import modal
    if kind == "embed_batch":
        return modal.Cls.from_name(inference.app.name, "Embedder")()
    return modal.Cls.from_name(inference.app.name, "Generator")(
        model_id=model_id or inference.TINY_GENERATOR)


def model(kind: str, model_id: str | None = None):
    """One instance per model per process: loaded once, warm for every later batch."""
    key = (kind, model_id)
    if key not in _warm:
        _warm[key] = (inference.Embedder() if kind == "embed_batch"
                      else inference.Generator(model_id=model_id or inference.TINY_GENERATOR))
    return _warm[key]


# -- running jobs -----------------------------------------------------------------------------
@dataclasses.dataclass
class EmbedCheck:
    """An embedding result waiting for the re-execution of its audited rows: `rows` were
    drawn after the worker committed to its output, and `texts` are those rows' texts, which
    go into the next model call (shared with executions where both are waiting)."""
    job: Job
    result: AttemptResult
    data: bytes
    rows: list[int]
    texts: list[str]
    expected_count: int
    message_id: str | None = None


def run_batch(p: Ports, messages: list[tuple[dict, int]],
              checks: list[EmbedCheck] = ()) -> list[str]:
    """`messages` are (body, receive count) of dispatched jobs, started and run together;
    `checks` embedding checks whose audited rows share their model calls. Returns the
    message ids of the checks that could not be finished (to be delivered again).

    The messages a group's commits send (their checks, retries) and the class totals they
    add go out together once the group is done: one batched send and one update."""
    p = _gathering(p)
    try:
        return _run_batch(p, messages, checks)
    finally:
        _flush(p)


def _run_batch(p: Ports, messages: list[tuple[dict, int]],
               checks: list[EmbedCheck]) -> list[str]:
    running = []
    for body, receives in messages:
        job = Job.model_validate(body["job"])
        queued_s = (datetime.now(timezone.utc) - job.updated_at).total_seconds()
        started = attempts.start(p, job, body["attempt"], WORKER, redelivered=receives > 1)
        if started is not None:
            running.append((started, round(queued_s, 3)))
    embeds = [(j, q) for j, q in running if j.kind == "embed_batch"]
    failed: list[str] = []
    if modal_enabled():
        # Executions are spawned (collected later), so the checks, which need their
        # reference now, make one call of their own (per `max_batch` of rows).
        for group in _batches(p, [], checks):
            failed += _run_embeds(p, group)
            _flush(p)
        checks = []
    for group in _batches(p, embeds, checks):
        failed += _run_embeds(p, group)
        _flush(p)
    for job, queued_s in running:
        if job.kind == "generate_small":
            _guarded(p, job, lambda j=job, q=queued_s: _run_generate(p, j, q))
    return failed


def _gathering(p: Ports) -> Ports:
    if isinstance(p.queues, GatheredSends):
        return p
    return dataclasses.replace(p, queues=GatheredSends(p.queues),
                               store=GatheredCounts(p.store))


def _flush(p: Ports) -> None:
    if isinstance(p.queues, GatheredSends):
        p.queues.flush()
    if isinstance(p.store, GatheredCounts):
        p.store.flush()


Unit = EmbedCheck | tuple[Job, float]


def _batches(p: Ports, jobs: list[tuple[Job, float]],
             checks: list[EmbedCheck] = ()) -> list[list[tuple[Unit, list[str]]]]:
    """Group checks (first: they finish jobs) and jobs so that no model call takes more than
    `max_batch` texts (one larger than that is a call of its own)."""
    limit = p.catalog.job_class("embed_batch").limits.max_batch or 256
    units: list[tuple[Unit, list[str]]] = [(c, c.texts) for c in checks]
    for job, queued_s in jobs:
        try:
            texts = texts_of(p, job)
        except InputError as error:
            attempts.fail(p, job, job.attempt, error)
            continue
        units.append(((job, queued_s), texts))
    groups, current, size = [], [], 0
    for unit, texts in units:
        if current and size + len(texts) > limit:
            groups.append(current)
            current, size = [], 0
        current.append((unit, texts))
        size += len(texts)
    return groups + ([current] if current else [])


def _run_embeds(p: Ports, group: list[tuple[Unit, list[str]]]) -> list[str]:
    """One model call for a group's executions and checks; returns the checks' message ids
    that failed."""
    texts = [t for _, unit_texts in group for t in unit_texts]
    jobs, checks, offset = [], [], 0
    for unit, unit_texts in group:
        share = (offset, len(unit_texts))
        (checks if isinstance(unit, EmbedCheck) else jobs).append((unit, *share))
        offset += len(unit_texts)
    call = {"model_call": uuid.uuid4().hex[:16], "batch_texts": len(texts),
            "batch_jobs": len(jobs), "batch_checks": len(checks),
            "batch_check_rows": sum(n for _, _, n in checks)}
    if modal_enabled() and jobs:
        spawned = remote("embed_batch").embed.spawn(texts)
        for (job, queued_s), start, count in jobs:
            _spawned(p, job, spawned.object_id, queued_s, offset=start, count=count,
                     batch_texts=len(texts), batch_jobs=len(jobs))
        return []
    trusted = (remote("embed_batch").embed.remote if modal_enabled()
               else model("embed_batch").embed.local)
    started = time.perf_counter()
    try:
        out = trusted(texts)
    except Exception as error:  # the model failed this batch: each job loses one attempt,
        for (job, _), _, _ in jobs:                     # each check is delivered again
            attempts.fail(p, job, job.attempt, error)
        logger.warning("model call failed", extra={"error": repr(error), **call})
        return [c.message_id for c, _, _ in checks if c.message_id]
    model_s = time.perf_counter() - started
    call.update(batch_model_s=round(model_s, 4), batch_encode_s=out.get("encode_s"),
                batch_encode_cpu_s=out.get("encode_cpu_s"))
    logger.info("model call", extra=call)
    vectors = inference_checks.load_vectors(out["npy"])
    failed = []
    for pending, start, count in checks:
        try:
            _judge_embeddings(p, pending, vectors[start:start + count], call)
        except Exception:
            logger.exception("check failed", extra={"job_id": pending.job.job_id})
            if pending.message_id:
                failed.append(pending.message_id)
    for (job, queued_s), start, count in jobs:
        _guarded(p, job, lambda j=job, q=queued_s, a=start, n=count: _finish_embed(
            p, j, out, q, a, n, model_s * n / len(texts), **call))
    return failed


def _finish_embed(p: Ports, job: Job, out: dict, queued_s: float, start: int, count: int,
                  model_s: float, **extra) -> None:
    """This job's rows of a shared model call, as its own .npy."""

    buffer = io.BytesIO()
    np.save(buffer, inference_checks.load_vectors(out["npy"])[start:start + count],
            allow_pickle=False)
    metrics = _metrics(p, job, queued_s, out, model_s, **extra)
    _submit(p, job, buffer.getvalue(),
            metrics | {"model": out["model"], "count": count, "dim": out["dim"]})


def _run_generate(p: Ports, job: Job, queued_s: float) -> None:
    job_class = p.catalog.job_class(job.kind)
    args = (job.manifest.prompt, job.manifest.max_tokens or 64, job.manifest.seed or 0)
    if modal_enabled():
        call = remote(job.kind, job_class.model).generate.spawn(*args)
        _spawned(p, job, call.object_id, queued_s)
        return
    started = time.perf_counter()
    out = model(job.kind, job_class.model).generate.local(*args)
    _finish_generate(p, job, out, queued_s, time.perf_counter() - started)


def _finish_generate(p: Ports, job: Job, out: dict, queued_s: float, model_s: float) -> None:
    body = json.dumps({k: out[k] for k in ("text", "tokens", "token_ids", "model", "seed",
                                           "greedy")}, ensure_ascii=False).encode("utf-8")
    metrics = _metrics(p, job, queued_s, out, model_s)
    _submit(p, job, body, metrics | {"model": out["model"], "tokens": out["tokens"],
                                     "prompt_sha256": _sha(job.manifest.prompt)})


# -- spawned calls (Modal) ----------------------------------------------------------------------
SPAWNED = "inference.spawned"


def _spawned(p: Ports, job: Job, call_id: str, queued_s: float, **share) -> None:
    """Keep the call id on the timeline; `collect` finishes the attempt when it is done."""

    def note(j: Job):
        if j.state != State.RUNNING or j.attempt != job.attempt:
            return None
        noted, event = states.note(j, SPAWNED, at=p.clock(), data={
            "attempt": j.attempt, "call_id": call_id, "queue_s": queued_s, **share})
        return noted, [event], []
    apply(p, job, note)


def collect(p: Ports) -> int:
    """Finish every running inference attempt whose spawned call is done; returns how many.
    A scheduled entry point, so no Lambda waits on a GPU."""
    import modal
    finished = 0
    for job in p.store.list(State.RUNNING, limit=500):
        if p.catalog.job_class(job.kind).runtime != "modal":
            continue
        spawned = [e for e in p.store.view(job.job_id).events
                   if e.type == SPAWNED and e.data["attempt"] == job.attempt]
        if not spawned:
            continue
        data = spawned[-1].data
        try:
            out = modal.FunctionCall.from_id(data["call_id"]).get(timeout=0)
        except TimeoutError:
            continue                                    # still running on Modal
        except Exception as error:  # the call failed or expired: this attempt is lost
            attempts.fail(p, job, job.attempt, _as_input_fault(error))
            continue
        model_s = out.get("elapsed_s", 0.0)
        if job.kind == "embed_batch":
            _guarded(p, job, lambda: _finish_embed(
                p, job, out, data["queue_s"], data["offset"], data["count"],
                model_s * data["count"] / max(1, data["batch_texts"]),
                batch_texts=data["batch_texts"], batch_jobs=data["batch_jobs"]))
        else:
            _guarded(p, job, lambda: _finish_generate(p, job, out, data["queue_s"], model_s))
        finished += 1
    return finished


def _metrics(p: Ports, job: Job, queued_s: float, out: dict, model_s: float, **extra) -> dict:
    rate = p.catalog.job_class(job.kind).price_per_second or Decimal(0)
    return {"queue_s": queued_s, "cold_start_s": out.get("cold_start_s"),
            "warm": out.get("cold_start_s") is None, "ttfb_s": out.get("ttfb_s"),
            "model_s": round(model_s, 4), "cost_usd": str((rate * Decimal(str(model_s)))
                                                          .quantize(Decimal("0.000001"))),
            "worker": WORKER, "runtime": "modal.local" if not modal_enabled() else "modal",
            **extra}


def _submit(p: Ports, job: Job, body: bytes, execution: dict) -> None:
    name = p.catalog.job_class(job.kind).output
    target = S3Uri(p.settings.artifacts_bucket, attempt_key(job.job_id, job.attempt, name))
    p.blobs.put(target, body)
    output = Output(name=name, uri=str(target), sha256=media.sha256_bytes(body),
                    size_bytes=len(body))
    attempts.submit(p, job, AttemptResult(
        job_id=job.job_id, attempt=job.attempt, worker=WORKER, output=output,
        duration_ms=int(execution["model_s"] * 1000), execution=execution,
        signature=pool_signature(job, output)))


def _guarded(p: Ports, job: Job, work) -> None:
    try:
        work()
    except Exception as error:  # this job's attempt fails; the job decides whether to retry
        logger.warning("inference attempt failed", extra={"job_id": job.job_id,
                                                          "error": repr(error)})
        attempts.fail(p, job, job.attempt, _as_input_fault(error))


def _as_input_fault(error: Exception) -> Exception:
    """A prompt the model cannot take fails its job at once (InputError), not three times."""
    if isinstance(error, inference.PromptTooLong):
        return InputError(str(error), reason=error.reason)
    return error


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- checking results -------------------------------------------------------------------------
def check(p: Ports, body: dict) -> None:
    """Re-execute (a sample of) the work on this trusted pool and judge the claimed output
    against it; the verdict, with every measured value, goes to `attempts.verify`. (A
    delivered batch shares its embedding checks' model calls with its executions: `handle`.)"""
    pending = prepare_check(p, body)
    if pending is not None:
        pending.message_id = "check"
        if run_batch(p, [], [pending]):
            raise RuntimeError(f"the check of {pending.job.job_id} could not be finished")


def prepare_check(p: Ports, body: dict) -> EmbedCheck | None:
    """Judge a result whose check needs no embedding model call (an unreadable output, or a
    generation, re-executed whole here) and return None; an embedding result is returned
    with its audited rows, waiting for their re-execution in the next model call."""
    job = Job.model_validate(body["job"])
    result = AttemptResult.model_validate(body["result"])
    job_class = p.catalog.job_class(job.kind)
    try:
        data = p.blobs.read(S3Uri.parse(result.output.uri), 64 << 20)
    except InputError:
        data = None
    if data is None:
        verdict = Verdict(job_class.verification.policy, {"output_readable": False})
    elif job.kind == "embed_batch":
        texts = dispatched_texts(p, job)     # what the worker was given (redacted or not)
        rows = audited_rows(p, job, result, len(texts))
        return EmbedCheck(job=job, result=result, data=data, rows=rows,
                          texts=[texts[i] for i in rows], expected_count=len(texts))
    else:
        trusted = (remote(job.kind, job_class.model).generate.remote if modal_enabled()
                   else model(job.kind, job_class.model).generate.local)
        reference = trusted(dispatched_prompt(p, job), job.manifest.max_tokens or 64,
                            job.manifest.seed or 0)
        verdict = inference_checks.generation(
            data=data, reported_sha256=result.output.sha256,
            actual_sha256=media.sha256_bytes(data), max_tokens=job.manifest.max_tokens or 64,
            model=reference["model"], reference=reference)
    attempts.verify(p, job, result, verdict=verdict)
    return None


def audited_rows(p: Ports, job: Job, result: AttemptResult, population: int) -> list[int]:
    """Which rows of an embedding result are re-executed: all of them for a challenge or a
    redundant job, else as many as the worker's trust asks for, drawn from the audit secret
    and the output the worker committed to (so not before it committed)."""
    job_class = p.catalog.job_class(job.kind)
    full = job.challenge or (job.manifest.redundancy
                             or job_class.verification.redundancy) >= 2
    history = workers.history(p.workers, result.worker, job.kind)
    audited = population if full else audit.items_to_audit(
        population, trusted=is_pool(result.worker), verified_jobs=history.completions,
        verified_items=history.verified_units,
        sample_rate=job_class.verification.sample_rate,
        floor=job_class.verification.audit_floor)
    return audit.draw(audit.audit_key(p.audit_secret or "", subject=_subject(result),
                                      committed=[result.output.sha256]),
                      "rows", population, audited)


def _judge_embeddings(p: Ports, pending: EmbedCheck, reference: np.ndarray,
                      call: dict) -> None:
    """The verdict on an embedding result, from its audited rows' re-execution."""
    job_class = p.catalog.job_class(pending.job.kind)
    result, data = pending.result, pending.data
    verdict = inference_checks.embeddings(
        data=data, reported_sha256=result.output.sha256,
        actual_sha256=media.sha256_bytes(data), expected_count=pending.expected_count,
        rows=pending.rows, reference=reference,
        cosine_min=job_class.verification.cosine_min or 0.999)
    verdict = Verdict(verdict.policy, verdict.checks,
                      {**verdict.measured, "reexecution": call})
    attempts.verify(p, pending.job, result, verdict=verdict, verified=data)


def _subject(result: AttemptResult) -> str:
    return f"{result.job_id}#{result.attempt}"


# -- the Lambda entry point -------------------------------------------------------------------
def handle(p: Ports, records: list) -> list[str]:
    """Work one delivered batch; returns the message ids to report as failed."""
    p = _gathering(p)
    try:
        return _handle(p, records)
    finally:
        _flush(p)


def _handle(p: Ports, records: list) -> list[str]:
    runs, checks, failures = [], [], []
    for record in records:
        body = json.loads(record["body"])
        receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        if body.get("type") == "check":
            try:
                pending = prepare_check(p, body)
            except Exception:
                logger.exception("check failed", extra={"job_id": body["job"]["job_id"]})
                failures.append(record["messageId"])
                continue
            if pending is not None:
                checks.append(dataclasses.replace(pending, message_id=record["messageId"]))
        else:
            runs.append((body, receives))
    if runs or checks:
        failures += run_batch(p, runs, checks)
    return failures


@lambda_handler
def handler(event, context):
    if event.get("source") == "aws.events":             # the collection schedule
        return {"collected": collect(ports.default())}
    failures = handle(ports.default(), event.get("Records", []))
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}


__all__ = ["handler", "handle", "check", "prepare_check", "audited_rows", "collect",
           "run_batch"]
