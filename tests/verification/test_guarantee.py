"""A job's stated guarantee comes from what its verdicts say they audited."""
import pytest

from chalicelib.verification.audit import caught_probability
from chalicelib.verification.guarantee import stated, summarize


def segment(task, audited):
    return {"type": "segment.verified", "data": {
        "task": task, "policy": "segment_video", "measured": {"content_audited": audited}}}


def test_a_fully_audited_transcode_catches_any_faked_segment():
    events = [segment(f"720p-{i:05d}", True) for i in range(20)]
    summary = summarize(events)
    assert summary["population"] == summary["audited"] == 20
    assert summary["caught_if_faked"] == {"1%": 1.0, "5%": 1.0, "10%": 1.0}
    assert summary["statement"] == ("a worker faking ≥ 5% of the video segments is caught "
                                    "with p ≥ 1.000")


def test_a_sampled_audit_states_the_hypergeometric_bound_rounded_down():
    events = [segment(f"t{i}", i % 5 == 0) for i in range(40)]          # 8 of 40 audited
    summary = summarize(events)
    expected = caught_probability(40, 8, 0.05)
    assert summary["audited"] == 8 and summary["caught_if_faked"]["5%"] == pytest.approx(
        expected, abs=1e-6)
    assert summary["statement"].endswith(f"p ≥ {int(expected * 1000) / 1000:.3f}")


def test_embedding_rows_and_generations_are_stated_too():
    rows = summarize([{"type": "validation.passed", "data": {
        "policy": "embedding_reexecution", "measured": {"rows": 100, "rows_reexecuted": 10}}}])
    assert (rows["unit"], rows["population"], rows["audited"]) == ("rows", 100, 10)
    generated = summarize([{"type": "validation.passed", "data": {
        "policy": "generation_reexecution", "measured": {}}}])
    assert generated["caught_if_faked"]["1%"] == 1.0


def test_nothing_audited_states_nothing():
    assert summarize([{"type": "job.created", "data": {}}]) is None
    assert stated("rows", 10, 0)["caught_if_faked"]["10%"] == 0.0
