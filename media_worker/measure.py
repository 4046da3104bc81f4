"""Measuring what the pipeline wrote, from the files on disk: a segment's video stream from
its packets, and its content against its source by sampled luma SSIM.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from chalicelib.errors import MediaError

from .reading import Model, Packets, PathLike, demux, open_media, span_s, video_stream

_SSIM_WINDOW = 7
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


class SegmentMeasure(Model):
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


class SsimResult(Model):
    indices: list[int]
    values: list[float]
    min: float
    mean: float


# --- measuring ------------------------------------------------------------------------------

def measure_segment(path: PathLike) -> SegmentMeasure:
    """Measure a segment from its packets (no decoding). Raises MediaError if it has no video."""
    with open_media(path) as container:
        stream = video_stream(container)
        seen = demux(container, stream, first_frame=False)
        if not seen.pts:
            raise MediaError("segment holds no timed video frames", reason="media_undecodable")
        ctx = stream.codec_context
        duration = span_s(seen)
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


def _keyframe_interval_s(seen: Packets, start: int, duration_s: float) -> float:
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
    with open_media(path) as container:
        return demux(container, video_stream(container), first_frame=False).count


def _sample_luma(path: PathLike, indices: list[int],
                 size: tuple[int, int]) -> dict[int, np.ndarray]:
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    with open_media(path) as container:
        stream = video_stream(container)
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
    with open_media(path) as container:
        ctx = video_stream(container).codec_context
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
