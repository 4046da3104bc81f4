"""200 media_probe jobs through the local stack: AWS requests per job, throughput, and
submit→settled latency against the cost of one raw put_item on the same moto server.

Requests are counted by the botocore hook in chalicelib.aws, in the stack's process and in
the media worker processes; the benchmark watches progress with a client of its own, so its
polling is not counted.
"""
from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from bench import operator_api
from chalicelib import aws
from proofline import clips
from proofline.client import Api
from proofline.devstack import DevStack

from . import local_stack

JOBS = 200
LATENCY_SAMPLES = 30
SUBMITTERS = 8


def run() -> dict[str, float]:
    with local_stack(visibility_cap=30, schedule_every_s=3600, pool_workers=2) as (stack, tmp):
        return _measure(stack, tmp)


def _measure(stack: DevStack, tmp: Path) -> dict[str, float]:
    api = operator_api(stack)
    own = boto3.session.Session().client("dynamodb", endpoint_url=stack.info.aws_endpoint,
                                         region_name=stack.info.region)
    table = stack.info.environment()["JOBS_TABLE"]
    source = api.upload(clips.make_clip(tmp / "tiny.mp4", seconds=0.2, width=32, height=32))
    manifest = {"kind": "media_probe", "input_uri": source["input_uri"],
                "input_hash": source["input_hash"], "max_attempts": 1}
    _settle(api, own, table, [manifest])                   # warm the worker processes
    # Latency first, on a near-empty table: moto deep-copies a table for every item of a
    # TransactWriteItems (its rollback), so its cost grows with the data already stored.
    latencies = [_one_job_ms(api, own, table, manifest) for _ in range(LATENCY_SAMPLES)]
    raw = _raw_put_item_ms(own)
    txn_before = _transaction_ms(own, table)

    before = _calls(stack)
    started = time.perf_counter()
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        ids = list(pool.map(lambda _: api.submit(manifest)[0]["job_id"], range(JOBS)))
    _wait_settled(own, table, ids)
    elapsed = time.perf_counter() - started
    calls = _calls(stack) - before
    txn_after = _transaction_ms(own, table)
    p50 = statistics.median(latencies)
    by_service = Counter()
    for name, count in calls.items():
        by_service[name.split(".")[0]] += count
    print("AWS calls per job by operation:",
          {k: round(v / JOBS, 2) for k, v in sorted(calls.items())})
    return {
        "dynamodb_requests_per_job": round(by_service["dynamodb"] / JOBS, 2),
        "sqs_requests_per_job": round(by_service["sqs"] / JOBS, 2),
        "s3_requests_per_job": round(by_service["s3"] / JOBS, 2),
        "jobs_per_second": round(JOBS / elapsed, 2),
        "submit_to_done_p50_ms": round(p50, 1),
        "raw_put_item_p50_ms": round(raw, 3),
        "latency_in_put_round_trips": round(p50 / raw, 1),
        "moto_transaction_ms_before_run": round(txn_before, 2),
        "moto_transaction_ms_after_run": round(txn_after, 2),
    }


def _calls(stack: DevStack) -> Counter:
    return Counter(aws.calls) + Counter(stack.pump.remote_calls)


def _settle(api: Api, own, table: str, manifests: list[dict]) -> None:
    _wait_settled(own, table, [api.submit(m)[0]["job_id"] for m in manifests])


def _wait_settled(own, table: str, ids: list[str], timeout: float = 600) -> None:
    pending, deadline = set(ids), time.monotonic() + timeout
    while pending:
        for job_id in list(pending):
            state = _state(own, table, job_id)
            if state == "settled":
                pending.discard(job_id)
            elif state in ("failed", "rejected", "cancelled"):
                raise RuntimeError(f"benchmark job {job_id} ended {state}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not settled after {timeout}s")
        time.sleep(0.05)


def _one_job_ms(api: Api, own, table: str, manifest: dict) -> float:
    started = time.perf_counter()
    job_id = api.submit(manifest, idempotency_key=str(uuid.uuid4()))[0]["job_id"]
    while _state(own, table, job_id) != "settled":
        time.sleep(0.01)
    return (time.perf_counter() - started) * 1000


def _state(own, table: str, job_id: str) -> str:
    item = own.get_item(TableName=table, Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
                        ProjectionExpression="#s", ExpressionAttributeNames={"#s": "state"},
                        ConsistentRead=True).get("Item")
    return item["state"]["S"] if item else "missing"


def _transaction_ms(own, table: str, n: int = 20) -> float:
    """A job-shaped TransactWriteItems (four puts) on the jobs table: on moto its cost grows
    with the table, which is what bounds jobs_per_second here, not the control plane."""
    samples = []
    for i in range(n):
        pk = {"S": f"BENCH#{uuid.uuid4().hex}"}
        items = [{"Put": {"TableName": table, "Item": {"pk": pk, "sk": {"S": f"EVT#{k}"},
                                                       "doc": {"S": "x" * 300}}}}
                 for k in range(4)]
        started = time.perf_counter()
        own.transact_write_items(TransactItems=items)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _raw_put_item_ms(own, n: int = 200) -> float:
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    own.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    samples = []
    for i in range(n):
        started = time.perf_counter()
        own.put_item(TableName=name, Item={"pk": {"S": f"k{i}"}, "v": {"S": "x" * 200}})
        samples.append((time.perf_counter() - started) * 1000)
    own.delete_table(TableName=name)
    return statistics.median(samples)
