"""Verification rules for one segment task of a transcode: pure functions from what was
measured (by the verifier, from the bytes it fetched itself) to a Verdict.

A video segment is checked for structure (container, codec, profile, resolution, keyframes,
timestamps), for exactly the frames its source segment has, for a bitrate inside the
rendition's bounds, and for content: every frame's tiny luma fingerprint against the source
frame shown at the same time (no frame can be faked unseen), and full-resolution SSIM at
frames the audit drew (detail the fingerprint is too small to see). Every check is named and
every measured value kept, so the timeline shows exactly why a segment passed or which rule
it broke.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from chalicelib.verification.policies import Verdict

KEYFRAME_SLACK_S = 0.05
FINGERPRINT_BLOCKS = 4            # a fingerprint is judged block by block on a 4 × 4 grid
FRAME_DISTANCE_MAX = 10.0         # luma levels: a block of a frame differs this much at most
TEMPORAL_MIN = 2.5                # below this a frame matches whatever its neighbours do
TEMPORAL_RATIO = 1.5              # a frame this much nearer a neighbour is out of place
SSIM_MIN = 0.75                   # full resolution, at the audited frames (fine noise at a low rung: 0.85)
DETAIL_MIN = 0.3                  # their fine detail, against the source scaled alike
BITRATE_MIN_RATIO = 0.5           # of the rendition's target, over the segment
BITRATE_MAX_RATIO = 1.6           # x264's VBV lets a short segment run over its average


def frame_distances(source: np.ndarray, candidate: np.ndarray, *, source_fps: float,
                    fps: float) -> list[tuple[float, float]]:
    """For each candidate frame: (its distance to the source frame shown at the same time,
    its smallest distance to the source frames just before and after). A distance is the
    largest mean absolute luma difference over the blocks of a 4 × 4 grid, so a whole frame
    changed, or one corner of it, scores high while an encoder's noise does not. A frame
    nearer a neighbour than its own time is a duplicated, dropped or shifted one."""
    if len(candidate) == 0 or len(source) == 0:
        return []
    step = source_fps / fps
    index = np.minimum(np.round(np.arange(len(candidate)) * step).astype(int), len(source) - 1)
    own = _block_distance(source[index], candidate)
    before = _block_distance(source[np.maximum(index - 1, 0)], candidate)
    after = _block_distance(source[np.minimum(index + 1, len(source) - 1)], candidate)
    before[index == 0] = np.inf                      # no neighbour past the segment's ends
    after[index == len(source) - 1] = np.inf
    nearest = np.minimum(before, after)
    return [(round(float(a), 3), round(float(b), 3)) for a, b in zip(own, nearest)]


def _block_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    frames, height, width = diff.shape
    bh, bw = height // FINGERPRINT_BLOCKS, width // FINGERPRINT_BLOCKS
    blocks = diff[:, :bh * FINGERPRINT_BLOCKS, :bw * FINGERPRINT_BLOCKS].reshape(
        frames, FINGERPRINT_BLOCKS, bh, FINGERPRINT_BLOCKS, bw).mean(axis=(2, 4))
    return blocks.max(axis=(1, 2)).astype(np.float64)


def off_frames(distances: Sequence[tuple[float, float]]) -> list[int]:
    """Frames whose content is not their source frame's: too far from it, or clearly nearer
    a neighbouring source frame than their own (where the picture moves enough to tell)."""
    return [i for i, (own, neighbour) in enumerate(distances)
            if own > FRAME_DISTANCE_MAX
            or (own > TEMPORAL_MIN and own > TEMPORAL_RATIO * neighbour)]


def expected_frames(source_duration_s: float, fps: float) -> int:
    return round(source_duration_s * fps)


def video_segment(*, planned: Mapping[str, Any], reported_sha256: str, actual_sha256: str,
                  measure: Mapping[str, Any], size_bytes: int, source_duration_s: float,
                  start_s: float, segment_s: float, fps: float,
                  distances: Sequence[tuple[float, float]] | None,
                  ssim: Mapping[int, tuple[float, float]] | None
                  ) -> Verdict:
    """`measure` is a SegmentMeasure dump of the output; `planned` the rendition it owes.
    `distances` (every frame against its source, `frame_distances`) and `ssim` (audited frame
    → (SSIM, detail ratio)) are None
    when this segment's content was not audited (a trusted pool's, outside its sample)."""
    frame = 1.0 / fps
    tolerance = frame + 0.02
    frames = expected_frames(source_duration_s, fps)
    duration = measure["duration_s"] or 0.0
    kbps = size_bytes * 8 / duration / 1000 if duration > 0 else 0.0
    target = planned["video_bitrate_k"]
    checks = {
        "sha256_matches": actual_sha256 == reported_sha256,
        "container": "mpegts" in measure["format_name"],
        "codec": measure["codec"] == "h264",
        "h264_profile": _profile_matches(measure.get("profile"), planned["h264_profile"]),
        "resolution": (measure["width"], measure["height"]) == (planned["width"],
                                                                 planned["height"]),
        "duration": abs(duration - source_duration_s) <= tolerance,
        "frame_count": measure["frame_count"] == frames,
        "starts_on_keyframe": bool(measure["starts_with_keyframe"]),
        "keyframe_interval": measure["keyframe_interval_s"] <= segment_s + KEYFRAME_SLACK_S,
        "timestamps_continue": abs(measure["start_pts_s"] - start_s) <= tolerance,
        "bitrate": BITRATE_MIN_RATIO * target <= kbps <= BITRATE_MAX_RATIO * target,
    }
    measured: dict[str, Any] = {
        "sha256": actual_sha256, **{k: measure[k] for k in (
            "width", "height", "duration_s", "frame_count", "keyframe_interval_s",
            "start_pts_s", "profile")},
        "frames_expected": frames, "source_duration_s": source_duration_s,
        "bitrate_kbps": round(kbps, 1), "bitrate_target_kbps": target,
        "content_audited": distances is not None}
    if distances is not None:
        off = off_frames(distances)
        checks["every_frame_matches_source"] = len(distances) == frames and not off
        measured.update(frames_compared=len(distances),
                        frame_distance_max=max((d for d, _ in distances), default=None),
                        frame_distance_limit=FRAME_DISTANCE_MAX, frames_off=off[:32],
                        frames_off_count=len(off))
    if ssim is not None:
        low = min((s for s, _ in ssim.values()), default=0.0)
        detail = min((d for _, d in ssim.values()), default=0.0)
        checks["audited_frames_match_source"] = bool(ssim) and low >= SSIM_MIN
        checks["audited_frames_keep_detail"] = bool(ssim) and detail >= DETAIL_MIN
        measured.update(ssim_frames=sorted(ssim), ssim_min=round(low, 4), ssim_limit=SSIM_MIN,
                        detail_min=round(detail, 4), detail_limit=DETAIL_MIN)
    return Verdict("segment_video", checks, measured)


AUDIO_BAND_DISTANCE_MAX = 1.0     # mean |log10 energy| difference per band, in a window
AUDIO_LOUDNESS_DB_MAX = 6.0       # and its overall level, within this many dB
AUDIO_FLOOR = 1e-4                # of the source's mean band energy: quieter counts as silence
AUDIO_SLACK_WINDOWS = 1           # an encoder's priming may move sound into the next window


def audio_windows(source: np.ndarray, candidate: np.ndarray,
                  windows: Sequence[int]) -> tuple[dict[int, float], float | None]:
    """Band energies (windows × bands) of source and candidate → for each audited window, the
    mean absolute difference of log band energies against the nearest source window within
    the slack (inf where the candidate has no such window), and the candidate's loudness
    against the source's in dB (None if either is empty). Bands quieter than a floor set by
    the source count as silence on both sides, so an encoder's noise there is not a mismatch.
    """
    if len(source) == 0 or len(candidate) == 0:
        return {w: float("inf") for w in windows}, None
    floor = AUDIO_FLOOR * float(source.mean()) + 1e-12
    src, cand = np.log10(np.maximum(source, floor)), np.log10(np.maximum(candidate, floor))
    out = {}
    for w in windows:
        if w >= len(cand):
            out[w] = float("inf")
            continue
        near = range(max(0, w - AUDIO_SLACK_WINDOWS), min(len(src), w + AUDIO_SLACK_WINDOWS + 1))
        out[w] = round(min(float(np.abs(cand[w] - src[k]).mean()) for k in near), 4)
    loudness = 10 * float(np.log10((candidate.sum() + 1e-12) / (source.sum() + 1e-12)))
    return out, round(loudness, 2)


def audio_track(*, reported: Mapping[str, str], actual: Mapping[str, str],
                duration_s: float | None, source_duration_s: float, has_audio: bool,
                codec: str | None, windows: Mapping[int, float] | None = None,
                loudness_db: float | None = None) -> Verdict:
    """The audio task's files: each one's hash as reported, AAC, as long as the source, and
    (when its content is audited) the audited windows sounding like the source's."""
    checks = {
        "sha256_matches": bool(actual) and dict(reported) == dict(actual),
        "audio_present": has_audio,
        "codec": codec == "aac",
        "duration": duration_s is not None and abs(duration_s - source_duration_s) <= 0.1,
    }
    measured: dict[str, Any] = {"files": len(actual), "duration_s": duration_s,
                                "source_duration_s": source_duration_s, "codec": codec,
                                "content_audited": windows is not None}
    if windows is not None:
        worst = max(windows.values(), default=float("inf"))
        checks["audio_matches_source"] = (bool(windows) and worst <= AUDIO_BAND_DISTANCE_MAX
                                          and loudness_db is not None
                                          and abs(loudness_db) <= AUDIO_LOUDNESS_DB_MAX)
        measured.update(windows_audited=len(windows), band_distance_max=worst,
                        band_distance_limit=AUDIO_BAND_DISTANCE_MAX, loudness_db=loudness_db)
    return Verdict("segment_audio", checks, measured)


def _profile_matches(measured: str | None, wanted: str) -> bool:
    """PyAV names H.264 profiles "High", "Main", "Constrained Baseline"…"""
    return measured is not None and measured.lower().replace(" ", "_") == wanted.lower()
