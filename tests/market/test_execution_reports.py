"""What a worker reports beside its result is shown, never trusted: strict, finite, bounded."""
import pytest

from chalicelib.market.registry import ModelExecution, SegmentExecution, execution_report


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
