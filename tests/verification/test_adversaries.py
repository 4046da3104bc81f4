"""Adversaries through the real lease API (`bench.adversary`): each passes its challenge
honestly, wins a client's job on price, hands in its cheat signed like honest work, and is
caught; the client receives none of its bytes, the job is finished by someone else, and the
adversary's reputation records the failure.

One adversary per way of being caught: content (another video), bitrate, picture quality
(scaled down and up), frame count, a perturbed subset of embedding rows, a truncated
generation. `python -m bench verify` runs every cheat of the catalogue this way, three jobs
each (`bench/verify_e2e.py`).
"""
from __future__ import annotations

import pytest

from bench import adversary

pytestmark = pytest.mark.stack
CHEATS = ["another_video", "tenth_bitrate", "downscaled_and_up", "5pct_frames_dropped",
          "embed_5pct_rows_perturbed_new_worker", "generate_truncated"]


@pytest.fixture(scope="module")
def outcomes(stack, api):
    lines: list[str] = []
    results = adversary.campaign(api, stack.info.chain_id, CHEATS, log=lines.append)
    return {o.cheat: o for o in results}, lines


@pytest.mark.parametrize("cheat", CHEATS)
def test_each_cheat_is_caught_unpaid_and_the_job_finished_elsewhere(outcomes, cheat):
    by_cheat, lines = outcomes
    outcome = by_cheat[cheat]
    assert outcome.handed_in >= 1, lines            # it did get the work, and cheated
    assert outcome.caught == outcome.handed_in, lines
    assert not outcome.delivered, lines
    assert outcome.state == "settled", lines
    assert outcome.finished_by and outcome.adversary not in outcome.finished_by, lines
    assert outcome.failures_recorded >= outcome.caught, lines


def test_every_cheat_in_the_test_is_one_the_catalogue_runs_end_to_end():
    assert set(CHEATS) <= set(adversary.LEASE_PATH_CHEATS)
