"""Reputation from observed outcomes: a neutral prior, failures that cost, timeouts that age,
runtimes by hardware, and a record that survives a round trip through JSON."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.market.reputation import (
    NEUTRAL_SCORE,
    RUNTIME_WINDOW,
    TIMEOUT_HALF_LIFE_DAYS,
    Reputation,
    record,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def fresh() -> Reputation:
    return Reputation(worker="0xabc", job_class="embed_batch")


def after(*outcomes: str, start: datetime = T0, step: timedelta = timedelta(minutes=1)) -> Reputation:
    rep = fresh()
    for n, outcome in enumerate(outcomes):
        rep = record(rep, outcome, at=start + n * step)
    return rep


def test_a_new_worker_starts_at_the_neutral_prior():
    rep = fresh()
    assert rep.score == NEUTRAL_SCORE == 0.5
    assert rep.attempts == 0
    assert rep.completion_rate is None and rep.timeout_rate is None
    assert rep.median_runtime_s() is None


def test_one_outcome_moves_the_score_without_settling_it():
    assert after("validation_failed").score == pytest.approx(0.4)
    assert after("passed").score == pytest.approx(0.6)
    assert 0 < after("timeout").score < NEUTRAL_SCORE


def test_failures_lower_the_score_and_passes_raise_it():
    good = after(*["passed"] * 20)
    mixed = after(*["passed"] * 15, *["validation_failed"] * 5)
    assert good.score > mixed.score > after(*["validation_failed"] * 20).score
    assert 0.0 < after(*["validation_failed"] * 50).score < 0.05
    assert 0.95 < after(*["passed"] * 50).score < 1.0


def test_a_dispute_costs_more_than_a_caught_failure():
    assert after("passed", "disputed").score < after("passed", "validation_failed").score


def test_rates_come_from_the_counts():
    rep = after("passed", "passed", "validation_failed", "timeout", "lost", "disputed")
    assert (rep.completions, rep.validation_failures, rep.timeouts, rep.lost,
            rep.disputes) == (2, 1, 1, 1, 1)
    assert rep.completion_rate == pytest.approx(2 / 6)
    assert rep.timeout_rate == pytest.approx(2 / 6)
    assert rep.verification_failure_rate == pytest.approx(2 / 4)
    assert rep.availability == pytest.approx(5 / 6)
    assert rep.first_seen == T0 and rep.last_seen == T0 + timedelta(minutes=5)


def test_a_timeout_halves_its_weight_every_half_life():
    rep = record(fresh(), "timeout", at=T0)
    half_life = timedelta(days=TIMEOUT_HALF_LIFE_DAYS)
    assert rep.recent_timeouts(T0) == pytest.approx(1.0)
    assert rep.recent_timeouts(T0 + half_life) == pytest.approx(0.5)
    assert rep.recent_timeouts(T0 + 3 * half_life) == pytest.approx(0.125)
    assert rep.score_at(T0 + 10 * half_life) == pytest.approx(NEUTRAL_SCORE, abs=1e-3)


def test_recent_timeouts_weigh_more_than_old_ones():
    passes = ["passed"] * 10
    old = record(after(*passes), "timeout", at=T0 - timedelta(days=60))
    recent = record(after(*passes), "timeout", at=T0 + timedelta(hours=1))
    now = T0 + timedelta(hours=2)
    assert old.timeouts == recent.timeouts == 1
    assert old.score_at(now) > recent.score_at(now)
    assert old.recent_timeouts(now) < 0.01 < 0.99 < recent.recent_timeouts(now)


def test_outcomes_out_of_order_decay_by_their_own_time():
    a = record(record(fresh(), "timeout", at=T0), "lost", at=T0 + timedelta(days=7))
    b = record(record(fresh(), "lost", at=T0 + timedelta(days=7)), "timeout", at=T0)
    now = T0 + timedelta(days=14)
    assert a.recent_timeouts(now) == pytest.approx(b.recent_timeouts(now)) \
        == pytest.approx(0.25 + 0.5)


def test_median_runtime_per_hardware_class():
    rep = fresh()
    for runtime, hardware in [(10, "t4"), (12, "t4"), (40, "t4"), (3, "h100"), (5, "h100")]:
        rep = record(rep, "passed", at=T0, runtime_s=runtime, hardware=hardware)
    rep = record(rep, "validation_failed", at=T0, runtime_s=0.1, hardware="t4")
    assert rep.median_runtime_s("t4") == 12
    assert rep.median_runtime_s("h100") == 4
    assert rep.median_runtime_s("a100") is None
    assert rep.median_runtime_s() == 10


def test_the_runtime_window_is_bounded():
    rep = fresh()
    for n in range(RUNTIME_WINDOW + 30):
        rep = record(rep, "passed", at=T0, runtime_s=1000 if n < 30 else 1, hardware="t4")
    assert len(rep.runtimes_s["t4"]) == RUNTIME_WINDOW
    assert rep.median_runtime_s("t4") == 1


def test_round_trip_through_json():
    rep = fresh()
    for n, outcome in enumerate(["passed", "timeout", "passed", "lost", "disputed"]):
        rep = record(rep, outcome, at=T0 + timedelta(hours=n), runtime_s=2.5 + n,
                     hardware="h100" if n % 2 else "t4")
    back = Reputation.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back == rep
    assert back.score == rep.score
    assert Reputation.from_dict(fresh().to_dict()) == fresh()


def test_record_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="unknown outcome"):
        record(fresh(), "claimed_fast", at=T0)
    with pytest.raises(ValueError, match="timezone"):
        record(fresh(), "passed", at=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="runtime_s"):
        record(fresh(), "passed", at=T0, runtime_s=-1)


def test_verified_units_add_up_from_passes_only_and_survive_storage():
    rep = record(fresh(), "passed", at=T0, units=12.5)
    rep = record(rep, "validation_failed", at=T0, units=99.0)     # a failure adds nothing
    rep = record(rep, "passed", at=T0, units=7.5)
    assert rep.verified_units == 20.0
    assert Reputation.from_dict(json.loads(json.dumps(rep.to_dict()))).verified_units == 20.0
    with pytest.raises(ValueError):
        record(rep, "passed", at=T0, units=float("nan"))
