"""What a worker sends (claims, health, execution reports) is shown, never trusted: strict,
finite, bounded."""
import pytest

from chalicelib.market.registry import (
    Claims,
    Health,
    ModelExecution,
    SegmentExecution,
    execution_report,
)


def test_an_honest_agents_reports_pass_as_they_are():
    assert execution_report(SegmentExecution, {"exit_code": 0, "wall_s": 1.25,
                                               "stderr_tail": "done"}) == {
        "exit_code": 0, "wall_s": 1.25, "stderr_tail": "done"}
    assert execution_report(ModelExecution, {"model": "m", "model_s": 0.5,
                                             "cold_start_s": None, "warm": True, "count": 3,
                                             "dim": 384}) == {
        "model": "m", "model_s": 0.5, "warm": True, "count": 3, "dim": 384}
    assert execution_report(SegmentExecution, None) == {}


@pytest.mark.parametrize("model, value", [
    (SegmentExecution, {"wall_s": "not-a-number"}),
    (SegmentExecution, {"wall_s": float("nan")}),
    (SegmentExecution, {"wall_s": -1}),
    (SegmentExecution, {"exit_code": 10**9}),
    (SegmentExecution, {"stderr_tail": "x" * 5000}),
    (SegmentExecution, {"wall_s": 1, "free_text": "anything"}),
    (ModelExecution, {"model_s": float("inf")}),
    (ModelExecution, {"tokens": -5}),
    (ModelExecution, {"model": ["a list"]}),
    (SegmentExecution, ["not", "an", "object"]),
])
def test_a_poisoned_report_is_refused(model, value):
    with pytest.raises(ValueError):
        execution_report(model, value)


@pytest.mark.parametrize("claims", [
    {"job_classes": ["ffmpeg_hls"] * 33},
    {"models_cached": ["m"] * 33},
    {"codecs": ["h264"] * 1000},
    {"runtimes": {f"r{i}": "x" for i in range(33)}},
    {"price_per_unit": {f"c{i}": "1" for i in range(33)}},
    {"price_per_unit": {"ffmpeg_hls": "NaN"}},
])
def test_claims_are_bounded(claims):
    base = {"job_classes": ["ffmpeg_hls"], "region": "us-east-1",
            "price_per_unit": {"ffmpeg_hls": "0.001"}}
    Claims.model_validate(base)
    with pytest.raises(ValueError):
        Claims.model_validate({**base, **claims})


@pytest.mark.parametrize("health", [
    {"versions": {f"v{i}": "1" for i in range(17)}},
    {"models_loaded": ["m"] * 33},
    {"cpu_free": float("nan")},
    {"memory_free_gb": float("inf")},
])
def test_health_is_bounded(health):
    with pytest.raises(ValueError):
        Health.model_validate(health)
