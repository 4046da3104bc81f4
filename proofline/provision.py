"""Create every table, queue (with its dead-letter queue) and bucket of RESOURCES on an AWS
endpoint, and wire the intake bucket's notifications. Idempotent: existing resources stay."""
from __future__ import annotations

import json

from botocore.exceptions import ClientError

from chalicelib.aws.resources import RESOURCES, Bucket, Queue, Resources, Table
from chalicelib.config import Settings


def provision(session, settings: Settings, *, resources: Resources = RESOURCES,
              visibility_cap: int | None = None) -> dict[str, str]:
    """Returns queue setting → queue URL. `visibility_cap` shortens visibility timeouts so
    local retries happen in seconds rather than the minutes a deployed Lambda needs."""
    kw = {"endpoint_url": settings.aws_endpoint_url, "region_name": settings.region}
    dynamodb, sqs, s3 = (session.client(n, **kw) for n in ("dynamodb", "sqs", "s3"))
    for table in resources.tables:
        _table(dynamodb, resources.name(settings, table), table)
    urls = {q.setting: _queue(sqs, resources.name(settings, q), q, visibility_cap)
            for q in resources.queues}
    for bucket in resources.buckets:
        _bucket(s3, sqs, resources.name(settings, bucket), bucket, urls)
    return urls


def _table(dynamodb, name: str, table: Table) -> None:
    keys = [(table.hash_key, "HASH")] + ([(table.range_key, "RANGE")] if table.range_key else [])
    attributes = {k for k, _ in keys} | {a for i in table.indexes for a in (i.hash_key, i.range_key)}
    try:
        dynamodb.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
            **({"GlobalSecondaryIndexes": [{
                "IndexName": i.name, "Projection": {"ProjectionType": "ALL"},
                "KeySchema": [{"AttributeName": i.hash_key, "KeyType": "HASH"},
                              {"AttributeName": i.range_key, "KeyType": "RANGE"}]}
                for i in table.indexes]} if table.indexes else {}))
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
        return
    dynamodb.get_waiter("table_exists").wait(TableName=name)
    if table.ttl_attribute:
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": table.ttl_attribute})


def _queue(sqs, name: str, queue: Queue, visibility_cap: int | None) -> str:
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq",
                               Attributes={"MessageRetentionPeriod": str(14 * 86400)})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    visibility = min(queue.visibility_timeout, visibility_cap or queue.visibility_timeout)
    return sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(queue.max_receive_count)})})["QueueUrl"]


def _bucket(s3, sqs, name: str, bucket: Bucket, urls: dict[str, str]) -> None:
    try:
        s3.create_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    if bucket.cors:
        s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": [{
            "AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["*"], "AllowedHeaders": ["*"]}]})
    if bucket.notify_queue:
        arn = sqs.get_queue_attributes(QueueUrl=urls[bucket.notify_queue],
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
