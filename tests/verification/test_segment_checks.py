"""Segment verification rules without media: each check fails when its value is off."""
import numpy as np
import pytest

from chalicelib.verification.segments import (
    AUDIO_BAND_DISTANCE_MAX,
    BITRATE_MAX_RATIO,
    BITRATE_MIN_RATIO,
    DETAIL_MIN,
    FRAME_DISTANCE_MAX,
    SSIM_MIN,
    TEMPORAL_MIN,
    audio_track,
    audio_windows,
    frame_distances,
    off_frames,
    video_segment,
)

FAITHFUL = [(1.0, 3.0)] * 100             # every frame near its own source frame

PLANNED = {"name": "720p", "width": 1280, "height": 720, "h264_profile": "main",
           "video_bitrate_k": 2800}
GOOD = {"format_name": "mpegts", "codec": "h264", "profile": "Main", "width": 1280,
        "height": 720, "duration_s": 4.0, "frame_count": 100, "keyframe_interval_s": 4.0,
        "start_pts_s": 8.0, "starts_with_keyframe": True}
ON_TARGET = 2800 * 1000 // 8 * 4            # bytes of 4 s at the target bitrate


def judge(measure=None, *, ssim=None, distances=None, actual="sha256:" + "a" * 64,
          size=ON_TARGET, source_duration_s=4.0):
    return video_segment(planned=PLANNED, reported_sha256="sha256:" + "a" * 64,
                         actual_sha256=actual, measure={**GOOD, **(measure or {})},
                         size_bytes=size, source_duration_s=source_duration_s, start_s=8.0,
                         segment_s=4.0, fps=25.0, distances=distances, ssim=ssim)


def test_a_faithful_segment_passes_with_every_value_measured():
    verdict = judge(ssim={3: (0.97, 0.9), 50: (0.95, 1.1)}, distances=FAITHFUL)
    assert verdict.passed and verdict.reason is None
    assert verdict.measured["ssim_min"] == 0.95 and verdict.measured["frame_count"] == 100
    assert verdict.measured["content_audited"] and verdict.measured["frames_compared"] == 100


def test_a_segment_outside_the_audit_is_checked_for_structure_only():
    verdict = judge()
    assert verdict.passed and verdict.measured["content_audited"] is False
    assert "every_frame_matches_source" not in verdict.checks


@pytest.mark.parametrize("change, check", [
    ({"format_name": "mov,mp4,m4a,3gp,3g2,mj2"}, "container"),
    ({"codec": "hevc"}, "codec"),
    ({"profile": "High"}, "h264_profile"),
    ({"width": 1278}, "resolution"),
    ({"starts_with_keyframe": False}, "starts_on_keyframe"),
    ({"keyframe_interval_s": 6.0}, "keyframe_interval"),
    ({"start_pts_s": 9.4}, "timestamps_continue"),
    ({"frame_count": 99}, "frame_count"),
])
def test_each_measured_value_off_fails_its_own_check(change, check):
    verdict = judge(change)
    assert not verdict.passed and verdict.reason == f"check_failed:{check}"
    assert [name for name, ok in verdict.checks.items() if not ok] == [check]


def test_a_short_segment_fails_duration_and_frame_count():
    failed = [n for n, ok in judge({"duration_s": 3.5, "frame_count": 88}).checks.items()
              if not ok]
    assert failed == ["duration", "frame_count"]


@pytest.mark.parametrize("ratio, ok", [(BITRATE_MIN_RATIO - 0.01, False), (0.1, False),
                                       (BITRATE_MIN_RATIO + 0.01, True), (1.0, True),
                                       (BITRATE_MAX_RATIO - 0.01, True),
                                       (BITRATE_MAX_RATIO + 0.05, False)])
def test_the_bitrate_stays_within_the_renditions_bounds(ratio, ok):
    verdict = judge(size=int(ON_TARGET * ratio))
    assert verdict.checks["bitrate"] is ok


def test_one_frame_off_its_source_fails_the_every_frame_check():
    distances = list(FAITHFUL)
    distances[57] = (FRAME_DISTANCE_MAX + 0.5, FRAME_DISTANCE_MAX + 9)
    verdict = judge(distances=distances)
    assert verdict.reason == "check_failed:every_frame_matches_source"
    assert verdict.measured["frames_off"] == [57]
    assert judge(distances=FAITHFUL[:99]).checks["every_frame_matches_source"] is False


def test_a_frame_nearer_its_neighbour_than_its_own_time_is_out_of_place():
    duplicated = (TEMPORAL_MIN + 2, 0.5)        # it is the previous source frame, moving picture
    still = (TEMPORAL_MIN - 0.5, 0.2)           # a still picture: neighbours look the same
    assert off_frames([(1.0, 3.0), duplicated, still, (1.0, 1.0)]) == [1]


def test_audited_frames_below_the_ssim_or_detail_limit_fail():
    verdict = judge(distances=FAITHFUL, ssim={10: (0.99, 1.0), 70: (SSIM_MIN - 0.01, 1.0)})
    assert verdict.reason == "check_failed:audited_frames_match_source"
    blurred = judge(distances=FAITHFUL, ssim={10: (0.99, 1.0), 70: (0.95, DETAIL_MIN - 0.1)})
    assert blurred.reason == "check_failed:audited_frames_keep_detail"
    assert judge(ssim={}).checks["audited_frames_match_source"] is False


def test_bytes_other_than_reported_fail_first():
    assert judge(actual="sha256:" + "b" * 64).reason == "check_failed:sha256_matches"


def test_frame_distances_see_a_corner_and_map_frames_by_time():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 255, size=(50, 36, 64), dtype=np.uint8)
    own = lambda d: [a for a, _ in d]  # noqa: E731
    assert max(own(frame_distances(source, source, source_fps=25, fps=25))) == 0
    marked = source.copy()
    marked[10, :9, :16] = 255 - marked[10, :9, :16]          # one block of one frame
    distances = own(frame_distances(source, marked, source_fps=25, fps=25))
    assert distances[10] > FRAME_DISTANCE_MAX and max(distances[:10] + distances[11:]) == 0
    # A 50 fps source made at 25 fps: output frame i shows source frame 2i.
    assert max(own(frame_distances(source, source[::2], source_fps=50, fps=25))) == 0
    assert max(own(frame_distances(source, source[1::2], source_fps=50, fps=25))) > 50
    late = frame_distances(source, np.concatenate([source[:1], source[:-1]]),
                           source_fps=25, fps=25)            # every frame one step late
    assert off_frames(late) == list(range(1, 50))


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


def test_audio_content_is_compared_window_by_window():
    files = {"audio/audio.m3u8": "sha256:" + "1" * 64}
    source = np.random.default_rng(1).uniform(1, 100, size=(60, 24))
    same, same_db = audio_windows(source, source * 1.05, range(60))
    other, _ = audio_windows(source, source[::-1] * 1000, range(60))
    short, _ = audio_windows(source, source[:30], range(60))
    silent, silent_db = audio_windows(source, np.zeros_like(source), range(60))
    late, _ = audio_windows(source, np.roll(source, 1, axis=0), range(60))   # one window late
    judge_audio = lambda windows, db=0.0: audio_track(  # noqa: E731
        reported=files, actual=files, duration_s=6.0, source_duration_s=6.0, has_audio=True,
        codec="aac", windows=windows, loudness_db=db)
    assert judge_audio(same, same_db).passed and abs(same_db) < 0.5
    assert judge_audio(late).passed                      # within the priming slack
    assert judge_audio(other).reason == "check_failed:audio_matches_source"
    assert max(other.values()) > AUDIO_BAND_DISTANCE_MAX
    assert judge_audio(short).reason == "check_failed:audio_matches_source"
    assert judge_audio(silent, silent_db).reason == "check_failed:audio_matches_source"
    assert judge_audio(same, -40.0).reason == "check_failed:audio_matches_source"
