"""Pure job logic: job ids, new_job against the catalog, retry_or_fail, and routing."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.catalog import load
from chalicelib.errors import InvalidManifest, UnknownJobClass
from chalicelib.jobs.lifecycle import derive_job_id, named_job_id, new_job, retry_or_fail
from chalicelib.jobs.states import transition
from chalicelib.market.routing import route
from chalicelib.models import Attempt, Job, Manifest, State

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")   # models.JobId
CATALOG = load()
MEDIA = CATALOG.job_class("media_probe")


def manifest(**fields) -> Manifest:
    return Manifest(**{"kind": "media_probe", "input_uri": "s3://bucket-a/key.mp4", **fields})


def make(m: Manifest | None = None, **kw) -> Job:
    job, _ = new_job(m or manifest(), catalog=CATALOG, job_id=kw.get("job_id", "job-derived"),
                     source="http", correlation_id="c-1", now=NOW)
    return job


# -- derive_job_id ---------------------------------------------------------------------------
def test_derive_job_id():
    a = derive_job_id("http:sha256:abc")
    assert a == derive_job_id("http:sha256:abc")
    assert a != derive_job_id("http:sha256:abd")
    assert a != derive_job_id("s3:bucket/key@etag")
    assert JOB_ID.match(a) and re.fullmatch(r"job-[0-9a-f]{20}", a)


# -- new_job ---------------------------------------------------------------------------------
def test_new_job_takes_defaults_from_the_class():
    job, cls = new_job(manifest(), catalog=CATALOG, job_id="job-derived", source="s3",
                       correlation_id="c-9", now=NOW)
    assert cls is MEDIA
    assert (job.job_id, job.kind, job.state, job.version) == ("job-derived", "media_probe",
                                                             State.REQUESTED, 1)
    assert job.max_attempts == 3 and job.payment_policy == "none"
    assert job.timeouts_s == MEDIA.timeouts_s
    assert job.timeouts_s is not MEDIA.timeouts_s   # a copy: the class can't be mutated via a job
    assert (job.attempt, job.source, job.correlation_id) == (0, "s3", "c-9")
    assert job.created_at == job.updated_at == NOW
    assert job.next_deadline is None and job.worker is None


def test_manifest_overrides_max_attempts_and_job_id():
    job = make(manifest(max_attempts=7, job_id="client-chosen"))
    assert job.max_attempts == 7
    # The client's name for the job, scoped to the client (here: none, an unsigned submit).
    assert job.job_id == named_job_id(None, "client-chosen")
    assert job.manifest.job_id == "client-chosen"


def test_unknown_kind():
    with pytest.raises(UnknownJobClass) as info:
        make(manifest(kind="transcode"))
    assert (info.value.status, info.value.reason) == (400, "unknown_job_class")


def test_escrow_policy_is_unavailable():
    with pytest.raises(InvalidManifest) as info:
        make(manifest(payment_policy="escrow_before_start"))
    assert (info.value.status, info.value.reason) == (400, "payment_policy_unavailable")


@pytest.mark.parametrize("offset", [timedelta(seconds=-1), timedelta(0)])
def test_deadline_not_in_the_future(offset):
    with pytest.raises(InvalidManifest) as info:
        make(manifest(deadline=NOW + offset))
    assert info.value.reason == "deadline_passed"


def test_future_deadline_is_kept():
    assert make(manifest(deadline=NOW + timedelta(seconds=1))).manifest.deadline == NOW + timedelta(seconds=1)


def test_unknown_payment_policy_is_a_client_error():
    # A policy name comes from the client: a 400, never a 500 from app.py's error middleware.
    with pytest.raises(InvalidManifest) as info:
        make(manifest(payment_policy="barter"))
    assert (info.value.status, info.value.reason) == (400, "unknown_payment_policy")


# -- retry_or_fail ---------------------------------------------------------------------------
def running(attempt: int) -> Job:
    job = make()
    job, _ = transition(job, State.ASSIGNED, at=NOW, attempt=attempt, worker="pool:media")
    job, _ = transition(job, State.RUNNING, at=NOW)
    return job


def failed_attempt(job: Job) -> Attempt:
    return Attempt(job_id=job.job_id, number=job.attempt, worker="pool:media", state="failed",
                   finished_at=NOW, reason="worker_error")


def test_retry_when_attempts_remain():
    job = running(1)
    lost = failed_attempt(job)
    at = NOW + timedelta(minutes=1)
    moved, events, attempts = retry_or_fail(job, MEDIA, at=at, reason="worker_error",
                                            event="execution.failed", data={"attempt": 1},
                                            failed_attempt=lost)
    assert moved.state == State.ASSIGNED
    assert (moved.attempt, moved.worker) == (2, "pool:media")
    assert moved.version == job.version + 2
    assert moved.next_deadline == at + timedelta(seconds=MEDIA.timeouts_s[State.ASSIGNED])
    assert [e.type for e in events] == ["execution.failed", "job.assigned"]
    assert [e.state for e in events] == [State.RETRYING, State.ASSIGNED]
    assert [e.seq for e in events] == [job.version + 1, job.version + 2]
    assert events[0].data == {"attempt": 1, "reason": "worker_error"}
    assert events[1].data["attempt"] == 2 and events[1].data["worker"] == "pool:media"
    assert attempts[0] is lost
    assert attempts[1] == Attempt(job_id=job.job_id, number=2, worker="pool:media",
                                  state="assigned")


def test_fail_when_attempts_are_exhausted():
    job = running(3)
    lost = failed_attempt(job)
    moved, events, attempts = retry_or_fail(job, MEDIA, at=NOW, reason="worker_error",
                                            event="execution.failed", data={"attempt": 3},
                                            failed_attempt=lost)
    assert moved.state == State.FAILED
    assert moved.reason == "attempts_exhausted"
    assert moved.attempt == 3 and moved.next_deadline is None
    assert [e.type for e in events] == ["execution.failed", "job.failed"]
    assert [e.state for e in events] == [State.RUNNING, State.FAILED]
    assert [e.seq for e in events] == [job.version + 1, job.version + 2]
    assert moved.version == events[-1].seq
    assert events[0].data == {"attempt": 3, "reason": "worker_error"}
    assert events[1].data == {"reason": "attempts_exhausted", "last": "worker_error",
                              "attempts": 3}
    assert attempts == [lost]


def test_retry_from_verifying():
    job = running(1)
    job, _ = transition(job, State.SUBMITTED, at=NOW)
    job, _ = transition(job, State.VERIFYING, at=NOW)
    moved, events, _ = retry_or_fail(job, MEDIA, at=NOW, reason="check_failed:sha256_matches",
                                     event="validation.failed", data={},
                                     failed_attempt=failed_attempt(job))
    assert (moved.state, moved.attempt) == (State.ASSIGNED, 2)
    assert [e.seq for e in events] == [job.version + 1, job.version + 2]


# -- routing ---------------------------------------------------------------------------------
def test_route_media_probe_ranks_the_pool_with_every_factor():
    job, _ = new_job(Manifest(kind="media_probe", input_uri="s3://bucket/clip.mp4"),
                     catalog=CATALOG, job_id="job-route1", source="http",
                     correlation_id="c", now=NOW)
    a = route(MEDIA, job, now=NOW.timestamp())
    assert (a.worker, a.queue) == ("pool:media", "media")
    assert "pool:media ranked first" in a.reason
    [ranked] = a.ranking["ranked"]
    assert ranked["worker"] == "pool:media" and 0 < ranked["score"] <= 1
    assert {"capability", "reputation", "price", "locality", "timeouts", "warm",
            "health"} <= set(ranked["factors"])
    assert a.as_event()["ranking"] == a.ranking and a.ranking["excluded"] == {}