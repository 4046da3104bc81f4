"""The local event pump: what Lambda's SQS event source mappings and EventBridge schedules do
in AWS, done against moto over HTTP.

It long-polls each queue, hands the batch to the queue's consumer with the exact event shape
Lambda delivers, deletes the records the consumer did not report in `batchItemFailures`
(a raised error fails the whole batch), and leaves the rest to reappear after the queue's
visibility timeout and, past `maxReceiveCount`, to move to the dead-letter queue. Queues of
the execution plane run in a pool of processes, standing in for concurrent container Lambdas.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import aws
from chalicelib.aws.resources import RESOURCES, Queue, Resources
from chalicelib.config import Settings
from chalicelib.telemetry import metrics

from .calls import acting_as, function_of, install_from_environment

logger = Logger(service="proofline-pump")


@dataclass
class LambdaContext:
    """The attributes Lambda's runtime gives a handler (Powertools reads several)."""
    function_name: str
    timeout_s: float
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"

    def __post_init__(self):
        self.aws_request_id = str(uuid.uuid4())
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def sqs_event(messages: list[dict], queue_arn: str, region: str) -> dict:
    """SQS ReceiveMessage output → the event a Lambda SQS trigger receives."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m.get("Attributes", {}),
        "messageAttributes": {k: {"stringValue": v.get("StringValue"), "dataType": v["DataType"],
                                  "stringListValues": [], "binaryListValues": []}
                              for k, v in m.get("MessageAttributes", {}).items()},
        "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
        "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": region,
    } for m in messages]}


def scheduled_event(rule: str, region: str) -> dict:
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "region": region,
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resources": [f"arn:aws:events:{region}:123456789012:rule/{rule}"], "detail": {}}


def load(consumer: str):
    module, _, name = consumer.partition(":")
    return getattr(importlib.import_module(module), name)


def share_cpus(workers: int) -> None:
    """Give each worker process its share of the host's cores, as each container Lambda has
    its own vCPUs: math libraries (torch, BLAS) otherwise start a thread per core in every
    process, and the processes spin against each other."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, threads)


def start_worker(workers: int) -> None:
    """A worker process starts as a container Lambda's would: its share of the cores, and
    its AWS calls recorded when the stack records them (the variable is inherited)."""
    share_cpus(workers)
    install_from_environment()
    metrics_to_file()


# Locally the functions' metrics (EMF documents) go to the stack's file, named here so that
# worker processes inherit it, rather than into its log.
METRICS_FILE = "PROOFLINE_METRICS_FILE"


def metrics_to_file() -> None:
    metrics.write_to(os.environ.get(METRICS_FILE) or None)


def invoke(consumer: str, event: dict, timeout_s: float) -> tuple[Any, dict[str, int]]:
    """Run one handler invocation; also returns the AWS calls it made (for the benchmark)."""
    before = Counter(aws.calls)
    try:
        with acting_as(function_of(consumer)):
            response = load(consumer)(event, LambdaContext(consumer.replace(":", "-"),
                                                           timeout_s))
    except Exception:   # tracebacks don't pickle back to the pump; their text does
        raise HandlerError(f"{consumer} raised:\n{traceback.format_exc()}") from None
    return response, dict(aws.calls - before)


class HandlerError(RuntimeError):
    """A handler in a worker process raised (as a Lambda invocation error would)."""


def failed_ids(response: Any) -> set[str]:
    if isinstance(response, dict):
        return {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
    return set()


class EventPump:
    def __init__(self, settings: Settings, *, resources: Resources = RESOURCES,
                 pool_workers: int = 2, wait_s: int = 1, schedule_every_s: float = 10.0,
                 schedules: dict[str, tuple[str, float]] | None = None,
                 handler_timeout_s: float = 300):
        """`schedules` maps a name to (consumer, period in minutes); locally each minute of
        a period lasts `schedule_every_s` seconds, so schedules keep their proportions."""
        self._settings = settings
        self._resources = resources
        self._pool_workers = pool_workers
        self._wait_s = wait_s
        self._schedule_every_s = schedule_every_s
        self._schedules = schedules or {}
        self._timeout_s = handler_timeout_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.remote_calls: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._sqs = aws.client("sqs")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "EventPump":
        for queue in self._resources.queues:
            pollers = self._pool_workers if queue.process_pool else 1
            for n in range(pollers):
                self._spawn(f"pump-{queue.setting}-{n}", self._poll, queue)
        for name, (consumer, minutes) in self._schedules.items():
            self._spawn(f"schedule-{name}", self._tick, name, consumer,
                        minutes * self._schedule_every_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._wait_s + 30)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- queues -----------------------------------------------------------------------------
    def _poll(self, queue: Queue) -> None:
        name = self._resources.name(self._settings, queue)
        url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
        # From here on, what Lambda's event source mapping does with the consumer's role.
        with acting_as(function_of(queue.consumer)):
            self._poll_as_mapping(queue, name, url)

    def _poll_as_mapping(self, queue: Queue, name: str, url: str) -> None:
        arn = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        while not self._stop.is_set():
            try:
                messages = self._receive(url, queue)
                if messages:
                    self._deliver(queue, url, sqs_event(messages, arn, self._settings.region))
            except Exception:  # the pump must outlive any one bad poll, as Lambda's does
                logger.exception("poll failed", extra={"queue": name})
                self._stop.wait(1)

    def _receive(self, url: str, queue: Queue) -> list[dict]:
        """One batch as Lambda's event source mapping gathers it: up to `batch_size`
        records, waiting up to the queue's batching window once the first arrives (SQS
        hands out at most ten per call)."""
        def take(wait_s: float) -> list[dict]:
            return self._sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=min(10, queue.batch_size - len(messages)),
                WaitTimeSeconds=int(wait_s), AttributeNames=["All"],
                MessageAttributeNames=["All"]).get("Messages", [])
        messages: list[dict] = []
        messages += take(self._wait_s)
        closes = time.monotonic() + queue.batch_window_s
        while messages and len(messages) < queue.batch_size:
            left = closes - time.monotonic()
            if left <= 0:
                break
            more = take(min(1, left))
            if not more:
                self._stop.wait(min(0.2, left))
            messages += more
        return messages

    def _deliver(self, queue: Queue, url: str, event: dict) -> None:
        records = event["Records"]
        self.stats["invocations"] += 1
        try:
            response = self._invoke(queue, event)
            failed = failed_ids(response)
        except Exception:
            logger.exception("handler raised; the whole batch will be retried",
                             extra={"consumer": queue.consumer})
            failed = {r["messageId"] for r in records}
        done = [r for r in records if r["messageId"] not in failed]
        self.stats["records_ok"] += len(done)
        self.stats["records_failed"] += len(records) - len(done)
        if done:
            self._sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(done)])

    def _invoke(self, queue: Queue, event: dict) -> Any:
        if not queue.process_pool:      # already acting as the consumer (_poll)
            return load(queue.consumer)(event, LambdaContext(queue.consumer, self._timeout_s))
        future = self._executor().submit(invoke, queue.consumer, event, self._timeout_s)
        try:
            response, calls = future.result()
        except BrokenProcessPool:
            with self._pool_lock:     # a killed worker, like a crashed container: start anew
                self._pool = None
            raise
        self.remote_calls.update(calls)
        return response

    def worker_pids(self) -> list[int]:
        """The worker processes running now (a benchmark reads their CPU time)."""
        with self._pool_lock:
            return sorted(self._pool._processes) if self._pool else []

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self._pool_workers, mp_context=get_context("spawn"),
                                                 initializer=start_worker,
                                                 initargs=(self._pool_workers,))
            return self._pool

    # -- schedules --------------------------------------------------------------------------
    def _tick(self, name: str, consumer: str, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                with acting_as(function_of(consumer)):
                    load(consumer)(scheduled_event(name, self._settings.region),
                                   LambdaContext(name, self._timeout_s))
            except Exception:
                logger.exception("scheduled handler failed", extra={"schedule": name})
