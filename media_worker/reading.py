"""Reading media with PyAV, shared by source inspection and segment measurement: one demux
pass over a video stream (decoding at most its first frame), and what its packets say.
"""
from __future__ import annotations

import os
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
from pydantic import BaseModel, ConfigDict

from chalicelib.errors import MediaError

PathLike = str | os.PathLike

_VFR_MIN_JITTER_S = 0.002  # a 1 ms time base rounds 29.97 fps to 33/34 ms steps: still CFR
_VFR_JITTER_RATIO = 0.1
_FIRST_FRAME_PACKETS = 64  # packets tried for a first frame before calling a video undecodable


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


@dataclass
class Packets:
    """What one demux pass over a video stream saw, in the stream's time base."""
    time_base: Fraction
    count: int
    pts: list[int]
    keyframes: list[tuple[int, int]]  # (decode-order index, pts)
    starts_with_keyframe: bool
    end_pts: int | None
    first_frame: av.VideoFrame | None

    @classmethod
    def of(cls, stream) -> "Packets":
        return cls(time_base=stream.time_base, count=0, pts=[], keyframes=[],
                   starts_with_keyframe=False, end_pts=None, first_frame=None)


# Opening a file FFmpeg decodes frames to guess its frame rate; what measures a segment
# counts its packets instead, and opens it in a quarter of the time without that guess.
_NO_RATE_GUESS = {"fpsprobesize": "0"}


@contextmanager
def open_media(path: PathLike, *, guess_rate: bool = True
               ) -> Iterator[av.container.InputContainer]:
    if Path(path).stat().st_size == 0:
        raise MediaError("input file is empty", reason="input_empty")
    try:
        with av.open(os.fspath(path), options=None if guess_rate else _NO_RATE_GUESS
                     ) as container:
            yield container
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read media: {exc}", reason="media_unreadable") from exc


def video_stream(container) -> av.video.stream.VideoStream:
    # Cover art in an audio file is a one-picture "video" stream; it is not a video.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError("no video stream", reason="no_video_stream")


def demux(container, stream, *, first_frame: bool) -> Packets:
    """Read every packet of `stream` without decoding, except up to the first frame if asked."""
    seen = Packets.of(stream)
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


def decode_recording(container, stream, seen: Packets) -> Iterator[av.VideoFrame]:
    """Every frame of `stream`, each packet recorded in `seen` as `demux` records it: what
    the packets say and what the frames show from one pass (the end's flush packet drains a
    frame-threaded decoder)."""
    for packet in container.demux(stream):
        if packet.size:
            _record(seen, packet)
        yield from packet.decode()


def _record(seen: Packets, packet: av.Packet) -> None:
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


def span_s(seen: Packets) -> float:
    """Presentation span from the first pts to the end of the last frame."""
    ordered = sorted(seen.pts)
    if not ordered:
        return 0.0
    end = seen.end_pts if seen.end_pts is not None else ordered[-1]
    if end <= ordered[-1] and len(ordered) > 1:  # the container kept no frame durations
        end = ordered[-1] + statistics.median(b - a for a, b in zip(ordered, ordered[1:]))
    return float((end - ordered[0]) * seen.time_base)


def is_vfr(seen: Packets) -> bool:
    ordered = sorted(seen.pts)
    deltas = [b - a for a, b in zip(ordered, ordered[1:])]
    if len(deltas) < 2:
        return False
    median = statistics.median(deltas)
    tolerance = max(_VFR_MIN_JITTER_S, _VFR_JITTER_RATIO * float(median * seen.time_base))
    return any(abs(float((d - median) * seen.time_base)) > tolerance for d in deltas)


def display_rotation(frame: av.VideoFrame, stream) -> int:
    # PyAV exposes the display matrix only on decoded frames (counter-clockwise degrees).
    rotation = getattr(frame, "rotation", 0) or 0
    if not rotation:
        try:  # a legacy `rotate` tag, which counts clockwise
            rotation = -int(stream.metadata.get("rotate", 0))
        except ValueError:
            rotation = 0
    return int(round(rotation)) % 360


def is_still(container, seen: Packets) -> bool:
    name = container.format.name
    return seen.count < 2 or name == "image2" or name.endswith("_pipe")
