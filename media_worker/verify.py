"""The verifier's measuring, over files on local disk: a video segment measured from its
packets, every frame's fingerprint against its source segment, full-resolution SSIM at the
frames the audit drew; an audio track's hashes, codec, duration and sound against the
source's. The rules that turn the measures into a verdict are `chalicelib.verification`'s;
this module only measures (it decodes, so it lives in the execution plane).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Mapping

import av
import m3u8
import numpy as np

from chalicelib.errors import MediaError, ProoflineError
from chalicelib.media.profiles import PlannedRendition
from chalicelib.verification import audit
from chalicelib.verification import segments as rules
from chalicelib.verification.policies import Verdict

from .measure import (
    audio_bands,
    compare_frames,
    fingerprints,
    frames_at,
    measure_segment,
)

MEASURE_ERRORS = (MediaError, ProoflineError, av.FFmpegError, ValueError)


@dataclass(frozen=True)
class Reference:
    """A source segment's fingerprints and frame rate: what each rendition is compared to."""
    frames: np.ndarray
    fps: float

    @classmethod
    def of(cls, source: Path, duration_s: float) -> "Reference":
        frames, _ = fingerprints(source)
        return cls(frames, len(frames) / duration_s if duration_s > 0 else 0.0)

    def dump(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, frames=self.frames, fps=np.float64(self.fps))
        return buffer.getvalue()

    @classmethod
    def load(cls, data: bytes) -> "Reference":
        stored = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(stored["frames"], float(stored["fps"]))


def judge_video(candidate: Path, *, reported_sha256: str, actual_sha256: str,
                planned: PlannedRendition, fps: Fraction, segment_s: float, start_s: float,
                source_duration_s: float, source: Path | None, reference: Reference | None,
                key: bytes | None, ssim_frames: int) -> Verdict:
    """Structure always; content (every frame, and SSIM at `ssim_frames` frames drawn with
    `key`) when `key` is given, i.e. when this segment's content is audited."""
    distances = ssim = None
    try:
        measure = measure_segment(candidate).model_dump()
        if key is not None and source is not None and reference is not None:
            drawn = audit.draw(key, "ssim", measure["frame_count"], ssim_frames)
            frames, full = fingerprints(candidate, keep=frozenset(drawn))
            distances = rules.frame_distances(reference.frames, frames,
                                              source_fps=reference.fps, fps=float(fps))
            shown = {i: round(i * reference.fps / float(fps)) for i in drawn}  # same time
            at = frames_at(source, list(shown.values()), (measure["width"], measure["height"]))
            ssim = compare_frames({i: at[s] for i, s in shown.items() if s in at}, full)
    except MEASURE_ERRORS as error:
        return Verdict("segment_video", {"sha256_matches": actual_sha256 == reported_sha256,
                                         "output_readable": False},
                       {"error": str(error)[:500]})
    return rules.video_segment(
        planned=planned.model_dump(), reported_sha256=reported_sha256,
        actual_sha256=actual_sha256, measure=measure, size_bytes=candidate.stat().st_size,
        source_duration_s=source_duration_s, start_s=start_s, segment_s=segment_s,
        fps=float(fps), distances=distances, ssim=ssim)


def judge_audio(local: Mapping[str, Path], *, reported: Mapping[str, str],
                actual: Mapping[str, str], container: str, source_duration_s: float,
                source: Path | None) -> Verdict:
    """The audio task's files (an HLS audio playlist and its segments, or one .m4a); their
    sound compared with the source's, window by window, when `source` is given."""
    duration = codec = None
    tracks: list[Path] = []
    try:
        if container == "hls":
            parsed = m3u8.loads(local["audio/audio.m3u8"].read_text())
            duration = sum(s.duration for s in parsed.segments)
            names = [f"audio/{s.uri}" for s in parsed.segments]
            tracks = [local[n] for n in names] if all(n in local for n in names) else []
        elif "audio/audio.m4a" in local:
            tracks = [local["audio/audio.m4a"]]
        if tracks:
            with av.open(str(tracks[0])) as opened:
                stream = opened.streams.audio[0]
                codec = stream.codec_context.name
                if container == "mp4":
                    duration = float(stream.duration * stream.time_base)
    except (AttributeError, IndexError, KeyError, av.FFmpegError, ValueError, TypeError):
        tracks = []
    windows = loudness = None
    if source is not None:
        try:
            reference, candidate = audio_bands([source]), audio_bands(tracks)
            windows, loudness = rules.audio_windows(reference, candidate,
                                                    range(len(reference)))
        except MEASURE_ERRORS:
            windows = {}
    return rules.audio_track(reported=reported, actual=actual, duration_s=duration,
                             source_duration_s=source_duration_s, has_audio=codec is not None,
                             codec=codec, windows=windows, loudness_db=loudness)
