"""Verification rules for one segment task of a transcode: pure functions from what was
measured (by the verifier, from the bytes it fetched itself) to a Verdict.

Every check is named, every measured value is kept, so the timeline shows exactly why a
segment passed or which rule it broke.
"""
from __future__ import annotations

from typing import Any, Mapping

from chalicelib.verification.policies import Verdict

SSIM_THRESHOLD = 0.80          # a faithful encode scores > 0.9; another video scores < 0.6
KEYFRAME_SLACK_S = 0.05


def video_segment(*, planned: Mapping[str, Any], reported_sha256: str, actual_sha256: str,
                  measure: Mapping[str, Any], source_duration_s: float, start_s: float,
                  segment_s: float, fps: float, ssim_min: float | None) -> Verdict:
    """`measure` is a SegmentMeasure dump of the output; `planned` the rendition it owes."""
    frame = 1.0 / fps
    tolerance = frame + 0.02
    checks = {
        "sha256_matches": actual_sha256 == reported_sha256,
        "container": "mpegts" in measure["format_name"],
        "codec": measure["codec"] == "h264",
        "h264_profile": _profile_matches(measure.get("profile"), planned["h264_profile"]),
        "resolution": (measure["width"], measure["height"]) == (planned["width"],
                                                                 planned["height"]),
        "duration": abs(measure["duration_s"] - source_duration_s) <= tolerance,
        "starts_on_keyframe": bool(measure["starts_with_keyframe"]),
        "keyframe_interval": measure["keyframe_interval_s"] <= segment_s + KEYFRAME_SLACK_S,
        "timestamps_continue": abs(measure["start_pts_s"] - start_s) <= tolerance,
        "content_matches_source": ssim_min is not None and ssim_min >= SSIM_THRESHOLD,
    }
    measured = {"sha256": actual_sha256, **{k: measure[k] for k in (
        "width", "height", "duration_s", "frame_count", "keyframe_interval_s", "start_pts_s",
        "profile")}, "source_duration_s": source_duration_s, "ssim_min": ssim_min,
        "ssim_threshold": SSIM_THRESHOLD}
    return Verdict("segment_video", checks, measured)


def audio_track(*, reported: Mapping[str, str], actual: Mapping[str, str],
                duration_s: float | None, source_duration_s: float, has_audio: bool,
                codec: str | None) -> Verdict:
    """The audio task's files: each one's hash as reported, AAC, as long as the source."""
    checks = {
        "sha256_matches": bool(actual) and dict(reported) == dict(actual),
        "audio_present": has_audio,
        "codec": codec == "aac",
        "duration": duration_s is not None and abs(duration_s - source_duration_s) <= 0.1,
    }
    return Verdict("segment_audio", checks, {"files": len(actual), "duration_s": duration_s,
                                             "source_duration_s": source_duration_s,
                                             "codec": codec})


def _profile_matches(measured: str | None, wanted: str) -> bool:
    """PyAV names H.264 profiles "High", "Main", "Constrained Baseline"…"""
    return measured is not None and measured.lower().replace(" ", "_") == wanted.lower()
