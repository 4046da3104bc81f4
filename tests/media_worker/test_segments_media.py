"""media_worker's segment pipeline against real ffmpeg and PyAV: inspecting sources, planning
and cutting video-only segments (segments), measuring them and comparing their content
(measure), and running ffmpeg (ffmpeg). No servers."""
from __future__ import annotations

import re
import subprocess
import time
from fractions import Fraction

import imageio_ffmpeg
import numpy as np
import pytest

from chalicelib.errors import ExecutionError, FfmpegFailed, FfmpegTimeout, MediaError
from chalicelib.media.probe import sha256_file
from chalicelib.media.profiles import PlannedRendition
from chalicelib.verification import audit
from chalicelib.verification.segments import frame_distances
from media_worker import verify
from media_worker.ffmpeg import decode_check, run_ffmpeg
from media_worker.measure import (
    compare_frames,
    fingerprints,
    frames_at,
    measure_segment,
    measure_with_fingerprints,
    scale_luma,
)
from media_worker.segments import Keyframe, SourceInfo, inspect_source, plan_split, split_source
from proofline import clips

FRAME_S = 1 / 25  # every generated clip runs at 25 fps


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("segments")


@pytest.fixture(scope="module")
def aligned_source(media):
    """6 s with B-frames and audio, a keyframe every 2 s."""
    return clips.make_gop_clip(media / "aligned.mp4", seconds=6.0, gop=50, bframes=2)


@pytest.fixture(scope="module")
def aligned_segments(aligned_source, media):
    """The aligned source cut into 2 s segments: (info, plan, segments)."""
    info = inspect_source(aligned_source)
    plan = plan_split(info, 2.0)
    return info, plan, split_source(aligned_source, media / "aligned", plan, timeout_s=60)


def _keyframes(*times: float) -> list[Keyframe]:
    return [Keyframe(packet=round(t / FRAME_S), time_s=t) for t in times]


def _info(**changes) -> SourceInfo:
    base = dict(format_name="mov,mp4,m4a,3gp,3g2,mj2", codec="h264", pix_fmt="yuv420p",
                width=320, height=240, rotation=0, fps=25.0, frame_rate="25/1",
                variable_frame_rate=False, has_audio=True, duration_s=5.0, frame_count=125,
                keyframes=_keyframes(0.0, 2.0, 4.0))
    return SourceInfo(**{**base, **changes})


# --- inspecting -----------------------------------------------------------------------------

def test_inspect_reports_geometry_rate_audio_and_keyframes(aligned_segments):
    info, _, _ = aligned_segments
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 320, 240)
    assert (info.fps, info.frame_rate, info.variable_frame_rate) == (25.0, "25/1", False)
    assert info.rotation == 0 and info.has_audio is True
    assert info.duration_s == pytest.approx(6.0, abs=FRAME_S / 2)
    assert info.frame_count == 150
    assert [k.packet for k in info.keyframes] == [0, 50, 100]
    assert info.keyframe_times_s == pytest.approx([0.0, 2.0, 4.0])


def test_inspect_sees_rotation_vfr_odd_size_and_codec(media):
    rotated = inspect_source(clips.make_rotated_clip(media / "rot90.mp4", rotation=90))
    assert (rotated.rotation, rotated.width, rotated.height) == (90, 320, 240)
    assert inspect_source(clips.make_vfr_clip(media / "vfr.mp4")).variable_frame_rate is True
    odd = inspect_source(clips.make_odd_clip(media / "odd.mp4"))
    assert (odd.width, odd.height, odd.pix_fmt) == (319, 239, "yuv444p")
    assert inspect_source(clips.make_mpeg2_clip(media / "mpeg2.ts")).codec == "mpeg2video"


@pytest.mark.parametrize("make, name, reason", [
    (clips.make_empty, "empty.mp4", "input_empty"),
    (clips.make_corrupt, "noise.mp4", "media_unreadable"),
    (lambda p: clips.make_clip(p, seconds=1.0, video=False), "tone.m4a", "no_video_stream"),
    (clips.make_still, "still.png", "not_a_video"),
    (clips.make_still, "still.jpg", "not_a_video"),
    (clips.make_garbled_video, "garbled.mp4", "media_undecodable"),
])
def test_unusable_inputs_raise_media_error_with_reason(tmp_path, make, name, reason):
    path = make(tmp_path / name)
    with pytest.raises(MediaError) as err:
        inspect_source(path)
    assert err.value.reason == reason


# --- planning -------------------------------------------------------------------------------

def test_plan_copies_when_keyframes_sit_on_boundaries_and_the_last_segment_is_short():
    plan = plan_split(_info(), 2.0)
    assert (plan.method, plan.reasons) == ("copy", [])
    assert [(s.start_s, s.duration_s) for s in plan.segments] == [(0, 2), (2, 2), (4, 1)]
    assert [s.start_packet for s in plan.segments] == [0, 50, 100]


def test_plan_cuts_at_the_keyframe_nearest_each_boundary_within_tolerance():
    plan = plan_split(_info(keyframes=_keyframes(0.0, 1.0, 2.04, 3.96)), 2.0)
    assert plan.method == "copy"
    assert [s.start_s for s in plan.segments] == [0.0, 2.04, 3.96]
    assert [s.start_packet for s in plan.segments] == [0, 51, 99]
    assert plan.segments[-1].duration_s == pytest.approx(1.04)


def test_plan_needs_a_mezzanine_when_a_keyframe_is_too_far():
    plan = plan_split(_info(keyframes=_keyframes(0.0, 2.2, 4.0)), 2.0)
    assert (plan.method, plan.reasons) == ("mezzanine", ["keyframes_unaligned"])
    assert [s.start_s for s in plan.segments] == [0.0, 2.0, 4.0]
    assert {s.start_packet for s in plan.segments} == {None}


def test_plan_lists_every_reason_stream_copy_is_ruled_out():
    not_first = [Keyframe(packet=3, time_s=0.12), *_keyframes(2.0, 4.0)]
    info = _info(codec="hevc", pix_fmt="yuv444p", rotation=90, width=319,
                 variable_frame_rate=True, keyframes=not_first)
    assert plan_split(info, 2.0).reasons == ["codec", "pixel_format", "rotated", "odd_dimensions",
                                             "variable_frame_rate", "keyframes_unaligned"]


def test_plan_for_a_clip_shorter_than_a_segment_is_one_short_segment():
    plan = plan_split(_info(duration_s=1.0, keyframes=_keyframes(0.0)), 4.0)
    assert [(s.start_s, s.duration_s) for s in plan.segments] == [(0.0, 1.0)]


# --- splitting ------------------------------------------------------------------------------

def test_aligned_clip_splits_by_stream_copy_into_keyframe_led_video_only_segments(aligned_segments):
    info, plan, segments = aligned_segments
    assert plan.method == "copy"
    assert [s.index for s in segments] == [0, 1, 2]
    assert sum(s.duration_s for s in segments) == pytest.approx(info.duration_s, abs=FRAME_S)
    for segment in segments:
        measure = measure_segment(segment.path)
        assert measure.duration_s == segment.duration_s == pytest.approx(2.0, abs=FRAME_S / 2)
        assert measure.starts_with_keyframe and measure.start_pts_s == 0.0
        assert measure.has_audio is False
        assert (measure.codec, measure.width, measure.height) == ("h264", 320, 240)
        assert measure.format_name.startswith("matroska")
        assert segment.sha256 == sha256_file(segment.path)
    assert [s.start_s for s in segments] == pytest.approx([0.0, 2.0, 4.0])


def test_copy_split_keeps_every_frame(aligned_segments):
    info, _, segments = aligned_segments
    assert sum(measure_segment(s.path).frame_count for s in segments) == info.frame_count


def test_copy_split_cuts_where_the_plan_found_keyframes(media):
    source = clips.make_gop_clip(media / "gop51.mp4", seconds=6.0, gop=51, audio=False)
    plan = plan_split(inspect_source(source), 2.0)
    assert [s.start_s for s in plan.segments] == pytest.approx([0.0, 2.04, 4.08])
    segments = split_source(source, media / "gop51", plan, timeout_s=60)
    assert [s.duration_s for s in segments] == pytest.approx([2.04, 2.04, 1.92], abs=FRAME_S / 2)


def test_copy_split_cuts_on_keyframes_whose_times_are_not_round(media):
    """At 30000/1001 fps no keyframe falls on a round time; cuts must still land on the planned
    keyframes and not one GOP later."""
    source = clips.make_gop_clip(media / "ntsc.mp4", seconds=6.0, gop=61, fps="30000/1001",
                                 audio=False)
    plan = plan_split(inspect_source(source), 2.0)
    assert plan.method == "copy"
    segments = split_source(source, media / "ntsc", plan, timeout_s=60)
    assert [s.duration_s for s in segments] == pytest.approx([2.0354, 2.0354, 1.9353], abs=0.002)


def test_copy_split_of_a_transport_stream_whose_audio_starts_first(media):
    """In a TS the audio starts before the video (AAC priming), so the file's start and the
    video's first frame differ; cuts must still land on the planned keyframes."""
    mp4 = clips.make_gop_clip(media / "for_ts.mp4", seconds=6.0, gop=50, bframes=2)
    source = media / "muxed.ts"
    run_ffmpeg(["-i", str(mp4), "-c", "copy", str(source)], timeout_s=60)
    info = inspect_source(source)
    assert info.keyframe_times_s == pytest.approx([0.0, 2.0, 4.0])
    plan = plan_split(info, 2.0)
    assert plan.method == "copy"
    segments = split_source(source, media / "muxed", plan, timeout_s=60)
    assert [s.duration_s for s in segments] == pytest.approx([2.0, 2.0, 2.0], abs=FRAME_S / 2)
    assert all(measure_segment(s.path).start_pts_s == 0.0 for s in segments)


@pytest.mark.parametrize("name, make, reason, size", [
    ("unaligned", lambda p: clips.make_gop_clip(p, seconds=3.0, gop=35), "keyframes_unaligned",
     (320, 240)),
    ("vfr", lambda p: clips.make_vfr_clip(p, seconds=3.0), "variable_frame_rate", (320, 240)),
    ("rotated", lambda p: clips.make_rotated_clip(p, seconds=2.0), "rotated", (240, 320)),
    ("odd", lambda p: clips.make_odd_clip(p, seconds=2.0), "odd_dimensions", (318, 238)),
    ("mpeg2", lambda p: clips.make_mpeg2_clip(p.with_suffix(".ts"), seconds=2.0), "codec",
     (320, 240)),
])
def test_unsplittable_sources_go_through_a_cfr_even_upright_mezzanine(tmp_path, name, make,
                                                                      reason, size):
    source = make(tmp_path / f"{name}.mp4")
    info = inspect_source(source)
    plan = plan_split(info, 1.0)
    assert plan.method == "mezzanine" and reason in plan.reasons
    segments = split_source(source, tmp_path / "out", plan, timeout_s=60)
    assert len(segments) == len(plan.segments)
    assert sum(s.duration_s for s in segments) == pytest.approx(info.duration_s, abs=FRAME_S)
    # the mezzanine is scratch: only the segments stay
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [s.path.name for s in segments]
    for segment in segments:
        measure = measure_segment(segment.path)
        assert measure.duration_s == pytest.approx(1.0, abs=FRAME_S / 2)
        assert measure.starts_with_keyframe and measure.start_pts_s == 0.0
        assert (measure.width, measure.height) == size
        assert measure.codec == "h264" and measure.has_audio is False
        again = inspect_source(segment.path)
        assert again.variable_frame_rate is False and again.rotation == 0
        assert (again.fps, again.pix_fmt) == (25.0, "yuv420p")


def test_clip_shorter_than_a_segment_yields_one_segment(tmp_path):
    source = clips.make_clip(tmp_path / "short.mp4", seconds=1.0)
    plan = plan_split(inspect_source(source), 4.0)
    segments = split_source(source, tmp_path / "out", plan, timeout_s=60)
    assert len(segments) == 1
    assert segments[0].duration_s == pytest.approx(1.0, abs=FRAME_S / 2)


def test_split_refuses_a_directory_that_already_holds_segments(aligned_source, aligned_segments):
    _, plan, segments = aligned_segments
    with pytest.raises(ValueError):
        split_source(aligned_source, segments[0].path.parent, plan, timeout_s=60)


# --- comparing and decoding -----------------------------------------------------------------

def test_content_measures_tell_a_reencode_from_other_pictures(aligned_segments, tmp_path):
    segment = aligned_segments[2][1].path
    reencode = tmp_path / "reencode.mp4"
    run_ffmpeg(["-i", str(segment), "-vf", "scale=240:180", "-c:v", "libx264", "-preset",
                "veryfast", "-crf", "28", str(reencode)], timeout_s=60)
    other = clips.make_clip(tmp_path / "bars.mp4", seconds=2.0, audio=False,
                            seed_pattern="smptebars")
    source, _ = fingerprints(segment)
    same, kept = fingerprints(reencode, keep=frozenset({0, 10}))
    assert same.shape == (len(source), 36, 64) and sorted(kept) == [0, 10]
    assert kept[0].shape == (180, 240)                       # full resolution, luma only
    assert max(d for d, _ in frame_distances(source, same, source_fps=25, fps=25)) < 6
    bars, _ = fingerprints(other)
    assert min(d for d, _ in frame_distances(source, bars, source_fps=25, fps=25)) > 20
    compared = compare_frames(frames_at(segment, [0, 10], (240, 180)), kept)
    assert all(ssim >= 0.9 and detail > 0.5 for ssim, detail in compared.values())
    bars_full = frames_at(other, [0, 10], (240, 180))
    assert all(ssim < 0.6 for ssim, _ in compare_frames(bars_full, kept).values())
    itself = frames_at(segment, [5], (240, 180))
    assert compare_frames(itself, itself)[5][0] == pytest.approx(1.0)


def test_one_pass_measures_and_fingerprints_as_two_passes_do(aligned_segments, tmp_path):
    """A check reads its candidate once: what that pass measures and fingerprints is what
    the packet pass and the decode pass each find, and a frame drawn past the end stands
    for the last one."""
    segment = aligned_segments[2][1].path
    tiny, kept = fingerprints(segment, keep=frozenset({3, 49}))
    measured, once_tiny, once_kept = measure_with_fingerprints(segment, frozenset({3, 60}))
    assert measured == measure_segment(segment) and measured.frame_count == 50
    assert (once_tiny == tiny).all()
    assert sorted(once_kept) == [3, 49]
    assert all((once_kept[i] == kept[i]).all() for i in (3, 49))


def test_ssim_is_the_ffmpeg_filters_luma_ssim(aligned_segments, tmp_path):
    """SSIM over 8x8 windows on a 4-pixel grid, the integer block sums checked against
    FFmpeg's own `ssim` filter on the same two pictures, each converted to gray as the
    checks convert what they compare."""
    segment = aligned_segments[2][1].path
    worse = tmp_path / "worse.mp4"
    run_ffmpeg(["-i", str(segment), "-c:v", "libx264", "-crf", "40", "-an", str(worse)],
               timeout_s=60)
    (_, source), (_, worn) = (fingerprints(path, keep=frozenset({7})) for path in (segment, worse))
    ours = compare_frames(source, worn)[7][0]
    report = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(worse), "-i", str(segment),
         "-lavfi", "[0:v]select=eq(n\\,7),format=gray[a];[1:v]select=eq(n\\,7),format=gray[b];"
         "[a][b]ssim",
         "-frames:v", "1", "-f", "null", "-"], capture_output=True, text=True, check=True)
    theirs = float(re.search(r"Y:([0-9.]+)", report.stderr).group(1))
    assert 0.3 < ours < 0.99
    assert ours == pytest.approx(theirs, abs=0.002)


def test_a_reference_keeps_secretly_drawn_frames_and_checks_compare_only_those(
        aligned_segments, tmp_path):
    """The source is decoded once per segment: the frames its audits may compare are kept
    at full resolution, drawn with the verifier's secret (another secret, other frames);
    each check draws its SSIM frames among them and decodes no source again."""
    segment = aligned_segments[2][1].path
    key = lambda secret: audit.audit_key(secret * 16, subject="job~source",  # noqa: E731
                                         committed=["sha256:src"])
    kept = verify.Reference.of(segment, 2.0, key=key("a"), ssim_frames=3)
    other = verify.Reference.of(segment, 2.0, key=key("b"), ssim_frames=3)
    assert len(kept.candidates) == 6 and sorted(kept.candidates) != sorted(other.candidates)
    assert kept.candidates[min(kept.candidates)].shape == (240, 320)     # the source's size
    back = verify.Reference.load(kept.dump())
    assert sorted(back.candidates) == sorted(kept.candidates) and back.fps == kept.fps
    assert all((back.candidates[i] == kept.candidates[i]).all() for i in kept.candidates)
    plain = verify.Reference.of(segment, 2.0)
    assert plain.candidates == {} and (plain.frames == kept.frames).all()
    # Scaled from what was kept, a frame compares as one decoded again does.
    i = min(kept.candidates)
    again = frames_at(segment, [i], (240, 180))[i]
    assert np.abs(scale_luma(kept.candidates[i], (240, 180)).astype(int) - again).max() <= 2

    reencode = tmp_path / "reencode.ts"
    run_ffmpeg(["-i", str(segment), "-c:v", "libx264", "-preset", "veryfast", "-g", "50",
                "-an", str(reencode)], timeout_s=60)
    sha = sha256_file(reencode)
    planned = PlannedRendition(name="240p", width=320, height=240, video_bitrate_k=400,
                               maxrate_k=50000, bufsize_k=100000, h264_profile="high",
                               h264_level="4.0")
    judged = {}
    for name, reference in (("candidates", kept), ("decoded again", plain)):
        verdict = verify.judge_video(
            reencode, reported_sha256=sha, actual_sha256=sha, planned=planned,
            fps=Fraction(25), segment_s=2.0, start_s=0.0, source_duration_s=2.0,
            source=segment, reference=reference, ssim_frames=3,
            key=audit.audit_key("c" * 16, subject="t", committed=[sha]))
        judged[name] = verdict.measured
    assert set(judged["candidates"]["ssim_frames"]) <= set(kept.candidates)
    assert len(judged["candidates"]["ssim_frames"]) == 3
    assert abs(judged["candidates"]["ssim_min"] - judged["decoded again"]["ssim_min"]) < 0.02
    assert judged["candidates"]["ssim_min"] > 0.9


def test_decode_check_passes_a_clean_segment_and_fails_a_truncated_one(aligned_segments, tmp_path):
    segment = aligned_segments[2][0].path
    clean = decode_check(segment, timeout_s=60)
    assert clean.ok and clean.stderr == ""
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(segment.read_bytes()[: segment.stat().st_size // 2])
    broken = decode_check(cut, timeout_s=60)
    assert not broken.ok and broken.stderr


def test_decode_check_fails_a_playlist_missing_a_middle_segment(aligned_source, tmp_path):
    playlist = tmp_path / "index.m3u8"
    run_ffmpeg(["-i", str(aligned_source), "-c", "copy", "-f", "hls", "-hls_time", "2",
                "-hls_playlist_type", "vod", str(playlist)], timeout_s=60)
    assert decode_check(playlist, timeout_s=60).ok
    (tmp_path / "index1.ts").unlink()
    assert not decode_check(playlist, timeout_s=60).ok


def test_truncated_transport_stream_shows_in_its_measurement(aligned_segments, tmp_path):
    """FFmpeg decodes a TS cut in half without a word (a TS has no index or length for the cut
    to contradict), so decode_check cannot be the only check: frame count and duration are."""
    segment = aligned_segments[2][0].path
    whole = tmp_path / "whole.ts"
    run_ffmpeg(["-i", str(segment), "-c", "copy", "-f", "mpegts", str(whole)], timeout_s=60)
    cut = tmp_path / "cut.ts"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    full, short = measure_segment(whole), measure_segment(cut)
    assert full.frame_count == 50
    assert short.frame_count < full.frame_count
    assert short.duration_s < full.duration_s - 0.5


# --- running ffmpeg -------------------------------------------------------------------------

def test_run_ffmpeg_times_out_on_a_long_encode():
    started = time.monotonic()
    with pytest.raises(FfmpegTimeout) as err:
        run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=600",
                    "-c:v", "libx264", "-preset", "veryslow", "-f", "null", "-"], timeout_s=0.5)
    assert err.value.reason == "ffmpeg_timeout" and isinstance(err.value, ExecutionError)
    assert time.monotonic() - started < 5


def test_run_ffmpeg_failure_carries_stderr(tmp_path):
    with pytest.raises(FfmpegFailed) as err:
        run_ffmpeg(["-i", str(tmp_path / "missing.mp4"), "-f", "null", "-"], timeout_s=30)
    assert err.value.reason == "ffmpeg_failed"
    assert err.value.details["returncode"] != 0
    assert "missing.mp4" in err.value.details["stderr"]


def test_run_ffmpeg_reports_exit_code_and_wall_time(tmp_path):
    run = run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=5:duration=1",
                      "-f", "null", "-"], timeout_s=30)
    assert run.returncode == 0 and run.stderr == "" and run.wall_s > 0
