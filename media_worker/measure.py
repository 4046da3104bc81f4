"""Measuring what the pipeline wrote, from the files on disk: a segment's video stream from
its packets; its content against its source, every frame as a tiny luma fingerprint and
audited frames by full-resolution SSIM; and an audio track as band energies per window.
"""
from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from pydantic import Field

from chalicelib.errors import MediaError

from .reading import (
    Model,
    Packets,
    PathLike,
    decode_recording,
    demux,
    open_media,
    span_s,
    video_stream,
)

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


# --- measuring ------------------------------------------------------------------------------

def measure_segment(path: PathLike) -> SegmentMeasure:
    """Measure a segment from its packets (no decoding). Raises MediaError if it has no video."""
    with open_media(path, guess_rate=False) as container:
        stream = video_stream(container)
        return _measured(container, stream, demux(container, stream, first_frame=False))


def measure_with_fingerprints(path: PathLike, keep: frozenset[int] = frozenset()
                              ) -> tuple[SegmentMeasure, np.ndarray, dict[int, np.ndarray]]:
    """`measure_segment` and `fingerprints` from one open and one pass over the file (a
    check's candidate is read once). A frame in `keep` past the end stands for the last
    frame, kept under its own index."""
    with open_media(path, guess_rate=False) as container:
        stream = _threaded(video_stream(container))
        seen = Packets.of(stream)
        tiny, kept = _fingerprinted(decode_recording(container, stream, seen),
                                    FINGERPRINT_SIZE, keep)
        return _measured(container, stream, seen), tiny, kept


def _measured(container, stream, seen: Packets) -> SegmentMeasure:
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

FINGERPRINT_SIZE = (64, 36)        # every frame, this small: cheap, and enough to see content


def fingerprints(path: PathLike, size: tuple[int, int] = FINGERPRINT_SIZE,
                 keep: frozenset[int] = frozenset()
                 ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Every decoded frame of the video as tiny luma, shape (frames, height, width) uint8,
    and the full-resolution luma of the frames in `keep`. One decode covers every frame, so
    no frame can be faked unseen, and serves the full-resolution comparison too. The tiny
    picture is an area average made by swscale (one scaler kept for the whole decode):
    several times cheaper than averaging in numpy, and the same at every resolution. Kept
    frames are converted to gray by swscale, as `frames_at` converts them, so a source and
    an output compare in one luma range whatever their pixel formats."""
    with open_media(path, guess_rate=False) as container:
        stream = _threaded(video_stream(container))
        return _fingerprinted(container.decode(stream), size, keep)


def _fingerprinted(decoded, size: tuple[int, int], keep: frozenset[int]
                   ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    width, height = size
    tiny, kept, last = [], {}, None
    scaler = VideoReformatter()
    for index, frame in enumerate(decoded):
        small = scaler.reformat(frame, width=width, height=height, format="yuv420p",
                                interpolation="AREA")
        tiny.append(_plane(small, 0).copy())
        if index in keep:
            kept[index] = _gray(frame)
        last = frame
    if not tiny:
        raise MediaError("no video frames to compare", reason="media_undecodable")
    if keep and max(keep) >= len(tiny):
        kept[len(tiny) - 1] = _gray(last)
    return np.stack(tiny), kept


def _gray(frame: av.VideoFrame) -> np.ndarray:
    return frame.reformat(format="gray").to_ndarray()


THREADED_PIXELS = 1920 * 1080         # frames this big repay a decoder thread per core


def _threaded(stream):
    """Frame threads for a picture big enough to repay them: they cut a 1080p check's wall
    time by a fifth; a 720p one's by 8 % for 10 % more CPU, and on smaller ones they only
    add CPU, so below 1080p a check decodes on one thread."""
    ctx = stream.codec_context
    if (ctx.width or 0) * (ctx.height or 0) >= THREADED_PIXELS:
        stream.thread_type = "AUTO"
    return stream


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[
        :, :plane.width]


def frames_at(path: PathLike, indices: list[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Luma of the frames at `indices`, scaled to `size`, decoding no further than needed."""
    wanted, frames = set(indices), {}
    if not wanted:
        return frames
    scaler = VideoReformatter()
    with open_media(path, guess_rate=False) as container:
        stream = _threaded(video_stream(container))
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = scaler.reformat(frame, width=size[0], height=size[1],
                                                format="gray").to_ndarray()
            if index >= max(wanted):
                break
    return frames


def scale_luma(luma: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A luma plane scaled to `size` by the same swscale path `frames_at` takes from a
    decoded frame, so a kept frame compares exactly as one decoded again would."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(luma), format="gray")
    return frame.reformat(width=size[0], height=size[1], format="gray").to_ndarray()


def compare_frames(reference: dict[int, np.ndarray],
                   candidate: dict[int, np.ndarray]) -> dict[int, tuple[float, float]]:
    """(luma SSIM, fine detail as a share of the reference's) per frame both sides have; a
    frame one side lacks scores (0, 0). The detail ratio is what a picture scaled down and
    up again has lost."""
    return {i: (_ssim(reference[i], candidate[i]), _detail_ratio(reference[i], candidate[i]))
            if i in reference else (0.0, 0.0) for i in candidate}


def _detail_ratio(reference: np.ndarray, candidate: np.ndarray) -> float:
    base = _energy(reference)
    return _energy(candidate) / base if base > 1e-6 else 1.0


def _energy(a: np.ndarray) -> float:
    """Mean squared Laplacian: the fine detail a picture scaled down and up again lacks. The
    Laplacian is exact in int16 (|4·255| + 4·255 fits); its squares are summed by a float32
    dot product (BLAS), a relative error near 1e-5 on a ratio judged against 0.5."""
    a = a.astype(np.int16)
    lap = (4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
           ).astype(np.float32).ravel()
    return float(np.dot(lap, lap)) / max(1, lap.size)


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean luma SSIM over 8x8 windows on a 4-pixel grid, as FFmpeg's `ssim` filter takes
    it: the windows' sums come from 4x4 block sums, exact in integers, so a full-resolution
    frame costs a few milliseconds."""
    height, width = (min(x.shape[0], y.shape[0]) // 4) * 4, (min(x.shape[1], y.shape[1]) // 4) * 4
    if height < 8 or width < 8:
        return 1.0 if np.array_equal(x, y) else 0.0
    # Every product fits uint16 (255² < 2¹⁶) and every block sum uint32 (16 · 255²): the same
    # integers as wider types. A block sum is four strided additions each way: elementwise
    # work, several times faster than a reduction over a 4-long axis.
    a, b = x[:height, :width].astype(np.uint16), y[:height, :width].astype(np.uint16)
    blocks = np.stack([_block_sums(m) for m in (a, b, a * a, b * b, a * b)])
    windows = blocks[:, 1:, 1:] + blocks[:, :-1, 1:] + blocks[:, 1:, :-1] + blocks[:, :-1, :-1]
    mx, my, xx, yy, xy = windows.astype(np.float64) / 64
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    ssim = ((2 * mx * my + _SSIM_C1) * (2 * cov + _SSIM_C2)
            / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2)))
    return float(ssim.mean())


def _block_sums(m: np.ndarray) -> np.ndarray:
    """Sums over the 4x4 blocks of `m`, in uint32."""
    m = m.astype(np.uint32)
    columns = m[:, 0::4] + m[:, 1::4] + m[:, 2::4] + m[:, 3::4]
    return columns[0::4] + columns[1::4] + columns[2::4] + columns[3::4]


# --- audio content --------------------------------------------------------------------------

AUDIO_RATE = 16_000
AUDIO_WINDOW_S = 0.1
AUDIO_BANDS = 24


def audio_bands(paths: list[PathLike]) -> np.ndarray:
    """The audio of `paths` played in order, as energy in AUDIO_BANDS frequency bands per
    AUDIO_WINDOW_S window: shape (windows, bands). Silence, another track or a shifted one
    differ from the source window by window; an honest AAC encode does not."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
    chunks = []
    for path in paths:
        with open_media(path, guess_rate=False) as container:
            if not container.streams.audio:
                raise MediaError(f"{path} has no audio", reason="no_audio_stream")
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.float64) / 32768 if chunks else np.zeros(0)
    size = int(AUDIO_RATE * AUDIO_WINDOW_S)
    windows = len(samples) // size
    if windows == 0:
        return np.zeros((0, AUDIO_BANDS))
    frames = samples[:windows * size].reshape(windows, size) * np.hanning(size)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    edges = np.unique(np.geomspace(2, power.shape[1], AUDIO_BANDS + 1).astype(int))
    return np.stack([power[:, a:b].sum(axis=1) for a, b in zip(edges, edges[1:])], axis=1)
