"""`GET /status.json` on the local stack: its figures are literal counts of the jobs a test
made, each change counts once however often it is recorded, and the page costs the same
reads whatever the number of jobs."""
from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from datetime import timedelta

import boto3
import pytest
import requests
from botocore.config import Config
from conftest import INTAKE, drop, wait_for

from chalicelib import aws as aws_adapter
from chalicelib.aws.queueages import QueueAges
from chalicelib.bus import Committed
from chalicelib.status import aggregates, board
from proofline import clips

pytestmark = pytest.mark.stack


def status(stack) -> dict:
    response = requests.get(f"{stack.info.api_url}/status.json", timeout=30)
    assert response.status_code == 200
    return response.json()


def hour(doc: dict, kind: str) -> dict:
    return doc["classes"][kind]["last_hour"]


def reads_of_the_page(ports) -> int:
    """DynamoDB requests one status document makes (this thread's only)."""
    here, seen = threading.get_ident(), []

    def observe(service, operation, params, presigned):
        if service == "dynamodb" and threading.get_ident() == here:
            seen.append(operation)
    aws_adapter.observers.append(observe)
    try:
        # Without the worker registry, whose routing view is cached for a few seconds (one
        # read when it renews, whatever the number of jobs): the count is then exact.
        board.status_document(dataclasses.replace(ports, workers=None), ports.clock())
    finally:
        aws_adapter.observers.remove(observe)
    return len(seen)


def test_the_status_figures_are_the_jobs_that_ran(stack, api, aws, ports, tmp_path):
    before, reads_before = status(stack), reads_of_the_page(ports)
    # A clip of this test's own: bytes an unsigned client uploads become its to use.
    clip = clips.make_clip(tmp_path / "status.mp4", seconds=1.0, width=176, height=144)
    slot = api.upload(clip)
    settled = [api.submit({"kind": "media_probe", "input_uri": slot["input_uri"]},
                          idempotency_key=str(uuid.uuid4()))[0]["job_id"] for _ in range(3)]
    garbage = tmp_path / "not-a-video.mp4"
    garbage.write_bytes(b"this is not a video " * 100)
    broken = api.upload(garbage)
    failed = [api.submit({"kind": "media_probe", "input_uri": broken["input_uri"],
                          "max_attempts": 1}, idempotency_key=str(uuid.uuid4()))[0]["job_id"]
              for _ in range(2)]
    key = f"uploads/{uuid.uuid4().hex}.mp4"                   # a drop its sidecar spoils
    aws.s3.put_object(Bucket=INTAKE, Key=key + ".job.json",
                      Body=json.dumps({"kind": "media_probe", "max_attempts": 99}))
    rejected, _ = drop(aws, key, clip)
    assert {wait_for(api, j)["state"] for j in settled} == {"settled"}
    reasons = {wait_for(api, j)["reason"] for j in failed}
    assert {wait_for(api, j)["state"] for j in failed} == {"failed"}
    assert wait_for(api, rejected)["state"] == "rejected"

    after = status(stack)
    was, now = hour(before, "media_probe"), hour(after, "media_probe")
    assert now["settled"] - was["settled"] == 3
    assert now["validated"] - was["validated"] == 3
    assert now["failed"] - was["failed"] == 2
    [reason] = reasons
    assert now["failed_by_reason"][reason] - was["failed_by_reason"].get(reason, 0) == 2
    assert hour(after, "unknown")["rejected"] - hour(before, "unknown")["rejected"] == 1
    assert sum(after["classes"]["media_probe"]["per_minute"]["settled"]) == now["settled"]
    day = after["classes"]["media_probe"]["last_day"]
    per_hour = after["classes"]["media_probe"]["per_hour"]
    assert {name: len(points) for name, points in per_hour.items()} == {
        "settled": 24, "failed": 24, "rejected": 24, "validation_failed": 24}
    assert (sum(per_hour["settled"]), sum(per_hour["failed"])) == (day["settled"], day["failed"])
    assert now["time_to_settled_p50_s"] is not None
    assert after["classes"]["media_probe"]["last_day"]["settled"] >= now["settled"]
    assert set(after["queues"]) >= {"media", "segments", "checks", "verify"}
    assert all(set(q) == {"waiting", "in_flight", "dead_letters", "oldest_age_s"}
               for q in after["queues"].values())
    pools = {(w["job_class"], w["tier"]) for w in after["workers"]}
    assert {("media_probe", "pool"), ("ffmpeg_hls", "pool"), ("embed_batch", "pool")} <= pools
    assert after["settlement"]["enabled"] is True
    assert after["settlement"]["follower_lag_blocks"] is not None
    assert isinstance(after["settlement"]["open_escrows"], int)
    # The same number of reads with more jobs behind the figures: buckets, not a scan.
    assert reads_of_the_page(ports) == reads_before


def test_a_count_lost_after_its_commit_is_added_once_by_the_sweeper(ports):
    """A change is committed and its after-commit handlers never run (a crash): its
    contribution waits on its event; the sweeper adds it, once, and a late handler adds
    nothing more."""
    from chalicelib.bus import MessageBus
    from chalicelib.errors import InvalidManifest
    from chalicelib.jobs import lifecycle
    from chalicelib.status.board import REPAIR_AFTER, record_status, repair_status
    crashed = dataclasses.replace(ports, bus=MessageBus(()))
    job = lifecycle.reject(crashed, key=f"s3:lost/{uuid.uuid4().hex}", uri="s3://bucket-a/x",
                           error=InvalidManifest("spoiled sidecar", reason="invalid_value"))
    later = ports.clock() + REPAIR_AFTER * 2
    [due] = [c for c in ports.status.due(later) if c.key.startswith(job.job_id)]
    assert dict(due.counts) == {"rejected": 1}
    first, last, _, _ = aggregates.window_keys(due.at)

    def rejected() -> int:
        return aggregates.totals(ports.status.buckets("unknown", first, last).values()
                                 ).get("rejected", 0)
    before = rejected()
    # What the sweeper runs (every minute), a while after the commit.
    assert due.key in repair_status(ports, later)
    assert rejected() - before == 1
    assert not [c for c in ports.status.due(later) if c.key.startswith(job.job_id)]
    view = ports.store.view(job.job_id)
    record_status(ports, Committed(None, view.job, tuple(view.events)))       # a late run
    assert rejected() - before == 1


def test_the_status_page_shows_the_figures_without_javascript(stack):
    response = requests.get(f"{stack.info.api_url}/status", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    page, doc = response.text, status(stack)
    assert "<script" not in page
    for kind in ("media_probe", "ffmpeg_hls"):
        assert f"id='class-{kind}'" in page
    settled = hour(doc, "media_probe")["settled"]
    assert f"last hour per minute: settled {settled}," in page
    day = doc["classes"]["media_probe"]["last_day"]
    assert (f"last day per hour: settled {day['settled']}, failed {day['failed']}, "
            f"rejected {day['rejected']}<") in page
    assert "Last hour, a bar per minute" in page and "Last day, a bar per hour" in page


def queue_row(page: str, queue: str) -> list[str]:
    """The cells of a queue's row in the page's queue table."""
    [row] = re.findall(rf"<tr><td>{queue}</td>(.*?)</tr>", page)
    return re.findall(r"<td[^>]*>(.*?)</td>", row)


def test_a_queues_oldest_message_age_is_read_from_cloudwatch(stack, ports):
    """SQS publishes the age of each queue's oldest message to CloudWatch (`AWS/SQS`, by
    queue name), never as a queue attribute. Put there for one queue, as SQS would, it is
    that queue's age on the page (the largest over the last five minutes); a queue with
    none (moto publishes no SQS metrics) shows "–"."""
    cloudwatch = boto3.session.Session().client(
        "cloudwatch", endpoint_url=stack.info.aws_endpoint, region_name=stack.info.region)
    name = ports.settings.queues["checks"]
    now = ports.clock()
    for ago, age in ((timedelta(minutes=3), 754.0), (timedelta(minutes=1), 312.0),
                     (timedelta(minutes=9), 9999.0)):          # the last: out of the window
        cloudwatch.put_metric_data(Namespace="AWS/SQS", MetricData=[{
            "MetricName": "ApproximateAgeOfOldestMessage", "Unit": "Seconds", "Value": age,
            "Timestamp": now - ago, "Dimensions": [{"Name": "QueueName", "Value": name}]}])
    doc = status(stack)
    assert doc["queues"]["checks"]["oldest_age_s"] == 754.0
    assert doc["queues"]["settlement"]["oldest_age_s"] is None
    page = requests.get(f"{stack.info.api_url}/status", timeout=30).text
    assert queue_row(page, "checks")[2] == "13 min"
    assert queue_row(page, "settlement")[2] == "–"


def test_the_page_stands_when_cloudwatch_fails(ports, caplog):
    """CloudWatch refusing or unreachable costs the queues their ages, never the page."""
    unreachable = boto3.session.Session().client(
        "cloudwatch", endpoint_url="http://127.0.0.1:9", region_name=ports.settings.region,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    broken = dataclasses.replace(
        ports, queue_ages=QueueAges(lambda: unreachable, ports.settings.queues))
    doc = board.status_document(broken, ports.clock())
    assert set(doc["queues"]) == set(ports.settings.queues)
    assert all(q["oldest_age_s"] is None for q in doc["queues"].values())
    assert all(isinstance(q["waiting"], int) for q in doc["queues"].values())
    assert "queue ages unreadable" in caplog.text
