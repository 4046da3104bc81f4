"""Audit draws: fixed by the secret and what the worker committed to, unpredictable without
the secret, and stated as a probability of catching a cheat of a given size."""
import random

import pytest

from chalicelib.catalog import ContentAudit
from chalicelib.verification.audit import (
    AuditSecretMissing,
    audit_key,
    audits_needed,
    caught_probability,
    chance,
    draw,
    items_to_audit,
)

HASHES = ["sha256:" + "ab" * 32, "sha256:" + "cd" * 32]
STAGE_A = "a" * 64
STAGE_B = "b" * 64


def test_the_same_commitment_and_secret_draw_the_same_positions():
    key = audit_key(STAGE_A, subject="job-1~t3#2", committed=HASHES)
    assert draw(key, "frames", 120, 5) == draw(
        audit_key(STAGE_A, subject="job-1~t3#2", committed=reversed(HASHES)), "frames", 120, 5)


def test_two_stages_audit_different_positions_of_one_result():
    a = draw(audit_key(STAGE_A, subject="job-1", committed=HASHES), "frames", 1000, 8)
    b = draw(audit_key(STAGE_B, subject="job-1", committed=HASHES), "frames", 1000, 8)
    assert a != b and len(set(a)) == len(set(b)) == 8


def test_a_worker_cannot_compute_the_draw_from_the_job_and_the_code():
    """What a worker knows (job id, attempt, its hashes, this code) does not reproduce the
    positions: guesses with any secret it could try, or none, differ."""
    real = draw(audit_key(STAGE_A, subject="job-1#1", committed=HASHES), "rows", 10_000, 10)
    guesses = [draw(audit_key(guess, subject="job-1#1", committed=HASHES), "rows", 10_000, 10)
               for guess in ("job-1" * 4, "0" * 32, "proofline-local" * 2)]
    assert all(g != real for g in guesses)
    assert real != sorted(random.Random("job-1:1").sample(range(10_000), 10))  # the old seed


def test_a_changed_output_changes_the_draw():
    key = audit_key(STAGE_A, subject="job-1", committed=HASHES)
    other = audit_key(STAGE_A, subject="job-1", committed=[HASHES[0], "sha256:" + "ef" * 32])
    assert draw(key, "frames", 10_000, 10) != draw(other, "frames", 10_000, 10)
    assert 0 <= chance(key, "audit") < 1 and chance(key, "audit") != chance(other, "audit")


def test_no_secret_no_audit():
    with pytest.raises(AuditSecretMissing):
        audit_key("", subject="job-1", committed=HASHES)


def test_draws_cover_everything_when_asked_for_more_than_there_is():
    key = audit_key(STAGE_A, subject="j", committed=HASHES)
    assert draw(key, "rows", 5, 9) == [0, 1, 2, 3, 4] and draw(key, "rows", 0, 3) == []


@pytest.mark.parametrize("population,audited,fraction,expected", [
    (20, 20, 0.05, 1.0),            # everything audited: any fake is seen
    (20, 1, 0.05, 0.05),            # one of 20, one fake: 1 in 20
    (100, 10, 0.05, 1 - (95 * 94 * 93 * 92 * 91 * 90 * 89 * 88 * 87 * 86)
     / (100 * 99 * 98 * 97 * 96 * 95 * 94 * 93 * 92 * 91)),
    (100, 0, 0.5, 0.0),
])
def test_caught_probability_is_the_hypergeometric_tail(population, audited, fraction, expected):
    assert caught_probability(population, audited, fraction) == pytest.approx(expected)


def test_audits_needed_reach_the_confidence_asked_for():
    k = audits_needed(400, 0.05, 0.999)
    assert caught_probability(400, k, 0.05) >= 0.999 > caught_probability(400, k - 1, 0.05)


def test_a_new_marketplace_worker_is_audited_on_everything():
    assert items_to_audit(100, trusted=False, verified_jobs=0, sample_rate=0.1,
                          floor=0.1) == 100


def test_history_thins_the_audit_but_never_below_the_target_or_the_floor():
    thin = items_to_audit(1000, trusted=False, verified_jobs=500, sample_rate=0.1, floor=0.1)
    assert thin == audits_needed(1000, 0.05, 0.999) > 100         # the target, over the floor
    assert caught_probability(1000, thin, 0.05) >= 0.999
    assert items_to_audit(1000, trusted=False, verified_jobs=500, sample_rate=0.1,
                          floor=0.5) == 500                          # the floor, over the target
    small = items_to_audit(100, trusted=False, verified_jobs=500, sample_rate=0.1, floor=0.01)
    assert caught_probability(100, small, 0.05) >= 0.999 and small < 100


def test_the_operators_pool_gets_its_sample_rate():
    assert items_to_audit(100, trusted=True, verified_jobs=0, sample_rate=0.1, floor=0.5) == 10


def test_a_job_larger_than_the_workers_verified_history_is_audited_in_full():
    # 500 verified jobs, but of 2 rows each: a 5,000-row job is worth more than all of them.
    assert items_to_audit(5000, trusted=False, verified_jobs=500, sample_rate=0.1, floor=0.01,
                          verified_items=1000) == 5000
    thinned = items_to_audit(500, trusted=False, verified_jobs=500, sample_rate=0.1,
                             floor=0.01, verified_items=1000)
    assert thinned < 500                                  # within its history, audits thin


def test_content_audit_depth_follows_trust_and_what_the_job_is_worth():
    depth = ContentAudit(trusted=0.05, untrusted=0.2)
    assert depth.rate(trusted=True, worth=1e9, verified=0) == 0.05     # the operator's pool
    assert depth.rate(trusted=False, worth=10.0, verified=100.0) == 0.2
    assert depth.rate(trusted=False, worth=101.0, verified=100.0) == 1.0
