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

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib import attempts, media, ports
from chalicelib.blobs import S3Uri, attempt_key
from chalicelib.errors import InputError
from chalicelib.models import AttemptResult, Job, Output
from chalicelib.ports import Ports

WORKER = "pool:media"
logger = Logger(service="proofline-media")


def probe_input(p: Ports, job: Job, workdir: Path) -> AttemptResult:
    started = time.monotonic()
    job_class = p.catalog.job_class(job.kind)
    local = workdir / "input"
    p.blobs.download(S3Uri.parse(job.input_uri), local, limit=job_class.max_input_bytes)
    digest = media.sha256_file(local)
    if job.manifest.input_hash and digest != job.manifest.input_hash:
        raise InputError(f"input hash is {digest}, the manifest says {job.manifest.input_hash}",
                         reason="input_hash_mismatch")
    report = media.probe(local).model_dump_json(indent=2).encode()
    name = job_class.output
    target = S3Uri(p.settings.artifacts_bucket, attempt_key(job.job_id, job.attempt, name))
    p.blobs.put(target, report, content_type="application/json")
    output = Output(name=name, uri=str(target), sha256=media.sha256_bytes(report),
                    size_bytes=len(report))
    return AttemptResult(
        job_id=job.job_id, attempt=job.attempt, worker=WORKER, output=output,
        duration_ms=int((time.monotonic() - started) * 1000),
        execution={"runtime": "pyav", "input_hash": digest}, signature=_sign(job, output))


def _sign(job: Job, output: Output) -> str | None:
    """Escrow jobs pay only a result the pool signed (EIP-712 over job key + result hash)."""
    if job.escrow is None:
        return None
    from eth_account import Account
    from chalicelib.chain import domain, job_key_bytes, result_hash, sign_result
    from chalicelib.config import secret
    signature = sign_result(Account.from_key(secret("PROOFLINE_POOL_KEY")),
                            domain(job.escrow.chain_id, job.escrow.contract),
                            job_key_bytes(job), result_hash([output.sha256]))
    return "0x" + signature.hex()


RUNNERS: dict[str, Callable[[Ports, Job, Path], AttemptResult]] = {"media_probe": probe_input}


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
    attempts.submit(p, running, result)


def handler(event, context):
    return process_partial_response(event=event, record_handler=lambda record: run(ports.default(), record),
                                    processor=BatchProcessor(event_type=EventType.SQS),
                                    context=context)
