"""FFmpeg/PyAV media worker: the container Lambda behind the media queue.

It executes and reports; the control plane verifies and decides. Every output goes to an
attempt-scoped key, so a retry or a duplicate never touches another attempt's files.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib import ports
from chalicelib.aws.blobs import S3Uri, attempt_key
from chalicelib.context import Ports
from chalicelib.jobs import attempts
from chalicelib.media import probe as media
from chalicelib.media import tasks
from chalicelib.models import AttemptResult, Job, Output, State, TaskState
from chalicelib.settlement.chain import pool_signature
from chalicelib.telemetry import lambda_handler, logger
from media_worker.probe import probe

from . import planning, transcode
from .inputs import fetch_input

WORKER = "pool:media"
MAX_TASKS_PER_MESSAGE = 16      # a ladder's renditions of one segment


def probe_input(p: Ports, job: Job, workdir: Path) -> AttemptResult:
    started = time.monotonic()
    job_class = p.catalog.job_class(job.kind)
    local = workdir / "input"
    digest = fetch_input(p, job, local)
    report = probe(local).model_dump_json(indent=2).encode()
    name = job_class.output
    target = S3Uri(p.settings.artifacts_bucket, attempt_key(job.job_id, job.attempt, name))
    p.blobs.put(target, report, content_type="application/json")
    output = Output(name=name, uri=str(target), sha256=media.sha256_bytes(report),
                    size_bytes=len(report))
    return AttemptResult(
        job_id=job.job_id, attempt=job.attempt, worker=WORKER, output=output,
        duration_ms=int((time.monotonic() - started) * 1000),
        execution={"runtime": "pyav", "input_hash": digest},
        signature=pool_signature(job, output))


def plan_transcode(p: Ports, job: Job, workdir: Path) -> None:
    """A transcode's attempt ends in a plan of segment tasks, not in an output: the job
    stays running while its tasks run, and the assembly closes it."""
    planning.plan_job(p, job, workdir, WORKER)


# A runner returns the attempt's result, or None when the job goes on as tasks.
RUNNERS: dict[str, Callable[[Ports, Job, Path], AttemptResult | None]] = {
    "media_probe": probe_input, "ffmpeg_hls": plan_transcode}


def run(p: Ports, record: SQSRecord) -> None:
    message = json.loads(record.body)
    job = Job.model_validate(message["job"])
    logger.set_correlation_id(job.correlation_id)
    logger.append_keys(job_id=job.job_id, attempt=message["attempt"])
    redelivered = int(record.attributes.approximate_receive_count) > 1
    running = attempts.start(p, job, message["attempt"], WORKER, redelivered=redelivered)
    if running is None:
        logger.info("stale or duplicate delivery; nothing to do")
        return
    try:
        with tempfile.TemporaryDirectory(prefix="proofline-") as workdir:
            result = RUNNERS[running.kind](p, running, Path(workdir))
    except Exception as error:  # the attempt fails; the job decides whether to retry
        logger.warning("attempt failed", extra={"error": repr(error)})
        attempts.fail(p, running, running.attempt, error)
        return
    if result is not None:
        attempts.submit(p, running, result)


def run_segment_message(p: Ports, record: SQSRecord) -> None:
    """Split jobs' work: the segments queue carries encodes (the renditions of one segment
    together), the checks queue each submitted task's verification and the assembly once
    every task passed, so no check waits behind encodes."""
    message = json.loads(record.body)
    logger.set_correlation_id(message["job_id"])
    logger.append_keys(job_id=message["job_id"], task=message.get("task_id"),
                       work=message["type"])
    with tempfile.TemporaryDirectory(prefix="proofline-") as workdir:
        SEGMENT_WORK[message["type"]](p, message, Path(workdir),
                                      int(record.attributes.approximate_receive_count) > 1)


def _encode(p: Ports, message: dict, workdir: Path, redelivered: bool) -> None:
    """Start every task the message names that is still this attempt's to run, encode them
    in one FFmpeg run, and submit each with its own outputs (a failure fails each, and each
    is retried alone)."""
    named = message.get("tasks") or [{"task_id": message["task_id"],
                                      "attempt": message["attempt"]}]
    started = [s for t in named[:MAX_TASKS_PER_MESSAGE]
               if (s := tasks.start(p, message["job_id"], t["task_id"], t["attempt"], WORKER,
                                    redelivered=redelivered)) is not None]
    if not started:
        logger.info("stale or duplicate task delivery; nothing to do")
        return
    job, running = started[0][0], [task for _, task in started]
    try:
        made = transcode.encode_tasks(p, job, running, workdir)
        outputs = {t.task_id: transcode.upload_outputs(p, t, made[t.task_id][0], workdir / "out")
                   for t in running}
    except Exception as error:  # these attempts fail; each task decides whether to retry
        logger.warning("tasks failed", extra={"error": repr(error),
                                              "tasks": [t.task_id for t in running]})
        for task in running:
            tasks.fail(p, task, getattr(error, "reason", "worker_error"), str(error))
        return
    for task in running:
        tasks.submit(p, task, outputs[task.task_id], made[task.task_id][1])


def _check(p: Ports, message: dict, workdir: Path, redelivered: bool) -> None:
    task = p.tasks.get(message["job_id"], message["task_id"])
    if task.attempt != message["attempt"] or task.state != TaskState.SUBMITTED:
        return
    job = p.store.get(task.job_id)
    verdict, promoted = transcode.check_task(p, job, task, workdir)
    tasks.judged(p, task, verdict, promoted,
                 after_pass=lambda passed: transcode.place_in_package(p, job, passed))


def _assemble(p: Ports, message: dict, workdir: Path, redelivered: bool) -> None:
    job = p.store.get(message["job_id"])
    if job.state != State.RUNNING or job.attempt != message["attempt"] or job.plan is None:
        return
    transcode.assemble(p, job, workdir, pool_signature)


# "task" names one task: what a message sent before tasks were grouped carries.
SEGMENT_WORK = {"tasks": _encode, "task": _encode, "check": _check, "assemble": _assemble}


@lambda_handler
def handler(event, context):
    return process_partial_response(event=event, record_handler=lambda record: run(ports.default(), record),
                                    processor=BatchProcessor(event_type=EventType.SQS),
                                    context=context)


@lambda_handler
def segments_handler(event, context):
    return process_partial_response(event=event,
                                    record_handler=lambda record: run_segment_message(
                                        ports.default(), record),
                                    processor=BatchProcessor(event_type=EventType.SQS),
                                    context=context)
