"""Attempts under fire, on the real store: races, duplicates, late and lying workers, lost
leases, the sweeper. Dispatch is recorded instead of sent where a test must hold the job."""
import dataclasses
import json
import threading
import uuid
from datetime import timedelta

import pytest
from conftest import event_types, wait_for

from chalicelib.aws.blobs import S3Uri, attempt_key
from chalicelib.bus import MessageBus
from chalicelib.errors import StaleVersion
from chalicelib.jobs import attempts, states, sweeper
from chalicelib.jobs import lifecycle as jobs
from chalicelib.media import probe as media
from chalicelib.models import AttemptResult, Job, Manifest, Output, State
from media_worker import handler as media_handler
from media_worker.probe import probe
from proofline import clips
from proofline.client import ApiError
from proofline.pump import LambdaContext, sqs_event

pytestmark = pytest.mark.stack


class RecordingQueues:
    def __init__(self):
        self.sent = []

    def send(self, queue, message):
        self.sent.append((queue, json.loads(json.dumps(message))))


@pytest.fixture()
def held(ports):
    """Ports whose outbound messages are recorded, not sent: the job waits for the test."""
    return dataclasses.replace(ports, queues=RecordingQueues())


@pytest.fixture(scope="module")
def stored_clip(api, clip):
    return api.upload(clip)


def new_job(held, stored_clip, **fields):
    manifest = Manifest(kind="media_probe", input_uri=stored_clip["input_uri"],
                        input_hash=stored_clip["input_hash"], **fields)
    job, created = jobs.accept(held, manifest, job_id=f"job-{uuid.uuid4().hex[:16]}",
                               source="http", correlation_id=str(uuid.uuid4()))
    assert created and job.state == State.ASSIGNED
    return job


def upload_report(ports, job, attempt, report: bytes, claimed_sha=None):
    uri = S3Uri(ports.settings.artifacts_bucket, attempt_key(job.job_id, attempt, "probe.json"))
    ports.blobs.put(uri, report)
    return AttemptResult(job_id=job.job_id, attempt=attempt, worker="pool:media", duration_ms=5,
                         output=Output(name="probe.json", uri=str(uri), size_bytes=len(report),
                                       sha256=claimed_sha or media.sha256_bytes(report)))


def media_event(message, receive_count=1):
    """The event Lambda's SQS trigger would hand the media worker for this message."""
    return sqs_event([{"MessageId": str(uuid.uuid4()), "ReceiptHandle": "handle",
                       "Body": json.dumps(message),
                       "Attributes": {"ApproximateReceiveCount": str(receive_count),
                                      "SentTimestamp": "1700000000000"}}],
                     "arn:aws:sqs:us-east-1:123456789012:proofline-local-media", "us-east-1")


def test_racing_transitions_have_exactly_one_winner(held, stored_clip):
    job = new_job(held, stored_clip)
    targets = [State.RUNNING, State.FAILED, State.CANCELLED, State.RETRYING] * 3
    wins, losses, barrier = [], [], threading.Barrier(len(targets))

    def race(target):
        moved, event = states.transition(job, target, at=held.clock(), reason="race")
        barrier.wait()
        try:
            held.store.commit(job, moved, [event])
            wins.append(target)
        except StaleVersion:
            losses.append(target)

    threads = [threading.Thread(target=race, args=(t,)) for t in targets]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1 and len(losses) == len(targets) - 1
    view = held.store.view(job.job_id)
    assert view.job.state == wins[0] and view.job.version == job.version + 1
    assert len(view.events) == job.version + 1            # one event per committed version


def test_duplicate_dispatch_runs_the_attempt_once(held, stored_clip, api, aws, ports):
    job = new_job(held, stored_clip)
    [(_, message)] = held.queues.sent
    url = aws.sqs.get_queue_url(QueueName=ports.settings.media_queue)["QueueUrl"]
    for _ in range(3):
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(message))
    assert wait_for(api, job.job_id)["state"] == "settled"
    types = event_types(api, job.job_id)
    assert types.count("execution.started") == 1 and types.count("output.uploaded") == 1


def test_a_late_attempt_never_overwrites_the_retry(held, stored_clip):
    job = new_job(held, stored_clip, max_attempts=3)
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    retried = attempts.fail(held, running, 1, RuntimeError("container crashed"))
    assert retried.state == State.ASSIGNED and retried.attempt == 2
    late = upload_report(held, job, 1, b'{"late": true}')
    assert attempts.submit(held, running, late) is None
    view = held.store.view(job.job_id)
    assert view.job.state == State.ASSIGNED and view.job.attempt == 2
    assert "output.uploaded" not in [e.type for e in view.events]
    assert {a.number: a.state for a in view.attempts} == {1: "failed", 2: "assigned"}


def test_a_lying_worker_is_caught_and_the_job_retried(held, stored_clip, media_dir):
    job = new_job(held, stored_clip, max_attempts=2)
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    other = clips.make_clip(media_dir / "other.mp4", seconds=2.0, width=96, height=64)
    report = probe(other).model_dump_json().encode()     # valid, but of another file
    result = upload_report(held, running, 1, report)
    submitted = attempts.submit(held, running, result)
    after = attempts.verify(held, submitted, result)
    assert after.state == State.ASSIGNED and after.attempt == 2 and not after.outputs
    failed = [e for e in held.store.view(job.job_id).events if e.type == "validation.failed"]
    assert failed[0].data["checks"]["describes_input"] is False
    assert failed[0].data["measured"]["input_size_bytes"] != failed[0].data["measured"]["reported_input_bytes"]


def test_a_wrong_hash_claim_fails_validation_and_exhausts_attempts(held, stored_clip, clip):
    job = new_job(held, stored_clip, max_attempts=1)
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    report = probe(clip).model_dump_json().encode()
    result = upload_report(held, running, 1, report, claimed_sha="sha256:" + "0" * 64)
    after = attempts.verify(held, attempts.submit(held, running, result), result)
    assert after.state == State.FAILED and after.reason == "attempts_exhausted"
    types = [e.type for e in held.store.view(job.job_id).events]
    assert "validation.passed" not in types and types[-2:] == ["validation.failed", "job.failed"]


def test_a_redelivered_message_takes_over_a_lost_lease(held, stored_clip, api):
    job = new_job(held, stored_clip, max_attempts=3)
    [(_, message)] = held.queues.sent
    attempts.start(held, job, 1, "pool:media", redelivered=False)       # then the worker died
    response = media_handler.handler(media_event(message, receive_count=2),
                                     LambdaContext("media", 60))
    assert response == {"batchItemFailures": []}
    final = wait_for(api, job.job_id)
    assert final["state"] == "settled" and final["attempt"] == 2
    assert {a["number"]: a["state"] for a in final["attempts"]} == {1: "lost", 2: "passed"}
    assert "execution.lost" in event_types(api, job.job_id)


def test_the_sweeper_retries_an_expired_lease_and_fails_a_passed_deadline(held, stored_clip):
    job = new_job(held, stored_clip, max_attempts=2)
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    two_hours_on = running.updated_at + timedelta(hours=2)
    actions = dict(sweeper.sweep_jobs(dataclasses.replace(held, clock=lambda: two_hours_on)))
    assert actions[job.job_id] == "assigned"
    swept = held.store.view(job.job_id)
    assert swept.job.attempt == 2 and swept.events[-2].type == "lease.expired"
    redispatched = [m for _, m in held.queues.sent if m["job"]["job_id"] == job.job_id]
    assert [m["attempt"] for m in redispatched] == [1, 2]

    deadline = held.clock() + timedelta(minutes=5)
    doomed = new_job(held, stored_clip, deadline=deadline)
    after = dataclasses.replace(held, clock=lambda: deadline + timedelta(seconds=1))
    assert dict(sweeper.sweep_jobs(after))[doomed.job_id] == "failed"
    assert held.store.get(doomed.job_id).reason == "deadline_passed"


def test_a_cancelled_job_ignores_its_late_dispatch(held, stored_clip, api, aws, ports):
    job = new_job(held, stored_clip)
    [(_, message)] = held.queues.sent
    assert api.cancel(job.job_id)["state"] == "cancelled"
    url = aws.sqs.get_queue_url(QueueName=ports.settings.media_queue)["QueueUrl"]
    aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(message))
    response = media_handler.handler(media_event(message), LambdaContext("media", 60))
    assert response == {"batchItemFailures": []}
    assert event_types(api, job.job_id) == ["job.created", "job.assigned", "job.cancelled"]


def test_a_lost_verification_request_is_sent_again_by_the_sweeper(held, stored_clip, clip):
    job = new_job(held, stored_clip)
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    result = upload_report(held, running, 1, probe(clip).model_dump_json().encode())
    submitted = attempts.submit(held, running, result)
    held.queues.sent.clear()                                   # the verify message is lost
    later = submitted.updated_at + timedelta(hours=1)
    assert dict(sweeper.sweep_jobs(dataclasses.replace(held, clock=lambda: later)))[job.job_id] == \
        "verification.requested"
    [(queue, message)] = [(q, m) for q, m in held.queues.sent if m["job"]["job_id"] == job.job_id]
    assert queue == "verify" and message["result"]["output"] == result.output.model_dump()
    settled = attempts.verify(held, Job.model_validate(message["job"]),
                              AttemptResult.model_validate(message["result"]))
    assert settled.state == State.SETTLED


def test_a_claimed_output_that_does_not_exist_fails_validation(held, stored_clip):
    job = new_job(held, stored_clip, max_attempts=1)
    running = attempts.start(held, job, 1, "pool:media", redelivered=False)
    ghost = AttemptResult(job_id=job.job_id, attempt=1, worker="pool:media", duration_ms=1,
                          output=Output(name="probe.json", size_bytes=10, sha256="sha256:" + "1" * 64,
                                        uri=f"s3://{held.settings.artifacts_bucket}/nowhere.json"))
    after = attempts.verify(held, attempts.submit(held, running, ghost), ghost)
    assert after.state == State.FAILED
    failed = [e for e in held.store.view(job.job_id).events if e.type == "validation.failed"]
    assert failed[0].data["checks"] == {"output_readable": False}


def test_an_input_gone_since_its_upload_is_refused_at_the_door_with_its_reason(api, aws,
                                                                               tmp_path):
    """Uploaded and recorded, then removed (say, expired unused): a 422, not a 500."""
    path = tmp_path / "soon-gone.bin"
    path.write_bytes(uuid.uuid4().bytes * 64)
    slot = api.upload(path)
    gone = S3Uri.parse(slot["input_uri"])
    aws.s3.delete_object(Bucket=gone.bucket, Key=gone.key)
    with pytest.raises(ApiError) as refused:
        api.submit({"kind": "media_probe", "input_uri": slot["input_uri"]})
    assert (refused.value.status, refused.value.reason) == (422, "input_missing")


def test_a_manifest_whose_hash_is_not_its_inputs_is_refused_at_the_door(api, stored_clip):
    with pytest.raises(ApiError) as refused:
        api.submit({"kind": "media_probe", "input_uri": stored_clip["input_uri"],
                    "input_hash": "sha256:" + "ab" * 32})
    assert (refused.value.status, refused.value.reason) == (400, "input_hash_mismatch")


def test_inputs_over_the_class_limit_are_refused_before_download(ports, stored_clip, tmp_path):
    from chalicelib.errors import InputError
    with pytest.raises(InputError) as info:
        ports.blobs.download(S3Uri.parse(stored_clip["input_uri"]), tmp_path / "x", limit=100)
    assert info.value.reason == "input_too_large" and not (tmp_path / "x").exists()


class Killed(BaseException):
    """The process dies between a commit and its side effects (not an error a handler
    could report: nothing after it runs)."""


def test_work_a_crash_left_undone_after_a_commit_is_finished_by_the_sweeper(held, stored_clip):
    def killed(ports, committed):
        raise Killed(committed.after.job_id)
    crashing = dataclasses.replace(held, bus=MessageBus([killed, *held.bus.handlers]))
    manifest = Manifest(kind="media_probe", input_uri=stored_clip["input_uri"],
                        input_hash=stored_clip["input_hash"], max_attempts=2)
    job_id = f"job-{uuid.uuid4().hex[:16]}"
    with pytest.raises(Killed):
        jobs.accept(crashing, manifest, job_id=job_id, source="http")
    stranded = held.store.get(job_id)
    assert stranded.state == State.ASSIGNED and held.queues.sent == []   # committed, not sent

    later = stranded.next_deadline + timedelta(seconds=1)
    assert sweeper.sweep_job(dataclasses.replace(held, clock=lambda: later), stranded,
                             later) == "assigned"
    [(queue, message)] = held.queues.sent
    assert queue == "media" and message["attempt"] == 2 and message["job"]["job_id"] == job_id
