"""The S3 door: a dropped object becomes exactly one job, whatever the delivery does."""
import json
import time
import uuid

import pytest
from conftest import INTAKE, drop, wait_for

from chalicelib.jobs.lifecycle import derive_job_id

pytestmark = pytest.mark.stack

def notification(key, etag, size, bucket=INTAKE):
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventName": "ObjectCreated:Put", "eventTime": "2026-11-23T12:00:00.000Z",
        "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key.replace(" ", "+"), "eTag": etag, "size": size}}}]})


def queue_url(aws, name="proofline-local-intake"):
    return aws.sqs.get_queue_url(QueueName=name)["QueueUrl"]


def test_a_drop_under_a_class_prefix_settles(api, aws, clip):
    job_id, _ = drop(aws, f"intake/media_probe/{uuid.uuid4().hex} clip.mp4", clip)
    job = wait_for(api, job_id)
    assert job["state"] == "settled", api.events(job_id)
    assert job["source"] == "s3"
    assert job["manifest"]["input_hash"].startswith("sha256:")


def test_the_same_notification_twice_and_a_re_put_make_one_job(api, aws, clip):
    key = f"intake/media_probe/{uuid.uuid4().hex}.mp4"
    job_id, etag = drop(aws, key, clip)
    settled = wait_for(api, job_id)
    aws.sqs.send_message(QueueUrl=queue_url(aws),
                         MessageBody=notification(key, etag, clip.stat().st_size))
    drop(aws, key, clip)                      # same bytes again: S3 notifies again
    time.sleep(3)
    again = api.job(job_id)
    assert again["version"] == settled["version"]          # nothing moved the job
    same = [j for j in api.jobs(limit=500) if (j["input_uri"] or "").endswith(key)]
    assert len(same) == 1


def test_a_sidecar_manifest_names_the_job(api, aws, clip):
    key = f"uploads/{uuid.uuid4().hex}.mp4"
    aws.s3.put_object(Bucket=INTAKE, Key=key + ".job.json",
                      Body=json.dumps({"kind": "media_probe", "max_attempts": 2}))
    job_id, _ = drop(aws, key, clip)
    job = wait_for(api, job_id)
    assert job["state"] == "settled" and job["max_attempts"] == 2


def test_a_bad_sidecar_is_a_rejected_job_with_a_reason(api, aws, clip):
    key = f"uploads/{uuid.uuid4().hex}.mp4"
    aws.s3.put_object(Bucket=INTAKE, Key=key + ".job.json",
                      Body=json.dumps({"kind": "media_probe", "max_attempts": 99}))
    job_id, _ = drop(aws, key, clip)
    job = wait_for(api, job_id)
    assert job["state"] == "rejected" and job["reason"] == "invalid_value"


def test_an_unknown_prefix_is_rejected(api, aws, clip):
    job_id, _ = drop(aws, f"intake/no-such-profile/{uuid.uuid4().hex}.mp4", clip)
    job = wait_for(api, job_id)
    assert job["state"] == "rejected" and job["reason"] == "unknown_profile"


def test_corrupt_media_fails_with_a_reason(api, aws):
    job_id, _ = drop(aws, f"intake/media_probe/{uuid.uuid4().hex}.mp4", body=b"\x00garbage" * 512)
    job = wait_for(api, job_id)
    assert job["state"] == "failed" and job["reason"] == "media_unreadable"
    assert job["attempt"] == 1                   # bad input is not retried


def test_one_poisoned_record_in_ten(api, aws, stack, clip, tmp_path):
    """Nine records become jobs; the poisoned one is retried, then dead-lettered."""
    bucket = f"batch-{uuid.uuid4().hex[:8]}"       # no notifications: only our messages count
    aws.s3.create_bucket(Bucket=bucket)
    keys = [f"intake/media_probe/{i}.mp4" for i in range(9)]
    for key in keys:
        aws.s3.upload_file(str(clip), bucket, key)
    etag = aws.s3.head_object(Bucket=bucket, Key=keys[0])["ETag"].strip('"')
    poison = "this is not an S3 notification " + uuid.uuid4().hex
    entries = [{"Id": str(i), "MessageBody": notification(k, etag, clip.stat().st_size, bucket)}
               for i, k in enumerate(keys)] + [{"Id": "9", "MessageBody": poison}]
    aws.sqs.send_message_batch(QueueUrl=queue_url(aws), Entries=entries)

    job_ids = [derive_job_id(f"s3:{bucket}/{k}@{etag}") for k in keys]
    assert all(wait_for(api, j)["state"] == "settled" for j in job_ids)

    dlq = queue_url(aws, "proofline-local-intake-dlq")
    bodies, deadline = [], time.monotonic() + 40
    while poison not in bodies and time.monotonic() < deadline:
        for m in aws.sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=1).get("Messages", []):
            bodies.append(m["Body"])
            aws.sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
    assert bodies == [poison]            # only the poison, once, after maxReceiveCount tries
