"""What each committed change adds to the status page's buckets, and what the page reads back
(pure)."""
from datetime import datetime, timedelta, timezone

from chalicelib.bus import Committed
from chalicelib.models import Event, Job, Manifest, State
from chalicelib.status import aggregates

T0 = datetime(2026, 12, 2, 14, 0, tzinfo=timezone.utc)


def job(state: State, *, reason=None, created=T0, **changes) -> Job:
    return Job(job_id="job-1", kind="media_probe", state=state, version=3,
               manifest=Manifest(kind="media_probe", input_uri="s3://bucket-a/k"),
               payment_policy="none", max_attempts=3, timeouts_s={}, correlation_id="c",
               source="http", created_at=created, updated_at=created, reason=reason, **changes)


def event(seq: int, kind: str, state: State, at: datetime, **data) -> Event:
    return Event(job_id="job-1", seq=seq, type=kind, at=at, state=state, correlation_id="c",
                 data=data)


def test_a_settled_job_counts_once_with_its_time_to_settled():
    before, at = job(State.VERIFIED), T0 + timedelta(seconds=7)
    change = Committed(before, job(State.SETTLED),
                       (event(9, "job.settled", State.SETTLED, at),))
    [added] = aggregates.contributions(change)
    assert added.key == "job-1#9" and added.at == at
    assert dict(added.counts) == {"settled": 1, aggregates.latency_bucket(7.0): 1}
    assert aggregates.latency_bucket(7.0) == "latency_03"          # 5 s < 7 s ≤ 10 s


def test_failures_count_by_reason_and_validations_and_retries_each_once():
    at = T0 + timedelta(seconds=3)
    change = Committed(job(State.VERIFYING), job(State.FAILED, reason="ssim_low"), (
        event(4, "validation.failed", State.VERIFYING, at, reason="ssim_low"),
        event(5, "job.failed", State.FAILED, at, reason="ssim_low")))
    counted = {c.key: dict(c.counts) for c in aggregates.contributions(change)}
    assert counted == {"job-1#4": {"validation_failed": 1},
                       "job-1#5": {"failed": 1, "failed:ssim_low": 1}}
    retry = Committed(job(State.RUNNING), job(State.RETRYING),
                      (event(6, "execution.failed", State.RETRYING, at),))
    assert [dict(c.counts) for c in aggregates.contributions(retry)] == [{"retries": 1}]
    unmoved = Committed(job(State.SETTLED), job(State.SETTLED),
                        (event(7, "settlement.released", State.SETTLED, at),))
    assert [dict(c.counts) for c in aggregates.contributions(unmoved)] == [{"releases": 1}]


def test_the_page_figures_from_summed_buckets():
    buckets = [{"settled": 3, "validated": 4, "validation_failed": 1, "retries": 1,
                "latency_02": 2, "latency_05": 1, "charged:PUSD:6": 3_000_000},
               {"failed": 1, "failed:input_empty": 1, "rejected": 2}]
    shown = aggregates.figures(aggregates.totals(buckets))
    assert (shown["settled"], shown["failed"], shown["rejected"]) == (3, 1, 2)
    assert shown["failed_by_reason"] == {"input_empty": 1}
    assert shown["validation_failure_rate"] == 0.2 and shown["retry_rate"] == 0.25
    assert shown["time_to_settled_p50_s"] == 5.0 and shown["time_to_settled_p95_s"] == 30.0
    assert shown["cost_per_validated_result"] == {"PUSD": "0.75"}
    assert aggregates.figures({})["time_to_settled_p50_s"] is None


def test_the_hour_minute_by_minute_has_sixty_points_oldest_first():
    now = T0 + timedelta(minutes=30)
    buckets = {aggregates.minute_key(now): {"settled": 2},
               aggregates.minute_key(now - timedelta(minutes=59)): {"settled": 1}}
    points = aggregates.series(buckets, now, "settled")
    assert len(points) == 60 and points[0] == 1 and points[-1] == 2 and sum(points) == 3
    first, last, first_hour, last_hour = aggregates.window_keys(now)
    assert (first, last) == ("M#2026-12-02T13:31", "M#2026-12-02T14:30")
    assert (first_hour, last_hour) == ("H#2026-12-01T15", "H#2026-12-02T14")


def test_the_day_hour_by_hour_has_twenty_four_points_adding_up_to_the_day():
    now = T0 + timedelta(minutes=30)
    buckets = {aggregates.hour_key(now): {"settled": 2, "failed": 1},
               aggregates.hour_key(now - timedelta(hours=23)): {"settled": 1},
               aggregates.hour_key(now - timedelta(hours=24)): {"settled": 7}}   # not the day
    points = aggregates.hourly_series(buckets, now, "settled")
    assert len(points) == 24 and points[0] == 1 and points[-1] == 2 and sum(points) == 3
    assert aggregates.hourly_series(buckets, now, "failed") == [0] * 23 + [1]
    _, _, first_hour, last_hour = aggregates.window_keys(now)
    in_the_day = [b for k, b in buckets.items() if first_hour <= k <= last_hour]
    assert aggregates.figures(aggregates.totals(in_the_day))["settled"] == sum(points)


def test_workers_online_by_class_region_and_tier():
    from decimal import Decimal

    from chalicelib.market.router import Candidate, capability
    now = T0.timestamp()
    fresh = dict(region="eu-west-1", last_heartbeat=now - 5,
                 price_per_unit={"ffmpeg_hls": Decimal(1)})
    rows = aggregates.workers_online(
        [Candidate(worker="a", verified=frozenset({capability("class", "ffmpeg_hls")}), **fresh),
         Candidate(worker="b", **fresh),
         Candidate(worker="c", **{**fresh, "last_heartbeat": now - 600})],      # gone quiet
        ["ffmpeg_hls"], region="us-east-1", now=now, heartbeat_ttl_s=60)
    assert rows == [
        {"job_class": "ffmpeg_hls", "region": "eu-west-1", "tier": "claimed", "online": 1},
        {"job_class": "ffmpeg_hls", "region": "eu-west-1", "tier": "verified", "online": 1},
        {"job_class": "ffmpeg_hls", "region": "us-east-1", "tier": "pool", "online": 1}]


def test_a_cost_per_result_keeps_to_the_tokens_precision():
    shown = aggregates.figures({"validated": 3, "charged:PUSD:6": 100})
    assert shown["cost_per_validated_result"] == {"PUSD": "0.000033"}
    assert shown["charged"] == {"PUSD": "0.0001"}
