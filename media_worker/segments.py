"""The FFmpeg/PyAV side of the segment pipeline: inspect a source, plan where its segments
start, and cut it into video-only segments (measure.py measures what came out).

FFmpeg cuts and encodes; PyAV takes every measurement, so reported numbers describe the files
on disk rather than what a command was asked to produce. Segments carry no audio: audio
encoded per segment drifts at the joins (AAC priming), so the pipeline handles it separately.
"""
from __future__ import annotations

import math
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
from pydantic import Field

from chalicelib.errors import ExecutionError, FfmpegTimeout, MediaError
from chalicelib.media import client_split
from chalicelib.media.probe import sha256_file

from .ffmpeg import run_ffmpeg
from .measure import measure_segment
from .reading import (
    Model,
    Packets,
    PathLike,
    demux,
    display_rotation,
    is_still,
    is_vfr,
    open_media,
    span_s,
    video_stream,
)

# Matroska segments start at 0 after -reset_timestamps and keep frame durations. MPEG-TS
# shifts every segment by its 1.4 s mux delay (B-frame streams by their decode delay on top),
# and a TS cut short still decodes without a word.
SEGMENT_FORMAT = "matroska"
SEGMENT_SUFFIX = ".mkv"
SEGMENT_PREFIX = "segment_"
CUT_TOLERANCE_S = 0.1
COPYABLE_CODECS = frozenset({"h264"})
COPYABLE_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})

_NEVER = 2**31 - 2  # a cut the segment muxer accepts (< INT_MAX) and no stream reaches


class Keyframe(Model):
    packet: int = Field(ge=0, description="decode-order index among the stream's packets")
    time_s: float = Field(description="pts relative to the stream's first frame")


class SourceInfo(Model):
    format_name: str
    codec: str
    pix_fmt: str | None
    width: int
    height: int
    rotation: int = Field(ge=0, lt=360, description="display rotation, degrees counter-clockwise")
    fps: float = Field(gt=0)
    frame_rate: str = Field(description="exact average rate as num/den, for ffmpeg's -r")
    variable_frame_rate: bool
    has_audio: bool
    duration_s: float = Field(gt=0)
    frame_count: int
    keyframes: list[Keyframe]

    @property
    def keyframe_times_s(self) -> list[float]:
        return [k.time_s for k in self.keyframes]


class PlannedSegment(Model):
    index: int
    start_s: float
    duration_s: float
    start_packet: int | None = Field(default=None, description="the keyframe a copy cut starts at")


class SplitPlan(Model):
    method: Literal["copy", "mezzanine"]
    reasons: list[str] = Field(description="why stream copy is not possible; empty for copy")
    segment_s: float
    frame_rate: str
    segments: list[PlannedSegment] = Field(min_length=1)


class SourceSegment(Model):
    index: int
    start_s: float
    duration_s: float
    path: Path
    sha256: str


# --- inspecting and planning ----------------------------------------------------------------

def inspect_source(path: PathLike) -> SourceInfo:
    """Describe the source's first video stream in one demux pass, decoding only its first frame.

    Raises MediaError: input_empty, media_unreadable, no_video_stream, media_undecodable or
    not_a_video.
    """
    with open_media(path) as container:
        stream = video_stream(container)
        seen = demux(container, stream, first_frame=True)
        if is_still(container, seen):
            raise MediaError("a single picture, not a video", reason="not_a_video")
        return _source_info(container, stream, seen)


def _source_info(container, stream, seen: Packets) -> SourceInfo:
    ctx = stream.codec_context
    span = span_s(seen)
    rate = Fraction(stream.average_rate) if stream.average_rate else None
    if rate is None and span > 0:
        rate = Fraction(seen.count / span).limit_denominator(1001)
    if rate is None or rate <= 0:
        raise MediaError("video has no measurable frame rate", reason="media_unreadable")
    duration = span or seen.count / float(rate)
    origin = min(seen.pts, default=0)
    return SourceInfo(
        format_name=container.format.name,
        codec=ctx.name or "unknown",
        pix_fmt=ctx.pix_fmt,
        width=ctx.width,
        height=ctx.height,
        rotation=display_rotation(seen.first_frame, stream),
        fps=float(rate),
        frame_rate=f"{rate.numerator}/{rate.denominator}",
        variable_frame_rate=is_vfr(seen),
        has_audio=bool(container.streams.audio),
        duration_s=duration,
        frame_count=seen.count,
        keyframes=[Keyframe(packet=index, time_s=float((pts - origin) * seen.time_base))
                   for index, pts in seen.keyframes],
    )


class HeaderProbe(Model):
    """A source as its header describes it: read without fetching the whole file."""
    codec: str
    width: int
    height: int
    rotation: int = Field(ge=0, lt=360)
    frame_rate: str
    has_audio: bool
    duration_s: float = Field(gt=0)


def probe_header(location: str, *, timeout_s: float = 30) -> HeaderProbe:
    """Open a source where it lies (a path or an http(s) URL, read with range requests) and
    read its header and first video frame only."""
    try:
        with av.open(location, timeout=timeout_s) as container:
            stream = video_stream(container)
            first = next(container.decode(stream), None)    # its display matrix
            duration = (float(container.duration) / av.time_base if container.duration
                        else float(stream.duration * stream.time_base) if stream.duration
                        else 0.0)
            rate = Fraction(stream.average_rate or 0)
            if duration <= 0 or rate <= 0:
                raise MediaError("the source's header gives no duration or frame rate",
                                 reason="media_unreadable")
            return HeaderProbe(codec=stream.codec_context.name or "unknown",
                               width=stream.codec_context.width,
                               height=stream.codec_context.height,
                               rotation=display_rotation(first, stream),
                               frame_rate=f"{rate.numerator}/{rate.denominator}",
                               has_audio=bool(container.streams.audio), duration_s=duration)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read the source's header: {exc}",
                         reason="media_unreadable") from exc


def measure_client_segment(path: PathLike) -> client_split.Measured:
    """One segment a client cut, as the planner holds it against the source."""
    info = inspect_source(path)
    return client_split.Measured(
        codec=info.codec, pix_fmt=info.pix_fmt, width=info.width, height=info.height,
        rotation=info.rotation, frame_rate=info.frame_rate,
        variable_frame_rate=info.variable_frame_rate,
        starts_on_keyframe=bool(info.keyframes) and info.keyframes[0].packet == 0,
        duration_s=info.duration_s)


def plan_split(info: SourceInfo, segment_s: float) -> SplitPlan:
    """Decide between stream copy and a mezzanine re-encode, and where segments start.

    Copy cuts at the source's own keyframes nearest each multiple of `segment_s`; the mezzanine
    forces keyframes at the exact multiples. The last segment may be shorter.
    """
    if segment_s <= 0:
        raise ValueError("segment_s must be positive")
    targets = _targets(info, segment_s)
    cuts = _keyframe_cuts(info, targets)
    reasons = _copy_blockers(info)
    if cuts is None:
        reasons.append("keyframes_unaligned")
    if reasons or cuts is None:
        starts: list[tuple[float, int | None]] = [(t, None) for t in targets]
    else:
        starts = [(0.0, 0), *((k.time_s, k.packet) for k in cuts[1:])]
    ends = [t for t, _ in starts[1:]] + [info.duration_s]
    return SplitPlan(
        method="mezzanine" if reasons else "copy",
        reasons=reasons,
        segment_s=segment_s,
        frame_rate=info.frame_rate,
        segments=[PlannedSegment(index=i, start_s=start, duration_s=end - start,
                                 start_packet=packet)
                  for i, ((start, packet), end) in enumerate(zip(starts, ends))],
    )


def _targets(info: SourceInfo, segment_s: float) -> list[float]:
    # Half a frame of slack keeps timestamp rounding from making a trailing empty segment.
    count = max(1, math.ceil((info.duration_s - 0.5 / info.fps) / segment_s))
    return [k * segment_s for k in range(count)]


def _keyframe_cuts(info: SourceInfo, targets: list[float]) -> list[Keyframe] | None:
    """The keyframe nearest each target, or None if one is missing or the first packet is not
    a keyframe (a segment must open with one)."""
    if not info.keyframes or info.keyframes[0].packet != 0:
        return None
    cuts = [info.keyframes[0]]
    for target in targets[1:]:
        near = [k for k in info.keyframes if abs(k.time_s - target) <= CUT_TOLERANCE_S]
        if not near:
            return None
        cuts.append(min(near, key=lambda k: abs(k.time_s - target)))
    if any(b.packet <= a.packet for a, b in zip(cuts, cuts[1:])):
        return None
    return cuts


def _copy_blockers(info: SourceInfo) -> list[str]:
    checks = {
        "codec": info.codec not in COPYABLE_CODECS,
        "pixel_format": info.pix_fmt not in COPYABLE_PIX_FMTS,
        "rotated": info.rotation != 0,
        "odd_dimensions": info.width % 2 != 0 or info.height % 2 != 0,
        "variable_frame_rate": info.variable_frame_rate,
    }
    return [reason for reason, blocked in checks.items() if blocked]


# --- splitting ------------------------------------------------------------------------------

def split_source(path: PathLike, out_dir: PathLike, plan: SplitPlan, *,
                 timeout_s: float) -> list[SourceSegment]:
    """Cut `path` into video-only segments under `out_dir` as `plan` says, within `timeout_s`.

    A mezzanine plan re-encodes first and then cuts the mezzanine by stream copy. Durations and
    starts come from measuring the written files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob(f"{SEGMENT_PREFIX}*")):
        raise ValueError(f"{out} already holds segments")
    deadline = time.monotonic() + timeout_s
    if plan.method == "copy":
        return _copy_split(Path(path), out, plan, deadline=deadline)
    mezzanine = out / f"mezzanine{SEGMENT_SUFFIX}"
    try:
        _encode_mezzanine(Path(path), mezzanine, plan, deadline=deadline)
        aligned = plan_split(inspect_source(mezzanine), plan.segment_s)
        if aligned.method != "copy":
            raise ExecutionError("the mezzanine still cannot be cut by stream copy",
                                 reason="mezzanine_unaligned", details=aligned.reasons)
        return _copy_split(mezzanine, out, aligned, deadline=deadline)
    finally:
        mezzanine.unlink(missing_ok=True)


def _encode_mezzanine(src: Path, dst: Path, plan: SplitPlan, *, deadline: float) -> None:
    keyframes = ",".join(f"{s.start_s:.6f}" for s in plan.segments)
    run_ffmpeg([
        # ffmpeg autorotates by default, so the display matrix is applied and not carried over.
        "-i", os.fspath(src), "-map", "0:v:0", "-an", "-sn", "-dn",
        # Forced keyframe times count from the first video frame, wherever the audio started.
        "-vf", "setpts=PTS-STARTPTS,scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p",
        "-fps_mode", "cfr", "-r", plan.frame_rate,
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12",
        "-force_key_frames", keyframes,
        "-map_metadata", "-1", "-map_chapters", "-1",
        "-f", SEGMENT_FORMAT, "-y", os.fspath(dst),
    ], timeout_s=_remaining(deadline))


def _copy_split(src: Path, out: Path, plan: SplitPlan, *, deadline: float) -> list[SourceSegment]:
    cuts = [s.start_packet for s in plan.segments[1:]]
    if None in cuts:
        raise ValueError("a copy split needs the keyframe packet of every cut")
    run_ffmpeg([
        "-i", os.fspath(src), "-map", "0:v:0", "-an", "-sn", "-dn", "-c", "copy",
        "-map_metadata", "-1", "-map_chapters", "-1",
        # The same cut of the same source is the same bytes (no random Matroska id or date):
        # a retried upload dedupes, and a retried submission is the same manifest.
        "-fflags", "+bitexact",
        # Otherwise a B-frame source's first segment starts at its decode delay, not at 0.
        "-avoid_negative_ts", "disabled",
        "-f", "segment", "-segment_format", SEGMENT_FORMAT, "-reset_timestamps", "1",
        # Cutting by packet count, not time, leaves nothing to how ffmpeg offsets timestamps
        # (which streams set the start, rounding of the times given) across versions.
        "-segment_frames", ",".join(str(c) for c in cuts or [_NEVER]),
        os.fspath(out / f"{SEGMENT_PREFIX}%05d{SEGMENT_SUFFIX}"),
    ], timeout_s=_remaining(deadline))
    files = sorted(out.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))
    if len(files) != len(plan.segments):
        raise ExecutionError(f"planned {len(plan.segments)} segments, ffmpeg wrote {len(files)}",
                             reason="split_mismatch", details=[f.name for f in files])
    return _describe(files)


def _describe(files: list[Path]) -> list[SourceSegment]:
    segments: list[SourceSegment] = []
    start = 0.0
    for index, file in enumerate(files):
        duration = measure_segment(file).duration_s
        segments.append(SourceSegment(index=index, start_s=start, duration_s=duration,
                                      path=file, sha256=sha256_file(file)))
        start += duration
    return segments


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FfmpegTimeout("no time left for the next ffmpeg step")
    return left
