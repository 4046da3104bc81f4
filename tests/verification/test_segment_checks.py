"""Segment verification rules without media: each check fails when its value is off."""
import pytest

from chalicelib.verification.segments import SSIM_THRESHOLD, audio_track, video_segment

PLANNED = {"name": "720p", "width": 1280, "height": 720, "h264_profile": "main"}
GOOD = {"format_name": "mpegts", "codec": "h264", "profile": "Main", "width": 1280,
        "height": 720, "duration_s": 4.0, "frame_count": 100, "keyframe_interval_s": 4.0,
        "start_pts_s": 8.0, "starts_with_keyframe": True}


def judge(measure=None, *, ssim=0.97, actual="sha256:" + "a" * 64, source_duration_s=4.0):
    return video_segment(planned=PLANNED, reported_sha256="sha256:" + "a" * 64,
                         actual_sha256=actual, measure={**GOOD, **(measure or {})},
                         source_duration_s=source_duration_s, start_s=8.0, segment_s=4.0,
                         fps=25.0, ssim_min=ssim)


def test_a_faithful_segment_passes_with_every_value_measured():
    verdict = judge()
    assert verdict.passed and verdict.reason is None
    assert verdict.measured["ssim_min"] == 0.97 and verdict.measured["frame_count"] == 100


@pytest.mark.parametrize("change, check", [
    ({"format_name": "mov,mp4,m4a,3gp,3g2,mj2"}, "container"),
    ({"codec": "hevc"}, "codec"),
    ({"profile": "High"}, "h264_profile"),
    ({"width": 1278}, "resolution"),
    ({"duration_s": 3.9}, "duration"),
    ({"starts_with_keyframe": False}, "starts_on_keyframe"),
    ({"keyframe_interval_s": 6.0}, "keyframe_interval"),
    ({"start_pts_s": 9.4}, "timestamps_continue"),
])
def test_each_measured_value_off_fails_its_own_check(change, check):
    verdict = judge(change)
    assert not verdict.passed and verdict.reason == f"check_failed:{check}"
    assert [name for name, ok in verdict.checks.items() if not ok] == [check]


def test_a_valid_encode_of_other_pictures_fails_the_content_check():
    assert judge(ssim=SSIM_THRESHOLD - 0.01).reason == "check_failed:content_matches_source"
    assert judge(ssim=None).reason == "check_failed:content_matches_source"   # not comparable


def test_bytes_other_than_reported_fail_first():
    assert judge(actual="sha256:" + "b" * 64).reason == "check_failed:sha256_matches"


def test_the_audio_track_must_be_aac_as_long_as_the_source_and_as_reported():
    files = {"audio/audio.m3u8": "sha256:" + "1" * 64}
    ok = audio_track(reported=files, actual=files, duration_s=6.02, source_duration_s=6.0,
                     has_audio=True, codec="aac")
    assert ok.passed
    short = audio_track(reported=files, actual=files, duration_s=5.0, source_duration_s=6.0,
                        has_audio=True, codec="aac")
    assert short.reason == "check_failed:duration"
    swapped = audio_track(reported=files, actual={"audio/audio.m3u8": "sha256:" + "2" * 64},
                          duration_s=6.0, source_duration_s=6.0, has_audio=True, codec="aac")
    assert swapped.reason == "check_failed:sha256_matches"
