"""Segments a client cut from its source itself (`Manifest.segments`, sent by `proofline
transcode`, which splits while it uploads, so the planner neither fetches nor cuts the
source): the rules that hold them to the source.

At the door, the listing: contiguous from 0, none longer than the profile's segment (plus
the cut tolerance the planner's own split allows). In the planner, before any task runs,
each segment as measured against the source's own header: H.264 in 4:2:0 at the source's
constant frame rate, upright, starting on a keyframe, the picture size the source shows,
each as long as listed and all together as long as the source. What the pictures show is the
client's own business (it pays for the video it sent), not the planner's. So a client can neither pay for less video
than it sent nor hand a worker a segment that makes honest work look wrong. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from chalicelib.models import SegmentRef

LISTING_TOLERANCE_S = 0.002       # the listing's own arithmetic (starts are sums of durations)
CUT_TOLERANCE_S = 0.2             # a keyframe this near a boundary is cut at (and a frame)
SOURCE_TOLERANCE_S = 0.25         # a container's duration and its video's differ by rounding
CODECS = frozenset({"h264"})
PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})


@dataclass(frozen=True)
class Measured:
    """What the planner read from one segment's bytes."""
    codec: str
    pix_fmt: str | None
    width: int
    height: int
    rotation: int
    frame_rate: str
    variable_frame_rate: bool
    starts_on_keyframe: bool
    duration_s: float


@dataclass(frozen=True)
class SourceHeader:
    """What the source's header says (read without fetching the source)."""
    width: int
    height: int
    rotation: int
    frame_rate: str
    duration_s: float


def listing_problems(segments: Sequence[SegmentRef], segment_s: float) -> list[str]:
    """What is wrong with a listing on its face (empty when nothing is)."""
    problems, expected = [], 0.0
    for index, segment in enumerate(segments):
        if abs(segment.start_s - expected) > LISTING_TOLERANCE_S:
            problems.append(f"segment {index} starts at {segment.start_s:.3f} s, where segment "
                            f"{index - 1} ended ({expected:.3f} s)" if index else
                            f"segment 0 starts at {segment.start_s:.3f} s, not 0")
        if segment.duration_s > segment_s + CUT_TOLERANCE_S:
            problems.append(f"segment {index} lasts {segment.duration_s:.3f} s, longer than "
                            f"the profile's {segment_s:g} s segments")
        expected = segment.start_s + segment.duration_s
    uris = [s.input_uri for s in segments]
    if len(set(uris)) != len(uris):
        problems.append("a segment is listed twice")
    return problems


def display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """The picture a source shows, as the planner's own split writes it: rotated upright,
    each side rounded down to even."""
    if rotation in (90, 270):
        width, height = height, width
    return width - width % 2, height - height % 2


def measured_problems(claimed: Sequence[SegmentRef], measured: Sequence[Measured],
                      source: SourceHeader) -> list[str]:
    """Where the segments as measured are not the source cut as listed (empty when none)."""
    problems = []
    expected = display_size(source.width, source.height, source.rotation)
    rates = {m.frame_rate for m in measured}
    if rates != {source.frame_rate}:
        problems.append(f"the segments run at {sorted(rates)} frames a second; the source at "
                        f"{source.frame_rate}")
    for index, (listed, found) in enumerate(zip(claimed, measured)):
        where = f"segment {index}"
        if found.codec not in CODECS or found.pix_fmt not in PIX_FMTS:
            problems.append(f"{where} is {found.codec}/{found.pix_fmt}, not H.264 4:2:0")
        if found.rotation or found.variable_frame_rate:
            problems.append(f"{where} is rotated or has a variable frame rate")
        if (found.width, found.height) != expected:
            problems.append(f"{where} is {found.width}x{found.height}; the source shows "
                            f"{expected[0]}x{expected[1]}")
        if not found.starts_on_keyframe:
            problems.append(f"{where} does not start on a keyframe")
        frame = 1 / float(Fraction(found.frame_rate)) if found.frame_rate else 0.0
        if abs(found.duration_s - listed.duration_s) > frame + LISTING_TOLERANCE_S:
            problems.append(f"{where} lasts {found.duration_s:.3f} s, listed as "
                            f"{listed.duration_s:.3f} s")
    total = sum(m.duration_s for m in measured)
    if abs(total - source.duration_s) > SOURCE_TOLERANCE_S:
        problems.append(f"the segments last {total:.3f} s together; the source lasts "
                        f"{source.duration_s:.3f} s")
    return problems
