"""The probe_report verification policy: verdicts from evidence, never from worker claims."""
from __future__ import annotations

import json

import pytest

from chalicelib.media.probe import ProbeReport, StreamInfo, sha256_bytes
from chalicelib.models import AttemptResult, Output
from chalicelib.verification.policies import POLICIES, Evidence, Verdict, probe_report

INPUT_SIZE = 1_048_576


def report_bytes(**changes) -> bytes:
    video = StreamInfo(index=0, type="video", codec="h264", profile="High", width=320,
                       height=240, frame_rate=25.0, pix_fmt="yuv420p", duration_s=2.0, frames=50)
    fields = dict(format_name="mov,mp4,m4a,3gp,3g2,mj2", duration_s=2.0, size_bytes=INPUT_SIZE,
                  bit_rate=400_000, streams=[video], video=video, has_audio=False)
    return ProbeReport(**{**fields, **changes}).model_dump_json().encode()


def result_for(data: bytes, *, sha: str | None = None, size: int | None = None) -> AttemptResult:
    return AttemptResult(
        job_id="job-test1", attempt=1, worker="pool:media", duration_ms=1234,
        output=Output(name="probe.json", uri="s3://bucket-a/attempts/job-test1/1/probe.json",
                      sha256=sha or sha256_bytes(data),
                      size_bytes=len(data) if size is None else size))


def test_registered_under_its_catalog_name():
    assert POLICIES["probe_report"] is probe_report


def test_genuine_report_passes():
    data = report_bytes()
    verdict = probe_report(result_for(data), Evidence(output=data, input_size_bytes=INPUT_SIZE))
    assert verdict.policy == "probe_report"
    assert verdict.checks == {"sha256_matches": True, "size_matches": True,
                              "schema_valid": True, "describes_input": True}
    assert verdict.passed and verdict.reason is None
    m = verdict.measured
    assert m["sha256"] == sha256_bytes(data) and m["size_bytes"] == len(data)
    assert m["duration_s"] == 2.0 and m["streams"] == 1
    assert m["format_name"] == "mov,mp4,m4a,3gp,3g2,mj2"
    assert m["reported_input_bytes"] == m["input_size_bytes"] == INPUT_SIZE


def test_without_input_size_the_input_is_not_checked():
    data = report_bytes()
    verdict = probe_report(result_for(data), Evidence(output=data))
    assert "describes_input" not in verdict.checks and verdict.passed


def test_tampered_bytes_fail_sha256():
    data = report_bytes()
    tampered = report_bytes(duration_s=3.0)
    assert len(tampered) == len(data)
    verdict = probe_report(result_for(data), Evidence(output=tampered, input_size_bytes=INPUT_SIZE))
    assert verdict.checks["sha256_matches"] is False
    assert verdict.checks["size_matches"] is True
    assert not verdict.passed
    assert verdict.reason == "check_failed:sha256_matches"
    assert verdict.measured["sha256"] == sha256_bytes(tampered)


def test_wrong_claimed_size():
    data = report_bytes()
    verdict = probe_report(result_for(data, size=len(data) + 1), Evidence(output=data))
    assert verdict.checks == {"sha256_matches": True, "size_matches": False, "schema_valid": True}
    assert verdict.reason == "check_failed:size_matches"


@pytest.mark.parametrize("data,field", [
    (b'{"format_name": "mp4"}', "duration_s"),
    (b"not json at all", None),
    (report_bytes()[:-1], None),                                         # truncated upload
    (report_bytes().replace(b'"has_audio":false', b'"has_audio":false,"x":1'), "x"),
    (json.dumps({**json.loads(report_bytes()), "streams": []}).encode(), "streams"),
])
def test_invalid_report_fails_schema(data, field):
    verdict = probe_report(result_for(data), Evidence(output=data, input_size_bytes=INPUT_SIZE))
    assert verdict.checks["sha256_matches"] and verdict.checks["size_matches"]
    assert verdict.checks["schema_valid"] is False
    assert "describes_input" not in verdict.checks
    assert verdict.reason == "check_failed:schema_valid"
    errors = verdict.measured["schema_errors"]
    assert errors and all(isinstance(e, str) for e in errors)
    if field:
        assert any(e.startswith(field) for e in errors)


def test_report_of_another_input():
    data = report_bytes(size_bytes=INPUT_SIZE + 1)
    verdict = probe_report(result_for(data), Evidence(output=data, input_size_bytes=INPUT_SIZE))
    assert verdict.checks["describes_input"] is False
    assert verdict.reason == "check_failed:describes_input"
    assert verdict.measured["reported_input_bytes"] == INPUT_SIZE + 1


@pytest.mark.parametrize("data", [report_bytes(), b'{"format_name": "mp4"}'])
def test_as_event_is_json(data):
    verdict = probe_report(result_for(data), Evidence(output=data, input_size_bytes=INPUT_SIZE))
    event = json.loads(json.dumps(verdict.as_event(), allow_nan=False))
    assert event["policy"] == "probe_report"
    assert event["passed"] == verdict.passed
    assert event["checks"] == verdict.checks
    assert event["reason"] == verdict.reason


def test_verdict_reason_names_the_first_failed_check():
    v = Verdict("p", {"a": True, "b": False, "c": False})
    assert not v.passed and v.reason == "check_failed:b"
    assert Verdict("p", {}).passed


# Non-finite floats are refused (pydantic allows inf by default, and gt=0 holds
# for inf), so an untrusted worker's report claiming "duration_s": Infinity (or 1e400) is
# schema_valid and the verdict passes; the verdict's measured duration_s is then inf, which
# is not JSON (json.dumps(..., allow_nan=False) raises; plain json.dumps writes `Infinity`).
@pytest.mark.parametrize("value", [b"Infinity", b"1e400"])
def test_infinite_duration_is_not_a_valid_report(value):
    data = report_bytes().replace(b'"duration_s":2.0,"size_bytes"',
                                  b'"duration_s":' + value + b',"size_bytes"')
    assert data != report_bytes()
    verdict = probe_report(result_for(data), Evidence(output=data, input_size_bytes=INPUT_SIZE))
    assert verdict.checks["schema_valid"] is False
    assert not verdict.passed
