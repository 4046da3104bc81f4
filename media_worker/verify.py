"""The verifier's measuring, over files on local disk: a video segment measured from its
packets, every frame's fingerprint against its source segment, full-resolution SSIM at the
frames the audit drew; an audio track's hashes, codec, duration and sound against the
source's. The rules that turn the measures into a verdict are `chalicelib.verification`'s;
this module only measures (it decodes, so it lives in the execution plane).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
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
    measure_with_fingerprints,
    scale_luma,
)

MEASURE_ERRORS = (MediaError, ProoflineError, av.FFmpegError, ValueError)


# The source frames an audit may compare at full resolution: this many per SSIM frame a
# check draws, kept once per segment (so no check decodes its source again), within a budget.
CANDIDATES_PER_SSIM_FRAME = 2
CANDIDATE_BYTES = 32 << 20


@dataclass(frozen=True)
class Reference:
    """A source segment, decoded once for every check of its renditions: each frame's
    fingerprint, the frame rate, and the full-resolution luma of `candidates`, the frames
    the audits may compare. Which frames those are is drawn with the verifier's secret, so
    no worker can know them; each check then draws its own among them, after its worker
    committed to its result."""
    frames: np.ndarray
    fps: float
    candidates: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, source: Path, duration_s: float, *, key: bytes | None = None,
           ssim_frames: int = 0) -> "Reference":
        keep: frozenset[int] = frozenset()
        if key is not None and ssim_frames > 0:
            shape = measure_segment(source)
            wanted = ssim_frames * CANDIDATES_PER_SSIM_FRAME
            affordable = CANDIDATE_BYTES // max(1, shape.width * shape.height)
            keep = frozenset(audit.draw(key, "ssim-candidates", shape.frame_count,
                                        max(ssim_frames, min(wanted, affordable))))
        frames, kept = fingerprints(source, keep=keep)
        return cls(frames, len(frames) / duration_s if duration_s > 0 else 0.0, kept)

    def dump(self) -> bytes:
        buffer = io.BytesIO()
        chosen = sorted(self.candidates)
        np.savez(buffer, frames=self.frames, fps=np.float64(self.fps),
                 candidate_index=np.array(chosen, dtype=np.int64),
                 candidate_luma=(np.stack([self.candidates[i] for i in chosen]) if chosen
                                 else np.zeros((0, 0, 0), np.uint8)))
        return buffer.getvalue()

    @classmethod
    def load(cls, data: bytes) -> "Reference":
        stored = np.load(io.BytesIO(data), allow_pickle=False)
        candidates = {}
        if "candidate_index" in stored.files:
            candidates = {int(i): luma for i, luma in
                          zip(stored["candidate_index"], stored["candidate_luma"])}
        return cls(stored["frames"], float(stored["fps"]), candidates)


def judge_video(candidate: Path, *, reported_sha256: str, actual_sha256: str,
                planned: PlannedRendition, fps: Fraction, segment_s: float, start_s: float,
                source_duration_s: float, source: Path | None, reference: Reference | None,
                key: bytes | None, ssim_frames: int) -> Verdict:
    """Structure always; content (every frame, and SSIM at `ssim_frames` frames drawn with
    `key`) when `key` is given, i.e. when this segment's content is audited."""
    distances = ssim = None
    try:
        if key is not None and source is not None and reference is not None:
            drawn = _ssim_draw(reference, key, float(fps), ssim_frames)
            measured, frames, full = measure_with_fingerprints(candidate, frozenset(drawn))
            last = len(frames) - 1
            shown = {min(last, i): s for i, s in drawn.items()}      # the end stands for itself
            at = _source_frames(reference, source, sorted(set(shown.values())),
                                (measured.width, measured.height))
            distances = rules.frame_distances(reference.frames, frames,
                                              source_fps=reference.fps, fps=float(fps))
            ssim = compare_frames({i: at[s] for i, s in shown.items() if s in at}, full)
        else:
            measured = measure_segment(candidate)
        measure = measured.model_dump()
    except MEASURE_ERRORS as error:
        return Verdict("segment_video", {"sha256_matches": actual_sha256 == reported_sha256,
                                         "output_readable": False},
                       {"error": str(error)[:500]})
    return rules.video_segment(
        planned=planned.model_dump(), reported_sha256=reported_sha256,
        actual_sha256=actual_sha256, measure=measure, size_bytes=candidate.stat().st_size,
        source_duration_s=source_duration_s, start_s=start_s, segment_s=segment_s,
        fps=float(fps), distances=distances, ssim=ssim)


def _ssim_draw(reference: Reference, key: bytes, fps: float, ssim_frames: int
               ) -> dict[int, int]:
    """The output frames this check compares at full resolution, each with the source frame
    shown at the same time: drawn among the reference's candidates when it kept some (so
    nothing is decoded again), otherwise among every source frame. An output frame past the
    candidate's end is clamped to its last once the candidate is read."""
    pool = sorted(reference.candidates) or list(range(len(reference.frames)))
    picked = [pool[i] for i in audit.draw(key, "ssim", len(pool), ssim_frames)]
    return {round(s * fps / reference.fps): s for s in picked} if reference.fps > 0 else {}


def _source_frames(reference: Reference, source: Path, indices: list[int],
                   size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Those source frames scaled to the output's size: from the kept candidates, or decoded
    from the source as far as the last one drawn."""
    if all(i in reference.candidates for i in indices):
        return {i: scale_luma(reference.candidates[i], size) for i in indices}
    return frames_at(source, indices, size)


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
