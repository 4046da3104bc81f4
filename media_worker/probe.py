"""Probe a local media file into a `ProbeReport`, with PyAV only (there is no ffprobe in
the Lambda image). Every way an input can be unusable maps to a `MediaError` with a stable
reason code, so a job fails permanently with a reason a caller can act on instead of
crashing the worker."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av

from chalicelib.errors import MediaError
from chalicelib.media.probe import _STREAM_TYPES, ProbeReport, StreamInfo


def probe(path: str | os.PathLike) -> ProbeReport:
    """Describe `path`, proving the first video stream decodes. Raises MediaError if unusable.

    A missing file raises OSError, not MediaError: the worker staged it, so that is our bug.
    """
    size = Path(path).stat().st_size
    if size == 0:
        raise MediaError("input file is empty", reason="input_empty")
    try:
        with av.open(os.fspath(path)) as container:
            return _report(container, size)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read media: {exc}", reason="media_unreadable") from exc


def _report(container, size: int) -> ProbeReport:
    streams = [_stream_info(s) for s in container.streams]
    if not any(s.type in ("video", "audio") for s in streams):
        raise MediaError("no audio or video stream", reason="no_media_streams")
    video = next((s for s in streams if s.type == "video"), None)
    first_frame = None
    if video is not None:
        first_frame = _first_frame(container, container.streams[video.index])
        video.rotation = _rotation(first_frame, container.streams[video.index])
    duration = _duration(container, streams, first_frame)
    if duration is None:
        raise MediaError("media has no measurable duration", reason="media_unreadable")
    return ProbeReport(
        format_name=container.format.name,
        duration_s=duration,
        size_bytes=size,
        bit_rate=container.bit_rate or None,
        streams=streams,
        video=video,
        has_audio=any(s.type == "audio" for s in streams),
    )


def _stream_info(stream) -> StreamInfo:
    ctx = stream.codec_context
    kind = stream.type if stream.type in _STREAM_TYPES else "unknown"
    info = StreamInfo(
        index=stream.index,
        type=kind,
        codec=(ctx.name if ctx is not None else None) or "unknown",
        profile=stream.profile or None,
        duration_s=_seconds(stream.duration, stream.time_base),
        frames=stream.frames or None,  # 0 means the container does not say
    )
    if kind == "video":
        info.width, info.height = ctx.width or None, ctx.height or None
        info.pix_fmt = ctx.pix_fmt
        info.frame_rate = float(stream.average_rate) if stream.average_rate else None
    elif kind == "audio":
        info.sample_rate = ctx.sample_rate or None
        info.channels = ctx.channels or None
    return info


def _first_frame(container, stream):
    # One frame is enough to prove the codec and bitstream work; decoding more costs Lambda time.
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise MediaError(f"video does not decode: {exc}", reason="media_undecodable") from exc
    raise MediaError("video stream yields no frames", reason="media_undecodable")


def _rotation(frame, stream) -> int:
    # Decoders copy the display matrix onto frames; older files carry a `rotate` tag instead.
    rotation = getattr(frame, "rotation", 0) or 0
    if not rotation:
        try:
            rotation = int(stream.metadata.get("rotate", 0))
        except ValueError:
            rotation = 0
    return int(rotation) % 360  # one convention (0..359) whatever sign the source used


def _duration(container, streams: list[StreamInfo], first_frame) -> float | None:
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    known = [s.duration_s for s in streams if s.duration_s and s.duration_s > 0]
    if known:
        return max(known)
    # A still image has no duration anywhere but its one frame's display time.
    if first_frame is not None and first_frame.duration:
        return _seconds(first_frame.duration, first_frame.time_base)
    return None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if not value or time_base is None:
        return None
    return float(value * time_base)
