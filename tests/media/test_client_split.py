"""A source sent with the segments its client cut (`Manifest.segments`, what `proofline
transcode` sends): the planner reads only the source's header, holds every segment against
it, and the job runs as any other; a listing that does not hold together is refused at the
door, and segments that are not the source cut as listed fail the job with the reason
before any worker touches them."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import wait_for

from media_worker import segments
from proofline import clips
from proofline.client import ApiError

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    """640x480 at 25 fps with sound, a keyframe every 4 s: three segments, two rungs."""
    return clips.make_gop_clip(media_dir / "client-split.mp4", seconds=9.0, gop=100,
                               width=640, height=480, fps=25)


@pytest.fixture(scope="module")
def cut(source, tmp_path_factory) -> list[segments.SourceSegment]:
    """The source cut here as `proofline transcode` cuts it."""
    plan = segments.plan_split(segments.inspect_source(source), 4.0)
    assert plan.method == "copy"
    return segments.split_source(source, tmp_path_factory.mktemp("cut"), plan, timeout_s=60)


def listing(api, pieces, **changes) -> list[dict]:
    return [{"input_uri": (slot := api.upload(piece.path))["input_uri"],
             "input_hash": slot["input_hash"], "start_s": piece.start_s,
             "duration_s": piece.duration_s, **changes.get(piece.index, {})}
            for piece in pieces]


def submit(api, source: Path, listed: list[dict]) -> dict:
    slot = api.upload(source)
    job, _ = api.submit({"kind": "ffmpeg_hls", "input_uri": slot["input_uri"],
                         "input_hash": slot["input_hash"], "profile": "hls-abr",
                         "segments": listed}, idempotency_key=str(uuid.uuid4()))
    return job


def test_a_source_sent_with_its_segments_is_transcoded_without_being_fetched(api, source, cut):
    job = submit(api, source, listing(api, cut))
    final = wait_for(api, job["job_id"], timeout=120)
    assert final["state"] == "settled", final.get("reason")
    plan = final["plan"]
    assert plan["split"]["method"] == "client"
    assert "fetch" not in plan["split"]["seconds"] and "split" not in plan["split"]["seconds"]
    assert [s["sha256"] for s in plan["segments"]] == [piece.sha256 for piece in cut]
    assert [s["duration_s"] for s in plan["segments"]] == pytest.approx(
        [piece.duration_s for piece in cut], abs=0.041)
    assert plan["split"]["source"]["duration_s"] == pytest.approx(9.0, abs=0.1)
    assert plan["has_audio"] and len(plan["renditions"]) == 2
    verified = [e["task"] for e in api.events(job["job_id"])["events"]
                if e["type"] == "segment.verified"]
    assert len(verified) == 2 * len(cut) + 1


@pytest.mark.parametrize("lie", ["shortened", "another_rate", "one_missing"])
def test_segments_that_are_not_the_source_cut_as_listed_fail_the_job_before_any_task(
        lie, api, source, cut, media_dir, tmp_path):
    pieces = list(cut)
    if lie == "another_rate":              # the right size and length, 30 frames a second
        other = clips.make_gop_clip(media_dir / "client-split-other.mp4", seconds=9.0, gop=120,
                                    width=640, height=480, fps=30, audio=False)
        plan = segments.plan_split(segments.inspect_source(other), 4.0)
        pieces = segments.split_source(other, tmp_path / "other", plan, timeout_s=60)
        listed = listing(api, pieces)
    elif lie == "shortened":               # pay for less: every duration understated
        listed = listing(api, pieces)
        start = 0.0
        for item in listed:
            item["duration_s"] = round(item["duration_s"] * 0.8, 3)
            item["start_s"], start = round(start, 3), start + item["duration_s"]
    else:                                  # the last segment left out
        listed = listing(api, pieces[:-1])
    job = submit(api, source, listed)
    final = wait_for(api, job["job_id"], timeout=60)
    assert (final["state"], final["reason"]) == ("failed", "segments_mismatch")
    events = api.events(job["job_id"])["events"]
    assert not [e for e in events if e["type"].startswith("segment.")]     # no task ran
    [failed] = [e["data"] for e in events if e["type"] == "job.failed"]
    assert "not the source cut as listed" in failed["message"]


def test_a_listing_that_does_not_hold_together_is_refused_at_the_door(api, source, cut):
    listed = listing(api, cut)
    gap = [dict(item) for item in listed]
    gap[1]["start_s"] += 0.5
    too_long = [dict(listed[0], duration_s=9.0)]
    for bad in (gap, too_long, [listed[0], listed[0]]):
        with pytest.raises(ApiError) as refused:
            submit(api, source, bad)
        assert (refused.value.status, refused.value.reason) == (400, "invalid_segments")
    with pytest.raises(ApiError) as not_split:                 # a class that plans no segments
        api.submit({"kind": "media_probe", "input_uri": listed[0]["input_uri"],
                    "segments": listed}, idempotency_key=str(uuid.uuid4()))
    assert (not_split.value.status, not_split.value.reason) == (400, "unsupported_input")


def test_a_segment_another_client_uploaded_cannot_be_listed(api, client_api, source,
                                                            media_dir, tmp_path):
    theirs = clips.make_gop_clip(media_dir / "client-split-theirs.mp4", seconds=4.0, gop=100,
                                 width=352, height=288, fps=25, audio=False)  # bytes of theirs
    plan = segments.plan_split(segments.inspect_source(theirs), 4.0)
    [piece] = segments.split_source(theirs, tmp_path / "theirs", plan, timeout_s=60)
    slot = client_api.upload(piece.path)                       # the development client's
    with pytest.raises(ApiError) as refused:
        submit(api, source, [{"input_uri": slot["input_uri"], "start_s": 0.0,
                              "duration_s": piece.duration_s}])
    assert (refused.value.status, refused.value.reason) == (403, "input_not_yours")
