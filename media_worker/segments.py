"""The FFmpeg/PyAV side of the segment pipeline: inspect a source, plan and cut it into
video-only segments, and measure what came out.

FFmpeg cuts and encodes; PyAV takes every measurement, so reported numbers describe the files
on disk rather than what a command was asked to produce. Segments carry no audio: audio
encoded per segment drifts at the joins (AAC priming), so the pipeline handles it separately.
"""
from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal

import av
import imageio_ffmpeg
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from chalicelib.errors import ExecutionError, FfmpegFailed, FfmpegTimeout, MediaError
from chalicelib.media import sha256_file

PathLike = str | os.PathLike

# Matroska segments start at 0 after -reset_timestamps and keep frame durations. MPEG-TS
# shifts every segment by its 1.4 s mux delay (B-frame streams by their decode delay on top),
# and a TS cut short still decodes without a word.
SEGMENT_FORMAT = "matroska"
SEGMENT_SUFFIX = ".mkv"
SEGMENT_PREFIX = "segment_"
CUT_TOLERANCE_S = 0.1
COPYABLE_CODECS = frozenset({"h264"})
COPYABLE_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})

_STDERR_TAIL = 4096
_VFR_MIN_JITTER_S = 0.002  # a 1 ms time base rounds 29.97 fps to 33/34 ms steps: still CFR
_VFR_JITTER_RATIO = 0.1
_FIRST_FRAME_PACKETS = 64  # packets tried for a first frame before calling a video undecodable
_NEVER = 2**31 - 2  # a cut the segment muxer accepts (< INT_MAX) and no stream reaches
_SSIM_WINDOW = 7
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class FfmpegRun(_Model):
    args: list[str]
    returncode: int
    stderr: str
    wall_s: float


class Keyframe(_Model):
    packet: int = Field(ge=0, description="decode-order index among the stream's packets")
    time_s: float = Field(description="pts relative to the stream's first frame")


class SourceInfo(_Model):
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


class PlannedSegment(_Model):
    index: int
    start_s: float
    duration_s: float
    start_packet: int | None = Field(default=None, description="the keyframe a copy cut starts at")


class SplitPlan(_Model):
    method: Literal["copy", "mezzanine"]
    reasons: list[str] = Field(description="why stream copy is not possible; empty for copy")
    segment_s: float
    frame_rate: str
    segments: list[PlannedSegment] = Field(min_length=1)


class SourceSegment(_Model):
    index: int
    start_s: float
    duration_s: float
    path: Path
    sha256: str


class SegmentMeasure(_Model):
    format_name: str
    codec: str
    profile: str | None
    width: int
    height: int
    duration_s: float
    frame_count: int
    fps: float
    starts_with_keyframe: bool
    keyframe_interval_s: float = Field(description="longest stretch a keyframe has to cover")
    has_audio: bool
    start_pts_s: float


class SsimResult(_Model):
    indices: list[int]
    values: list[float]
    min: float
    mean: float


class DecodeCheck(_Model):
    ok: bool
    returncode: int
    stderr: str
    wall_s: float


# --- running ffmpeg -------------------------------------------------------------------------

def run_ffmpeg(args: list[str], *, timeout_s: float) -> FfmpegRun:
    """Run ffmpeg with `args`; raise FfmpegTimeout or FfmpegFailed (stderr in the details)."""
    run = _execute(args, timeout_s=timeout_s)
    if run.returncode != 0:
        raise FfmpegFailed(f"ffmpeg exited with {run.returncode}: {run.stderr[-300:].strip()}",
                           details=run.model_dump())
    return run


def decode_check(path: PathLike, *, timeout_s: float) -> DecodeCheck:
    """Decode everything in a file or playlist; ok only if ffmpeg exits 0 and says nothing.

    The HLS demuxer skips a segment it cannot open with only a warning, so a playlist missing
    its last segment still passes: check a playlist's segments separately.
    """
    # -xerror fails packets the demuxer flags corrupt, e.g. the TS discontinuity where a
    # playlist's middle segment is missing; otherwise those are only warnings.
    run = _execute(["-xerror", "-i", os.fspath(path), "-f", "null", "-"], timeout_s=timeout_s)
    ok = run.returncode == 0 and not run.stderr.strip()
    return DecodeCheck(ok=ok, returncode=run.returncode, stderr=run.stderr, wall_s=run.wall_s)


def _execute(args: list[str], *, timeout_s: float) -> FfmpegRun:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    started = time.monotonic()
    try:
        # stdout is discarded: nothing here pipes media out, and it could be unbounded.
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        details = {"args": args, "timeout_s": timeout_s, "stderr": _tail(exc.stderr)}
        raise FfmpegTimeout(f"ffmpeg ran past {timeout_s:g}s", details=details) from None
    return FfmpegRun(args=args, returncode=proc.returncode, stderr=_tail(proc.stderr),
                     wall_s=time.monotonic() - started)


def _tail(stderr: bytes | None) -> str:
    text = (stderr or b"").decode("utf-8", errors="replace")
    if len(text) <= _STDERR_TAIL:
        return text
    tail = text[-_STDERR_TAIL:]
    return tail[tail.find("\n") + 1:]  # whole lines only; the first one was cut


# --- reading media with PyAV ----------------------------------------------------------------

@dataclass
class _Packets:
    """What one demux pass over a video stream saw, in the stream's time base."""
    time_base: Fraction
    count: int
    pts: list[int]
    keyframes: list[tuple[int, int]]  # (decode-order index, pts)
    starts_with_keyframe: bool
    end_pts: int | None
    first_frame: av.VideoFrame | None


@contextmanager
def _open(path: PathLike) -> Iterator[av.container.InputContainer]:
    if Path(path).stat().st_size == 0:
        raise MediaError("input file is empty", reason="input_empty")
    try:
        with av.open(os.fspath(path)) as container:
            yield container
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read media: {exc}", reason="media_unreadable") from exc


def _video_stream(container) -> av.video.stream.VideoStream:
    # Cover art in an audio file is a one-picture "video" stream; it is not a video.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError("no video stream", reason="no_video_stream")


def _demux(container, stream, *, first_frame: bool) -> _Packets:
    """Read every packet of `stream` without decoding, except up to the first frame if asked."""
    seen = _Packets(time_base=stream.time_base, count=0, pts=[], keyframes=[],
                    starts_with_keyframe=False, end_pts=None, first_frame=None)
    error: av.FFmpegError | None = None
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet demux() yields at the end
            continue
        _record(seen, packet)
        if first_frame and seen.first_frame is None and seen.count <= _FIRST_FRAME_PACKETS:
            try:
                seen.first_frame = next(iter(packet.decode()), None)
            except av.FFmpegError as exc:  # leading packets may need references they lack
                error = exc
    if first_frame and seen.first_frame is None:
        seen.first_frame = _flush_first_frame(stream)
        if seen.first_frame is None:
            raise MediaError(f"video does not decode: {error or 'no frames'}",
                             reason="media_undecodable")
    return seen


def _record(seen: _Packets, packet: av.Packet) -> None:
    if seen.count == 0:
        seen.starts_with_keyframe = packet.is_keyframe
    if packet.pts is not None:
        seen.pts.append(packet.pts)
        if packet.is_keyframe:
            seen.keyframes.append((seen.count, packet.pts))
        end = packet.pts + (packet.duration or 0)
        seen.end_pts = end if seen.end_pts is None else max(seen.end_pts, end)
    seen.count += 1


def _flush_first_frame(stream) -> av.VideoFrame | None:
    # Frame-threaded decoders hold frames back until they are drained.
    try:
        return next(iter(stream.codec_context.decode(None)), None)
    except av.FFmpegError:
        return None


def _span_s(seen: _Packets) -> float:
    """Presentation span from the first pts to the end of the last frame."""
    ordered = sorted(seen.pts)
    if not ordered:
        return 0.0
    end = seen.end_pts if seen.end_pts is not None else ordered[-1]
    if end <= ordered[-1] and len(ordered) > 1:  # the container kept no frame durations
        end = ordered[-1] + statistics.median(b - a for a, b in zip(ordered, ordered[1:]))
    return float((end - ordered[0]) * seen.time_base)


def _is_vfr(seen: _Packets) -> bool:
    ordered = sorted(seen.pts)
    deltas = [b - a for a, b in zip(ordered, ordered[1:])]
    if len(deltas) < 2:
        return False
    median = statistics.median(deltas)
    tolerance = max(_VFR_MIN_JITTER_S, _VFR_JITTER_RATIO * float(median * seen.time_base))
    return any(abs(float((d - median) * seen.time_base)) > tolerance for d in deltas)


def _rotation(frame: av.VideoFrame, stream) -> int:
    # PyAV exposes the display matrix only on decoded frames (counter-clockwise degrees).
    rotation = getattr(frame, "rotation", 0) or 0
    if not rotation:
        try:  # a legacy `rotate` tag, which counts clockwise
            rotation = -int(stream.metadata.get("rotate", 0))
        except ValueError:
            rotation = 0
    return int(round(rotation)) % 360


def _is_still(container, seen: _Packets) -> bool:
    name = container.format.name
    return seen.count < 2 or name == "image2" or name.endswith("_pipe")


# --- inspecting and planning ----------------------------------------------------------------

def inspect_source(path: PathLike) -> SourceInfo:
    """Describe the source's first video stream in one demux pass, decoding only its first frame.

    Raises MediaError: input_empty, media_unreadable, no_video_stream, media_undecodable or
    not_a_video.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        seen = _demux(container, stream, first_frame=True)
        if _is_still(container, seen):
            raise MediaError("a single picture, not a video", reason="not_a_video")
        return _source_info(container, stream, seen)


def _source_info(container, stream, seen: _Packets) -> SourceInfo:
    ctx = stream.codec_context
    span = _span_s(seen)
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
        rotation=_rotation(seen.first_frame, stream),
        fps=float(rate),
        frame_rate=f"{rate.numerator}/{rate.denominator}",
        variable_frame_rate=_is_vfr(seen),
        has_audio=bool(container.streams.audio),
        duration_s=duration,
        frame_count=seen.count,
        keyframes=[Keyframe(packet=index, time_s=float((pts - origin) * seen.time_base))
                   for index, pts in seen.keyframes],
    )


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


# --- measuring ------------------------------------------------------------------------------

def measure_segment(path: PathLike) -> SegmentMeasure:
    """Measure a segment from its packets (no decoding). Raises MediaError if it has no video."""
    with _open(path) as container:
        stream = _video_stream(container)
        seen = _demux(container, stream, first_frame=False)
        if not seen.pts:
            raise MediaError("segment holds no timed video frames", reason="media_undecodable")
        ctx = stream.codec_context
        duration = _span_s(seen)
        start = min(seen.pts)
        return SegmentMeasure(
            format_name=container.format.name,
            codec=ctx.name or "unknown",
            profile=stream.profile or None,
            width=ctx.width,
            height=ctx.height,
            duration_s=duration,
            frame_count=seen.count,
            fps=seen.count / duration if duration > 0 else 0.0,
            starts_with_keyframe=seen.starts_with_keyframe,
            keyframe_interval_s=_keyframe_interval_s(seen, start, duration),
            has_audio=bool(container.streams.audio),
            start_pts_s=float(start * seen.time_base),
        )


def _keyframe_interval_s(seen: _Packets, start: int, duration_s: float) -> float:
    """Longest gap between keyframes, counting the segment's start and end as edges."""
    times = sorted(float((pts - start) * seen.time_base) for _, pts in seen.keyframes)
    edges = [0.0, *times, duration_s]
    return max(b - a for a, b in zip(edges, edges[1:]))


# --- comparing content ----------------------------------------------------------------------

SSIM_MAX_PIXELS = 640 * 360


def ssim_sampled(reference_path: PathLike, candidate_path: PathLike, *,
                 samples: int = 3) -> SsimResult:
    """Luma SSIM at `samples` evenly spaced frame indices, at the candidate's resolution.

    Only the sampled frames are kept. An index one side's decoder never yields (fewer frames
    decode than its packets promised) scores 0.
    """
    if samples < 1:
        raise ValueError("samples must be at least 1")
    count = min(_frame_count(reference_path), _frame_count(candidate_path))
    if count == 0:
        raise MediaError("no video frames to compare", reason="media_undecodable")
    indices = sorted({int((i + 0.5) * count / samples) for i in range(samples)})
    size = _compare_size(candidate_path)
    candidate = _sample_luma(candidate_path, indices, size=size)
    reference = _sample_luma(reference_path, indices, size=size)
    values = [_ssim(reference[i], candidate[i]) if i in reference and i in candidate else 0.0
              for i in indices]
    return SsimResult(indices=indices, values=values, min=min(values),
                      mean=sum(values) / len(values))


def _frame_count(path: PathLike) -> int:
    with _open(path) as container:
        return _demux(container, _video_stream(container), first_frame=False).count


def _sample_luma(path: PathLike, indices: list[int],
                 size: tuple[int, int]) -> dict[int, np.ndarray]:
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"          # frame threads: the whole segment up to the last sample
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                width, height = size
                frames[index] = frame.reformat(width=width, height=height,
                                               format="gray").to_ndarray()
            if index >= indices[-1]:
                break
    return frames


def _compare_size(path: PathLike) -> tuple[int, int]:
    """The candidate's size, scaled down to at most SSIM_MAX_PIXELS: a content check needs
    structure, not every pixel, and SSIM's cost grows with the area (a 1080p frame costs
    about ten times a 640x360 one)."""
    with _open(path) as container:
        ctx = _video_stream(container).codec_context
        width, height = ctx.width, ctx.height
    scale = min(1.0, (SSIM_MAX_PIXELS / (width * height)) ** 0.5)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    window = min(_SSIM_WINDOW, *x.shape)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = _box_mean(x * x, window) - mx * mx
    vy = _box_mean(y * y, window) - my * my
    cov = _box_mean(x * y, window) - mx * my
    ssim = ((2 * mx * my + _SSIM_C1) * (2 * cov + _SSIM_C2)
            / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2)))
    return float(ssim.mean())


def _box_mean(a: np.ndarray, window: int) -> np.ndarray:
    """Mean over every window x window block that fits, via a summed-area table."""
    table = np.pad(a.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    sums = (table[window:, window:] - table[:-window, window:]
            - table[window:, :-window] + table[:-window, :-window])
    return sums / (window * window)
