"""The local AWS endpoint's TransactWriteItems as its table fills: the median time of a
job-shaped four-item transaction (the job put conditional on its absence, three event puts)
on the jobs table (its four GSIs included), empty and then holding 1,000 items. On stock
moto the second figure is many times the first (it deep-copies the table for every item of
a transaction, for its rollback); the local endpoint rolls back only the items a
transaction touches, so the ratio stays near 1."""
from __future__ import annotations

import logging
import os
import random
import statistics
import time
import uuid

import boto3

from chalicelib.aws.resources import RESOURCES
from proofline.awsendpoint import AwsEndpoint
from proofline.devstack import HOST, free_port

FILLED = 1000
SAMPLES = 30
TABLE = "bench-local-jobs"
RANGE_BYTES = 64 << 10
OBJECT_SIZES = {"1mib": 1 << 20, "256mib": 256 << 20}


def run() -> dict[str, float]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one line per request
    endpoint = AwsEndpoint(ip_address=HOST, port=free_port(), verbose=False)
    endpoint.start()
    try:
        db = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client(
            "dynamodb", endpoint_url=f"http://{HOST}:{endpoint._port}")
        create_jobs_table(db, TABLE)
        _transaction(db)                                  # the first request's set-up
        empty = _median_ms(db)
        fill(db, TABLE, FILLED)
        filled = _median_ms(db)
        db.delete_table(TableName=TABLE)
        ranged = _ranged_reads(boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1").client("s3", endpoint_url=f"http://{HOST}:{endpoint._port}"))
    finally:
        endpoint.stop()
    return {"local_transact_ms_empty": round(empty, 2),
            "local_transact_ms_1000_items": round(filled, 2),
            "local_transact_1000_items_over_empty": round(filled / empty, 2), **ranged}


def _ranged_reads(s3) -> dict[str, float]:
    s3.create_bucket(Bucket="bench-ranges")
    figures, rng = {}, random.Random(0)
    for name, size in OBJECT_SIZES.items():
        s3.put_object(Bucket="bench-ranges", Key=name, Body=os.urandom(size))
        for path, extra in (("", {}), ("_moto", {"ResponseCacheControl": "no-cache"})):
            samples = []
            for _ in range(SAMPLES if size < (64 << 20) or not path else 5):
                first = rng.randrange(0, size - RANGE_BYTES)
                started = time.perf_counter()
                s3.get_object(Bucket="bench-ranges", Key=name, **extra,
                              Range=f"bytes={first}-{first + RANGE_BYTES - 1}")["Body"].read()
                samples.append((time.perf_counter() - started) * 1000)
            figures[f"local_ranged_read_ms_{name}{path}"] = round(statistics.median(samples), 2)
        s3.delete_object(Bucket="bench-ranges", Key=name)
    return figures


def create_jobs_table(db, name: str) -> None:
    """A table shaped as the jobs table (`chalicelib/aws/resources.py`), GSIs included."""
    table = next(t for t in RESOURCES.tables if t.setting == "jobs_table")
    attributes = {table.hash_key, table.range_key} | {
        a for i in table.indexes for a in (i.hash_key, i.range_key)}
    db.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": table.hash_key, "KeyType": "HASH"},
                   {"AttributeName": table.range_key, "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                              for a in sorted(attributes)],
        GlobalSecondaryIndexes=[{
            "IndexName": i.name, "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": i.hash_key, "KeyType": "HASH"},
                          {"AttributeName": i.range_key, "KeyType": "RANGE"}]}
            for i in table.indexes])


def job_item(n: int) -> dict:
    """The n-th stored job: its record carries what the by_state and by_client GSIs index."""
    return {"pk": {"S": f"JOB#{n:06d}"}, "sk": {"S": "JOB"},
            "state": {"S": ("queued", "running", "settled")[n % 3]},
            "created_at": {"S": f"2025-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}.000000Z"},
            "client": {"S": f"did:client:{n % 7}"}, "version": {"N": "1"},
            "doc": {"S": "x" * 300}}


def fill(db, table: str, count: int) -> None:
    """`count` job items, 25 to a BatchWriteItem."""
    for start in range(0, count, 25):
        db.batch_write_item(RequestItems={table: [
            {"PutRequest": {"Item": job_item(n)}} for n in range(start, min(count, start + 25))]})


def _transaction(db) -> None:
    pk = {"S": f"JOB#bench-{uuid.uuid4().hex}"}
    job = {"Put": {"TableName": TABLE, "ConditionExpression": "attribute_not_exists(pk)",
                   "Item": {"pk": pk, "sk": {"S": "JOB"}, "state": {"S": "queued"},
                            "created_at": {"S": "2025-01-02T00:00:00.000000Z"},
                            "version": {"N": "1"}, "doc": {"S": "x" * 300}}}}
    events = [{"Put": {"TableName": TABLE, "ConditionExpression": "attribute_not_exists(sk)",
                       "Item": {"pk": pk, "sk": {"S": f"EVT#{k:08d}"}, "doc": {"S": "x" * 300}}}}
              for k in range(3)]
    db.transact_write_items(TransactItems=[job, *events])


def _median_ms(db) -> float:
    samples = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        _transaction(db)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


if __name__ == "__main__":
    print(run())
