"""The router's rules, each shown able to decide: gates that exclude with a reason, factors
that reorder, redundancy, the fallback pool, private jobs, and replayable tie-breaking."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from chalicelib import catalog
from chalicelib.market.reputation import Reputation, record
from chalicelib.market.router import (
    BELOW_REPUTATION,
    NO_FREE_GPU,
    NO_PRICE,
    NO_VERIFIED_CAPABILITY,
    NOT_ENOUGH_MEMORY,
    OVER_PRICE,
    STALE_HEARTBEAT,
    UNTRUSTED_FOR_PRIVATE,
    Candidate,
    JobRequirements,
    RoutingPolicy,
    Standing,
    Weights,
    capability,
    rank,
)
from chalicelib.models import Manifest

NOW = 1_750_000_000.0
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBED = JobRequirements(job_class="embed_batch", model=MODEL, units=Decimal(100),
                        input_region="eu-west-1", input_bytes=10**6)
CAN_EMBED = frozenset({capability("class", "embed_batch"), capability("model", MODEL)})
POLICY = RoutingPolicy(heartbeat_ttl_s=60)


def worker(name: str, *, price: Decimal = Decimal("0.001"), **changes) -> Candidate:
    """A capable, fresh, local, warm worker with a middling record; tests change one thing."""
    fields = dict(worker=name, region="eu-west-1",
                  price_per_unit={"embed_batch": price, "ffmpeg_hls": price},
                  last_heartbeat=NOW - 5, verified=CAN_EMBED, claimed=CAN_EMBED,
                  standing={"embed_batch": Standing(score=0.8)}, warm_models=frozenset({MODEL}),
                  gpus_free=1, gpu_memory_free_mb=24_000, memory_free_mb=32_000)
    return Candidate(**{**fields, **changes})


def pool(name: str = "pool:inference", **changes) -> Candidate:
    return worker(name, trusted=True, **changes)


# -- gates ----------------------------------------------------------------------------------
def test_claimed_capability_without_verification_is_excluded():
    claims = worker("0xclaims", verified=frozenset(), price=Decimal("0.0001"))
    ranking = rank(EMBED, [claims, worker("0xproven")], POLICY, now=NOW)
    assert ranking.chosen == ["0xproven"]
    assert ranking.excluded == {"0xclaims": NO_VERIFIED_CAPABILITY}


def test_the_model_must_be_verified_too_not_just_the_class():
    class_only = worker("0xclassonly", verified=frozenset({capability("class", "embed_batch")}))
    assert rank(EMBED, [class_only], POLICY, now=NOW).excluded == {
        "0xclassonly": NO_VERIFIED_CAPABILITY}


def test_runtime_and_codecs_are_required_where_the_job_names_them():
    job = JobRequirements(job_class="ffmpeg_hls", runtime="ffmpeg", codecs=("libx264",))
    base = {capability("class", "ffmpeg_hls"), capability("runtime", "ffmpeg")}
    full = worker("0xfull", verified=frozenset(base | {capability("codec", "libx264")}))
    no_codec = worker("0xnocodec", verified=frozenset(base))
    ranking = rank(job, [no_codec, full], POLICY, now=NOW)
    assert ranking.chosen == ["0xfull"]
    assert ranking.excluded == {"0xnocodec": NO_VERIFIED_CAPABILITY}


def test_a_stale_heartbeat_excludes():
    ranking = rank(EMBED, [worker("0xgone", last_heartbeat=NOW - 61),
                           worker("0xhere", last_heartbeat=NOW - 59)], POLICY, now=NOW)
    assert ranking.chosen == ["0xhere"]
    assert ranking.excluded == {"0xgone": STALE_HEARTBEAT}


def test_gpu_jobs_need_a_free_gpu_with_enough_memory():
    job = replace(EMBED, requires_gpu=True, gpu_memory_mb=16_000, memory_mb=8_000)
    ranking = rank(job, [worker("0xbusy", gpus_free=0), worker("0xsmall", gpu_memory_free_mb=8_000),
                         worker("0xnoram", memory_free_mb=4_000), worker("0xfits")],
                   POLICY, now=NOW)
    assert ranking.chosen == ["0xfits"]
    assert ranking.excluded == {"0xbusy": NO_FREE_GPU, "0xsmall": NO_FREE_GPU,
                                "0xnoram": NOT_ENOUGH_MEMORY}
    assert rank(EMBED, [worker("0xbusy", gpus_free=0)], POLICY, now=NOW).chosen == ["0xbusy"]


def test_reputation_below_the_threshold_excludes_but_a_newcomer_gets_the_prior():
    poor = worker("0xpoor", standing={"embed_batch": Standing(score=0.39)},
                  price=Decimal("0.0001"))
    newcomer = worker("0xnew", standing={})
    ranking = rank(EMBED, [poor, newcomer], replace(POLICY, min_reputation=0.4), now=NOW)
    assert ranking.chosen == ["0xnew"]
    assert ranking.excluded == {"0xpoor": BELOW_REPUTATION}
    assert ranking.ranked[0].factors["reputation"] == 0.5


def test_a_class_the_worker_has_not_priced_is_not_offered():
    unpriced = worker("0xunpriced", price_per_unit={"media_probe": Decimal("0.001")})
    assert rank(EMBED, [unpriced], POLICY, now=NOW).excluded == {"0xunpriced": NO_PRICE}


def test_reputation_is_read_for_the_job_class_at_hand():
    mixed = worker("0xmixed", standing={"embed_batch": Standing(score=0.1),
                                        "media_probe": Standing(score=0.95)})
    assert rank(EMBED, [mixed], POLICY, now=NOW).excluded == {"0xmixed": BELOW_REPUTATION}


def test_over_the_ceiling_excludes_and_transfer_counts_toward_it():
    job = replace(EMBED, max_price=Decimal("0.15"), input_bytes=2 * 10**9)
    pricey = worker("0xpricey", price=Decimal("0.002"))          # 0.20
    remote = worker("0xremote", region="us-east-1")                       # 0.10 + 0.04
    far = worker("0xfar", region="ap-south-1")                            # 0.10 + 0.06
    policy = replace(POLICY, transfer_per_gb={("eu-west-1", "ap-south-1"): Decimal("0.03")})
    ranking = rank(job, [pricey, remote, far], policy, now=NOW)
    assert ranking.chosen == ["0xremote"]
    assert ranking.ranked[0].expected_price == Decimal("0.14")
    assert ranking.excluded == {"0xpricey": OVER_PRICE, "0xfar": OVER_PRICE}


# -- factors --------------------------------------------------------------------------------
def test_locality_is_preferred_all_else_equal():
    ranking = rank(replace(EMBED, input_bytes=0),
                   [worker("0xaway", region="us-east-1"), worker("0xnear")], POLICY, now=NOW)
    assert ranking.chosen == ["0xnear"]
    assert ranking.ranked[1].factors["locality"] == 0.0


def test_transfer_cost_can_flip_the_choice():
    cheap_remote = worker("0xcheapremote", region="us-east-1", price=Decimal("0.0005"))
    local = worker("0xlocal")
    small = rank(replace(EMBED, input_bytes=10**6), [cheap_remote, local], POLICY, now=NOW)
    large = rank(replace(EMBED, input_bytes=10 * 10**9), [cheap_remote, local], POLICY, now=NOW)
    assert small.chosen == ["0xcheapremote"]
    assert large.chosen == ["0xlocal"]
    assert {r.worker: r.expected_price for r in large.ranked} == {
        "0xlocal": Decimal("0.1"), "0xcheapremote": Decimal("0.25")}


def test_recent_timeouts_are_penalised():
    flaky = worker("0xflaky", standing={"embed_batch": Standing(score=0.8, recent_timeouts=2.0)})
    ranking = rank(EMBED, [flaky, worker("0xsteady")], POLICY, now=NOW)
    assert ranking.chosen == ["0xsteady"]
    assert ranking.ranked[1].factors["timeouts"] == pytest.approx(1 / 3)


def test_standing_comes_from_the_reputation_record():
    at = datetime.fromtimestamp(NOW, timezone.utc)
    rep = Reputation(worker="0xrec", job_class="embed_batch")
    for n in range(8):
        rep = record(rep, "passed", at=at - timedelta(days=1, minutes=n))
    timed_out = record(rep, "timeout", at=at - timedelta(minutes=5))
    steady, flaky = Standing.of(rep, at), Standing.of(timed_out, at)
    assert flaky.score < steady.score and flaky.recent_timeouts > 0.99
    ranking = rank(EMBED, [worker("0xa", standing={"embed_batch": flaky}),
                           worker("0xb", standing={"embed_batch": steady})], POLICY, now=at)
    assert ranking.chosen == ["0xb"]


def test_warm_workers_are_preferred():
    ranking = rank(EMBED, [worker("0xcold", warm_models=frozenset()), worker("0xwarm")],
                   POLICY, now=NOW)
    assert ranking.chosen == ["0xwarm"]
    assert ranking.ranked[1].factors["warm"] == 0.0


def test_a_fresher_heartbeat_wins_all_else_equal():
    ranking = rank(EMBED, [worker("0xolder", last_heartbeat=NOW - 40),
                           worker("0xnewer", last_heartbeat=NOW - 2)], POLICY, now=NOW)
    assert ranking.chosen == ["0xnewer"]


def test_ties_go_to_the_smaller_worker_id_whatever_the_input_order():
    tied = [worker(f"0x{c}") for c in "dbca"]
    assert rank(EMBED, tied, POLICY, now=NOW).chosen == ["0xa"]
    assert rank(EMBED, tied[::-1], POLICY, now=NOW).chosen == ["0xa"]
    assert [r.worker for r in rank(EMBED, tied, POLICY, now=NOW).ranked] == [
        "0xa", "0xb", "0xc", "0xd"]


def test_scores_and_factors_stay_in_the_unit_interval():
    ranking = rank(EMBED, [worker("0xa"), worker("0xb", region="us-east-1",
                                                 price=Decimal("0.01"))],
                   POLICY, now=NOW)
    for entry in ranking.ranked:
        assert 0.0 <= entry.score <= 1.0
        assert all(0.0 <= v <= 1.0 for v in entry.factors.values())
    assert ranking.ranked[0].score == pytest.approx(1.0, abs=0.06)


# -- choosing -------------------------------------------------------------------------------
def test_redundancy_picks_k_distinct_best_workers():
    workers = [worker(f"0x{n}", price=Decimal(n).scaleb(-4)) for n in range(1, 7)]
    ranking = rank(EMBED, workers, replace(POLICY, redundancy=3), now=NOW)
    assert ranking.chosen == ["0x1", "0x2", "0x3"]
    assert ranking.reason.endswith("for redundancy 3: 0x1, 0x2, 0x3.")


def test_too_few_for_redundancy_and_the_pool_fills_in():
    policy = replace(POLICY, redundancy=3, fallback="pool:inference")
    ranking = rank(EMBED, [worker("0x1"), worker("0x2", verified=frozenset())], policy, now=NOW)
    assert ranking.chosen == ["0x1", "pool:inference"]
    assert "fills in" in ranking.reason


def test_the_pool_competes_like_any_other_candidate():
    ranking = rank(EMBED, [worker("0xdear", price=Decimal("0.01")),
                           pool(standing={"embed_batch": Standing(score=1.0)})],
                   POLICY, now=NOW)
    assert ranking.chosen == ["pool:inference"]
    assert not ranking.fallback


def test_fallback_to_the_pool_when_nobody_qualifies():
    policy = replace(POLICY, fallback="pool:inference")
    nobody = [worker("0xstale", last_heartbeat=NOW - 600), worker("0xclaims", verified=frozenset())]
    ranking = rank(EMBED, nobody, policy, now=NOW)
    assert ranking.chosen == ["pool:inference"]
    assert ranking.fallback and ranking.ranked == []
    assert "falling back to pool:inference" in ranking.reason
    assert "1 stale_heartbeat" in ranking.reason
    without = rank(EMBED, nobody, POLICY, now=NOW)
    assert without.chosen == [] and "no fallback" in without.reason


def test_a_private_job_never_goes_to_an_untrusted_worker_even_the_best():
    job = replace(EMBED, private=True)
    best = worker("0xbest", standing={"embed_batch": Standing(score=0.99)},
                  price=Decimal("0.00001"))
    trusted = pool(price=Decimal("0.01"), warm_models=frozenset(), region="us-east-1")
    assert rank(replace(job, private=False), [best, trusted], POLICY, now=NOW).chosen == ["0xbest"]
    ranking = rank(job, [best, trusted], POLICY, now=NOW)
    assert ranking.chosen == ["pool:inference"]
    assert ranking.excluded == {"0xbest": UNTRUSTED_FOR_PRIVATE}
    assert rank(job, [best], replace(POLICY, fallback="pool:inference"),
                now=NOW).chosen == ["pool:inference"]
    cleared = rank(job, [best, trusted], replace(POLICY, allow_list=frozenset({"0xbest"})),
                   now=NOW)
    assert cleared.chosen == ["0xbest"]


# -- inputs and outputs ---------------------------------------------------------------------
def test_requirements_from_the_catalog_and_manifest():
    job_class = catalog.default().job_class("embed_batch")
    manifest = Manifest(kind="embed_batch", texts=["a"], data_sensitivity="private",
                        max_price=Decimal("0.5"))
    job = JobRequirements.of(job_class, manifest, units=Decimal(1), input_region="eu-west-1")
    assert (job.job_class, job.model, job.private, job.max_price, job.requires_gpu) == (
        "embed_batch", MODEL, True, Decimal("0.5"), False)
    assert job.needs == CAN_EMBED


def test_now_may_be_a_datetime():
    at = datetime.fromtimestamp(NOW, timezone.utc)
    assert rank(EMBED, [worker("0xa")], POLICY, now=at).chosen == ["0xa"]


def test_the_event_is_json_and_compact():
    workers = [worker(f"0x{n:04d}", price=Decimal(n + 1).scaleb(-5)) for n in range(50)]
    workers += [worker(f"0xstale{n}", last_heartbeat=0.0) for n in range(10)]
    workers += [worker(f"0xclaim{n}", verified=frozenset()) for n in range(2)]
    ranking = rank(EMBED, workers, replace(POLICY, top_n=5), now=NOW)
    event = json.loads(json.dumps(ranking.as_event()))
    assert event["worker"] == event["chosen"][0] == "0x0000"
    assert event["eligible"] == 50 and len(event["ranked"]) == 5
    assert set(event["ranked"][0]["factors"]) == {"capability", "health", "reputation",
                                                  "locality", "price", "timeouts", "warm"}
    assert event["ranked"][0]["price"] == "0.00100"
    assert event["excluded"] == {
        NO_VERIFIED_CAPABILITY: {"count": 2, "first": ["0xclaim0", "0xclaim1"]},
        STALE_HEARTBEAT: {"count": 10, "first": ["0xstale0", "0xstale1", "0xstale2"]}}
    assert event["reason"].startswith("0x0000 ranked first of 50 eligible (12 excluded)")


def test_policy_and_weights_refuse_nonsense():
    with pytest.raises(ValueError):
        RoutingPolicy(redundancy=0)
    with pytest.raises(ValueError):
        Weights(reputation=0.9)
