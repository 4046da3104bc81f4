"""The marketplace's pure parts, without the stack: how a registered worker becomes a router
candidate, which tasks go to it, and when a challenge is due."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from chalicelib import catalog
from chalicelib.errors import InvalidRequest
from chalicelib.market import challenges, routing
from chalicelib.market.leases import parse_ref
from chalicelib.market.registry import Challenge, Claims, Health, VerifiedCapability, Worker
from chalicelib.models import Job, Manifest, State, Task, TranscodePlan

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
POOL_PRICE = Decimal("0.00005")


def worker(n: int, *, price="0.00002", verified=True, beat_s_ago=1.0, accepting=True,
           **changes) -> Worker:
    did = f"did:pkh:eip155:31337:0x{n:040x}"
    return Worker(
        did=did, address=f"0x{n:040x}",
        claims=Claims(job_classes=["ffmpeg_hls"], region="us-east-1",
                      price_per_unit={"ffmpeg_hls": Decimal(price)}),
        verified={"ffmpeg_hls": VerifiedCapability(
            job_class="ffmpeg_hls", verified_at=NOW - timedelta(days=1),
            expires_at=NOW + timedelta(days=6), how="challenge job c-1 passed")}
        if verified else {},
        health=Health(accepting=accepting),
        last_heartbeat=NOW - timedelta(seconds=beat_s_ago), registered_at=NOW,
        updated_at=NOW, **changes)


def job_and_task(**task_changes) -> tuple[Job, Task]:
    manifest = Manifest(kind="ffmpeg_hls", input_uri="s3://intake/x.mp4", profile="hls-720p")
    plan = TranscodePlan(profile="hls-720p", container="hls", segment_s=4, fps="25",
                         duration_s=4.0, renditions=[{"name": "720p", "width": 1280,
                                                      "height": 720}],
                         segments=[], has_audio=False, split={}, command_template={})
    job = Job(job_id="job-1", kind="ffmpeg_hls", state=State.RUNNING, version=3,
              manifest=manifest, payment_policy="none", max_attempts=3, timeouts_s={},
              correlation_id="job-1", source="http", created_at=NOW, updated_at=NOW, plan=plan)
    task = Task(job_id="job-1", task_id="720p-00000", kind="video", rendition="720p",
                duration_s=4.0, input_uri="s3://artifacts/segments/a.mkv",
                input_hash="sha256:" + "a" * 64, max_attempts=3, updated_at=NOW, **task_changes)
    return job, task


def route(workers: list[Worker], **task_changes) -> routing.Assignment:
    job, task = job_and_task(**task_changes)
    candidates = [c for w in workers if (c := w.candidate(NOW)) is not None]
    return routing.route_segment(catalog.default().job_class("ffmpeg_hls"), job, [task],
                                 candidates,
                              pool_price=POOL_PRICE, heartbeat_ttl_s=60,
                              now=NOW.timestamp())


def test_a_verified_worker_cheaper_than_the_pool_wins_the_task():
    chosen = route([worker(1)])
    assert chosen.worker == worker(1).did
    ranked = {r["worker"]: r for r in chosen.ranking["ranked"]}
    assert set(ranked) == {worker(1).did, "pool:media"}
    assert Decimal(ranked["pool:media"]["price"]) == POOL_PRICE * Decimal("0.9216") * 4


def test_claims_alone_never_win_work_however_cheap():
    chosen = route([worker(1, verified=False, price="0.0000001")])
    assert chosen.worker == "pool:media"
    assert chosen.ranking["excluded"]["no_verified_capability"]["first"] == [worker(1).did]


def test_workers_whose_attempt_failed_are_not_asked_again():
    cheap, dear = worker(1, price="0.00001"), worker(2, price="0.00003")
    assert route([cheap, dear]).worker == cheap.did
    assert route([cheap, dear], tried=[cheap.did]).worker == dear.did
    assert route([cheap, dear], tried=[cheap.did, dear.did]).worker == "pool:media"


def test_a_stale_or_draining_worker_gets_nothing():
    assert route([worker(1, beat_s_ago=120)]).worker == "pool:media"
    assert worker(1, accepting=False).candidate(NOW) is None
    assert route([worker(1, accepting=False)]).worker == "pool:media"


def test_an_expired_verification_no_longer_counts():
    lapsed = worker(1)
    lapsed.verified["ffmpeg_hls"] = lapsed.verified["ffmpeg_hls"].model_copy(
        update={"expires_at": NOW - timedelta(seconds=1)})
    assert route([lapsed]).worker == "pool:media"


def test_a_challenge_is_due_when_never_tried_retryable_or_near_expiry():
    ttl = 7 * 86_400
    fresh = worker(1, verified=False)
    assert challenges.due(fresh, NOW, ttl) == ["ffmpeg_hls"]
    failed = worker(1, verified=False, challenges={"ffmpeg_hls": Challenge(
        state="failed", at=NOW, reason="ssim_too_low", task="720p-00000")})
    assert challenges.due(failed, NOW, ttl) == []                # a cheat is not asked again
    away = worker(1, verified=False, challenges={"ffmpeg_hls": Challenge(
        state="failed", at=NOW, reason="offer_lapsed", retryable=True)})
    assert challenges.due(away, NOW, ttl) == []                  # not at every heartbeat …
    assert challenges.due(away, NOW + timedelta(minutes=59), ttl) == []
    assert challenges.due(away, NOW + timedelta(hours=1), ttl) == ["ffmpeg_hls"]   # … hourly
    assert challenges.due(away, NOW + timedelta(seconds=2), ttl, retry_after_s=2) == [
        "ffmpeg_hls"]
    passed = worker(1, challenges={"ffmpeg_hls": Challenge(state="passed", at=NOW)})
    assert challenges.due(passed, NOW, ttl) == []
    assert challenges.due(passed, NOW + timedelta(days=6, hours=1), ttl) == ["ffmpeg_hls"]
    pending = worker(1, verified=False, challenges={"ffmpeg_hls": Challenge(
        state="pending", at=NOW, job_id="c-2")})
    assert challenges.due(pending, NOW, ttl) == []


@pytest.mark.parametrize("ref", ["job-1", "~720p", "job-1~", ""])
def test_task_references_are_checked(ref):
    with pytest.raises(InvalidRequest) as refused:
        parse_ref(ref)
    assert refused.value.reason == "invalid_task_ref"


def test_a_task_reference_splits_at_its_last_tilde():
    assert parse_ref("job~1~720p-00003") == ("job~1", "720p-00003")


def test_a_worker_far_from_the_segment_pays_for_moving_it():
    job, task = job_and_task()
    job.plan.segments.append({"index": 0, "size_bytes": 2 * 10**9})
    near, far = worker(1, price="0.00003"), worker(2, price="0.00001")
    far.claims.region = "ap-south-1"
    candidates = [c for w in (near, far) if (c := w.candidate(NOW)) is not None]
    chosen = routing.route_segment(catalog.default().job_class("ffmpeg_hls"), job, [task],
                                candidates, pool_price=POOL_PRICE, heartbeat_ttl_s=60,
                                now=NOW.timestamp(), region="us-east-1")
    prices = {r["worker"]: Decimal(r["price"]) for r in chosen.ranking["ranked"]}
    assert prices[far.did] == Decimal("0.00001") * Decimal("3.6864") + Decimal("0.04")
    assert chosen.worker == near.did                      # cheaper per unit, dearer to reach


def embed_route(workers: list[Worker], *, private=False, allow=frozenset(),
                cold=()) -> routing.Assignment:
    """Workers verified for embed_batch and its model, the model loaded unless `cold`."""
    model = "sentence-transformers/all-MiniLM-L6-v2"
    for w in workers:
        w.claims.price_per_unit["embed_batch"] = Decimal("0.0001")
        w.health = Health(models_loaded=[] if w.did in cold else [model])
        w.verified["embed_batch"] = VerifiedCapability(
            job_class="embed_batch", verified_at=NOW, expires_at=NOW + timedelta(days=1),
            how="challenge", tokens=[f"model:{model}"])
    manifest = Manifest(kind="embed_batch", texts=["a"],
                        data_sensitivity="private" if private else None)
    job = Job(job_id="job-2", kind="embed_batch", state=State.ASSIGNED, version=2,
              manifest=manifest, payment_policy="none", max_attempts=3, timeouts_s={},
              correlation_id="job-2", source="http", created_at=NOW, updated_at=NOW)
    return routing.route(catalog.default().job_class("embed_batch"), job, now=NOW.timestamp(),
                         candidates=[w.candidate(NOW) for w in workers],
                         pool_price=Decimal("0.000164"), allow_list=allow)


def test_a_worker_with_the_model_loaded_beats_a_cold_one():
    cold, warm = worker(1), worker(2)
    chosen = embed_route([cold, warm], cold={cold.did})
    assert chosen.worker == warm.did
    factors = {r["worker"]: r["factors"]["warm"] for r in chosen.ranking["ranked"]}
    assert factors[warm.did] == 1.0 and factors[cold.did] == 0.0


def test_private_jobs_go_only_to_trusted_or_allow_listed_workers():
    stranger, cleared = worker(1), worker(2, price="0.00003")
    chosen = embed_route([stranger, cleared], private=True)
    assert chosen.worker == "pool:inference"
    assert chosen.ranking["excluded"]["untrusted_for_private"]["count"] == 2
    assert embed_route([stranger, cleared], private=True,
                       allow=frozenset({cleared.did})).worker == cleared.did


def test_a_claimed_model_without_a_verified_model_token_is_not_enough():
    unproven = worker(1)
    unproven.claims.models_cached = ["sentence-transformers/all-MiniLM-L6-v2"]
    chosen = embed_route([unproven])
    assert chosen.worker == unproven.did              # verified by its challenge
    unproven.verified["embed_batch"].tokens.clear()
    model_free = routing.route(
        catalog.default().job_class("embed_batch"),
        Job(job_id="job-3", kind="embed_batch", state=State.ASSIGNED, version=2,
            manifest=Manifest(kind="embed_batch", texts=["a"]), payment_policy="none",
            max_attempts=3, timeouts_s={}, correlation_id="c", source="http",
            created_at=NOW, updated_at=NOW),
        now=NOW.timestamp(), candidates=[unproven.candidate(NOW)], pool_price=Decimal("1"))
    assert model_free.worker == "pool:inference"
    assert "no_verified_capability" in model_free.ranking["excluded"]
